#!/usr/bin/env bash
# The offline demo: a local Hub (`grok1 serve`) holds a generated small Grok-1 as
# xai-org/grok-1; `grok1 pipeline` downloads it, converts (hf) or re-quantizes (int8, int4),
# verifies against the original, and uploads each result back to the local Hub.
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
for to in hf int8 int4; do
  echo
  echo "=== grok1 pipeline --to $to ==="
  names=$([ "$to" = hf ] && echo sglang || echo hpcai)  # bf16 with SGLang's names: it serves
  grok1 pipeline --to "$to" --names "$names" --work-dir "$out/work-$to" \
    --upload "demo/grok-1-$to" --quiet
done
echo
echo "published to the local Hub:"
for to in hf int8 int4; do
  echo "  demo/grok-1-$to: $(ls "$out/hub/demo/grok-1-$to" | tr '\n' ' ')"
done
