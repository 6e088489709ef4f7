"""Re-quantization on the CPU: wall time as a ratio to `convert --to hf --dtype bf16` of the
same input in the same run, CPU seconds per GB, and --method mse against rtn, on `bench`.

    python -m benchmarks.bench_quant [--layers 6] [--mse-layers 2] [--runs 3]
    python -m benchmarks.bench_quant --preset real --layers 1 --mse-layers 0 --runs 1
    python -m benchmarks.bench_quant --schemes nvfp4-a16,nvfp4,mxfp4 --mse-layers 0
    python -m benchmarks.bench_quant --device cuda      # the GPU rows, on a machine with one

nvfp4 (W4A4) includes its calibration: the default tokens (16 sequences of 512) through every
layer of the streamed forward before the first Linear is made.

Each figure is the run with the median wall time of `--runs`. The ratio is convert's seconds
over quantize's (1.0: as fast as a conversion; the speed issue asks for 0.8). CPU seconds are
user + system time of the whole process tree, per GB of the input checkpoint. Throughput counts
GB of source Linear weights (the release's int8 bytes) per second of wall time for the whole
run (reading, quantizing, packing, hashing, writing).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from benchmarks.common import checkpoint, du, grok1, median_of
from converter.model import GROK1
from converter.model.config import Grok1Config
from quant.registry import SCHEMES as QUANT_SCHEMES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="bench")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--mse-layers", type=int, default=2, help="0: no mse rows")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--schemes", default=None,
                        help="only these schemes (comma-separated; the bf16 baseline always runs)")
    args = parser.parse_args()
    print("| layers | command | device | input GB | Linear weights GB | seconds | GB/s | "
          "ratio to convert bf16 | CPU s | of which sys | CPU s per GB in | mean rel RMS | "
          "peak RSS MB |")
    print("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
          "---: |")
    runs = [(args.layers, "int8", "rtn", ()), (args.layers, "int4", "rtn", ()),
            (args.layers, "int8", "rtn", ("--grid", "release")),
            (args.layers, "int4", "rtn", ("--grid", "release")),
            (args.layers, "int8", "rtn", ("--arithmetic", "bf16")),
            (args.layers, "fp8", "rtn", ()), (args.layers, "fp8-block", "rtn", ()),
            (args.layers, "w8a8-int8", "rtn", ()), (args.layers, "nvfp4-a16", "rtn", ()),
            (args.layers, "nvfp4", "rtn", ()), (args.layers, "mxfp4", "rtn", ())]
    if args.mse_layers:
        runs += [(args.mse_layers, "int4", "rtn", ()), (args.mse_layers, "int4", "mse", ())]
    if args.schemes:
        runs = [r for r in runs if r[1] in args.schemes.split(",")]
    baseline: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"

        def fresh() -> None:
            shutil.rmtree(out, ignore_errors=True)

        for layers, scheme, method, options in runs:
            source = checkpoint(args.preset, layers)
            read = du(source)
            config = Grok1Config.preset(args.preset, layers=layers)
            weights = sum(s.numel for s in GROK1.build_spec(config) if s.quantized)
            if layers not in baseline:
                run = median_of(args.runs, grok1("convert", str(source), str(out), "--to", "hf",
                                                 "--dtype", "bf16", "--quiet"), fresh)
                baseline[layers] = run.seconds
                print(f"| {layers} | convert --dtype bf16 | cpu | {read / 1e9:.2f} | "
                      f"{weights / 1e9:.2f} | {run.seconds:.1f} | "
                      f"{weights / run.seconds / 1e9:.3f} | 1.00 | {run.cpu:.1f} | {run.sys:.1f} | "
                      f"{run.cpu / (read / 1e9):.2f} | | {run.rss / 1e6:.0f} |", flush=True)
            entry = QUANT_SCHEMES[scheme]
            if not (entry.integer or entry.fp8) and args.device != "cpu":
                continue  # no GPU kernel: CPU only
            method_args = ("--method", method) if entry.integer else ()
            run = median_of(args.runs, grok1("quantize", str(source), str(out), "--scheme",
                                             scheme, *method_args, *options, "--device",
                                             args.device, "--quiet"), fresh)
            report = json.loads((out / "quantization_report.json").read_text())["summary"]
            label = " ".join((scheme, *method_args[1:], *options))
            print(f"| {layers} | quantize {label} | {args.device} | "
                  f"{read / 1e9:.2f} | {weights / 1e9:.2f} | {run.seconds:.1f} | "
                  f"{weights / run.seconds / 1e9:.3f} | {baseline[layers] / run.seconds:.2f} | "
                  f"{run.cpu:.1f} | {run.sys:.1f} | {run.cpu / (read / 1e9):.2f} | "
                  f"{report['mean_rel_rms']:.5f} | {run.rss / 1e6:.0f} |", flush=True)


if __name__ == "__main__":
    main()
