#!/usr/bin/env bash
# The offline demo: a local Hub (`grok1 serve`) holds a generated small Grok-1 as
# xai-org/grok-1; `grok1 pipeline` downloads it once, converts it (hf-bf16) and re-quantizes it
# (int8, int4), verifies each against the original, and uploads each back to the local Hub.
set -euo pipefail
out=${1:-demo-out}
rm -rf "$out" && mkdir -p "$out"
grok1 make-tiny "$out/hub/xai-org/grok-1" --preset small --seed 0 --quiet
grok1 serve "$out/hub" --port 0 > "$out/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null' EXIT
for _ in $(seq 100); do grep -q "http://" "$out/serve.log" && break; sleep 0.1; done
HF_ENDPOINT=$(grep -o "http://[^ ]*" "$out/serve.log")
export HF_ENDPOINT HF_HUB_DISABLE_XET=1 HF_HUB_DISABLE_TELEMETRY=1 HF_HOME="$out/hf-home"
echo "local Hub at $HF_ENDPOINT serving $out/hub"
grok1 inspect "$out/hub/xai-org/grok-1" | tail -n 2
echo
echo "=== grok1 pipeline --to hf-bf16 --names sglang (bf16 with SGLang's names: it serves) ==="
grok1 pipeline --to hf-bf16 --names sglang --work-dir "$out/work" --upload "demo/grok-1-{to}" \
  --quiet
echo
echo "=== grok1 pipeline --to int8,int4 (the same work folder: no second download) ==="
grok1 pipeline --to int8,int4 --work-dir "$out/work" --upload "demo/grok-1-{to}" --quiet
echo
echo "published to the local Hub:"
for to in hf-bf16 int8 int4; do
  echo "  demo/grok-1-$to: $(ls "$out/hub/demo/grok-1-$to" | tr '\n' ' ')"
done
