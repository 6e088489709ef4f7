#!/usr/bin/env bash
# Every benchmark, in the order BENCHMARKS.md reports them (about 50 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m benchmarks.bench_generate
python -m benchmarks.bench_forward
python -m benchmarks.bench_convert --preset bench --depths 6 12
python -m benchmarks.bench_write
python -m benchmarks.bench_quant
python -m benchmarks.bench_convert --preset real --depths 1 --runs 1
python -m benchmarks.bench_gguf
python -m benchmarks.compare_revisions fe404cd
python -m benchmarks.bench_verify
