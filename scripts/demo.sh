#!/usr/bin/env bash
# The offline demo: generate a checkpoint in the exact release layout, inspect it, read it back.
set -euo pipefail
out=${1:-demo-out}
rm -rf "$out" && mkdir -p "$out"
grok1 make-tiny "$out/grok-1" --preset small --seed 0
grok1 inspect "$out/grok-1" | tail -n 3
