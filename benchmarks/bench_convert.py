"""Conversion throughput as a ratio to a plain copy of the same input, its CPU cost per GB,
and peak RSS.

    python -m benchmarks.bench_convert [--preset bench] [--depths 6 12] [--workers N] [--runs 3]
    python -m benchmarks.bench_convert --preset real --depths 1 --runs 1   # 8.1 GB, real dims

Throughput counts bytes read + bytes written per second. The baseline is `cp -r` of the same
input followed by `sync` (our writers fsync every file), measured in the same run. Each figure
is the run with the median wall time of `--runs`; CPU seconds are user + system time of the
command's whole process tree, per GB of input read (wall-time ratios move with the disk and
the page cache, CPU seconds much less).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from benchmarks.common import checkpoint, du, grok1, median_of, run_measured
from converter.model import GROK1
from converter.model.config import Grok1Config

CASES = [
    ("xai -> hf bf16", "xai", ["--to", "hf", "--dtype", "bf16"]),
    ("xai -> hf f32", "xai", ["--to", "hf", "--dtype", "f32"]),
    ("xai -> hf int8", "xai", ["--to", "hf", "--dtype", "int8"]),
    ("hf int8 -> xai", "int8", ["--to", "xai"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="bench")
    parser.add_argument("--depths", type=int, nargs="+", default=[6, 12])
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scratch", type=Path, default=None)
    args = parser.parse_args()
    workers = ["--workers", str(args.workers)] if args.workers else []
    print("| preset | layers | case | input GB | output GB | seconds | GB/s (r+w) | cp GB/s "
          "(r+w) | ratio to cp | CPU s | of which sys | CPU s per GB in | cp CPU s per GB | "
          "peak RSS MB | largest tensor MB |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
          "---: | ---: | ---: |")
    for depth in args.depths:
        config = Grok1Config.preset(args.preset, layers=depth)
        largest = max(s.payload_bytes for s in GROK1.build_spec(config))
        source = checkpoint(args.preset, depth)
        with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
            tmp = Path(tmp)
            copy = tmp / "copy"
            cp = median_of(args.runs, ["sh", "-c", f"cp -r '{source}' '{copy}' && sync"],
                           lambda copy=copy: shutil.rmtree(copy, ignore_errors=True))
            cp_rate = 2 * du(source) / cp.seconds
            cp_cpu = cp.cpu / (du(source) / 1e9)
            shutil.rmtree(copy)
            sources = {"xai": source}
            for name, kind, extra in CASES:
                if kind == "int8" and "int8" not in sources:
                    sources["int8"] = tmp / "int8-src"
                    run_measured(grok1("convert", str(source), str(sources["int8"]), "--to",
                                       "hf", "--dtype", "int8", "--quiet", *workers))
                src = sources[kind]
                dst = tmp / "out"
                run = median_of(args.runs, grok1("convert", str(src), str(dst), "--quiet",
                                                 *extra, *workers),
                                lambda dst=dst: shutil.rmtree(dst, ignore_errors=True))
                read, written = du(src), du(dst)
                rate = (read + written) / run.seconds
                print(f"| {args.preset} | {depth} | {name} | {read / 1e9:.2f} | "
                      f"{written / 1e9:.2f} | {run.seconds:.1f} | {rate / 1e9:.2f} | "
                      f"{cp_rate / 1e9:.2f} | {rate / cp_rate:.2f} | {run.cpu:.1f} | "
                      f"{run.sys:.1f} | {run.cpu / (read / 1e9):.2f} | {cp_cpu:.2f} | "
                      f"{run.rss / 1e6:.0f} | {largest / 1e6:.0f} |", flush=True)
                shutil.rmtree(dst)


if __name__ == "__main__":
    main()
