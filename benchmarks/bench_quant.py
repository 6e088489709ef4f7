"""Re-quantization: CPU throughput as a ratio to `convert --to hf --dtype bf16` of the same
input in the same run, and --method mse error against RTN, on the `bench` preset.

    python -m benchmarks.bench_quant [--layers 6] [--mse-layers 2]

Throughput is GB of source weights (the release's int8 Linear bytes) per second of wall time
for the whole `grok1 quantize` run (reading, quantizing, packing, hashing, writing); the ratio
is convert's seconds over quantize's on the same input (1.0: as fast as a conversion). GPU rows
need a CUDA device (`--device cuda`); none was available where these figures were measured.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.common import checkpoint, grok1, run_measured
from converter.config import Grok1Config
from converter.spec import build_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--mse-layers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print("| layers | scheme | method | device | linear weights GB | seconds | GB/s | "
          "ratio to convert bf16 | mean rel RMS | peak RSS MB |")
    print("| ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    runs = [(args.layers, "int8", "rtn"), (args.layers, "int4", "rtn"),
            (args.layers, "fp8", "rtn"), (args.layers, "fp8-block", "rtn"),
            (args.mse_layers, "int4", "rtn"), (args.mse_layers, "int4", "mse")]
    baseline: dict[int, float] = {}
    for layers, scheme, method in runs:
        source = checkpoint("bench", layers)
        if layers not in baseline:
            with tempfile.TemporaryDirectory() as tmp:
                baseline[layers], _ = run_measured(grok1(
                    "convert", str(source), str(Path(tmp) / "bf16"), "--to", "hf", "--dtype",
                    "bf16", "--quiet"))
        weights = sum(s.numel for s in build_spec(Grok1Config.preset("bench", layers=layers))
                      if s.quantized)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out"
            seconds, rss = run_measured(grok1("quantize", str(source), str(out), "--scheme",
                                              scheme, "--method", method, "--device",
                                              args.device, "--quiet"))
            report = json.loads((out / "quantization_report.json").read_text())["summary"]
        print(f"| {layers} | {scheme} | {method} | {args.device} | {weights / 1e9:.2f} | "
              f"{seconds:.1f} | {weights / seconds / 1e9:.3f} | "
              f"{baseline[layers] / seconds:.2f} | {report['mean_rel_rms']:.5f} | "
              f"{rss / 1e6:.0f} |", flush=True)


if __name__ == "__main__":
    main()
