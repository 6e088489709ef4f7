"""Conversion throughput as a ratio to a plain copy of the same input, and peak RSS.

    python benchmarks/bench_convert.py [--preset bench] [--depths 6 12] [--workers N]
    python benchmarks/bench_convert.py --preset real --depths 1      # 8.1 GB, real dimensions

Throughput counts bytes read + bytes written per second. The baseline is `cp -r` of the same
input followed by `sync` (our writers fsync every file), measured in the same run.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from benchmarks.common import checkpoint, du, grok1, run_measured
from converter.config import Grok1Config
from converter.spec import build_spec

CASES = [
    ("xai -> hf bf16", "xai", ["--to", "hf", "--dtype", "bf16"]),
    ("xai -> hf int8", "xai", ["--to", "hf", "--dtype", "int8"]),
    ("hf int8 -> xai", "int8", ["--to", "xai"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="bench")
    parser.add_argument("--depths", type=int, nargs="+", default=[6, 12])
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--scratch", type=Path, default=None)
    args = parser.parse_args()
    workers = ["--workers", str(args.workers)] if args.workers else []
    print("| preset | layers | case | input GB | output GB | seconds | GB/s (r+w) | cp GB/s "
          "(r+w) | ratio | peak RSS MB | largest tensor MB |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for depth in args.depths:
        config = Grok1Config.preset(args.preset, layers=depth)
        largest = max(s.payload_bytes for s in build_spec(config))
        source = checkpoint(args.preset, depth)
        with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
            tmp = Path(tmp)
            cp_seconds, _ = run_measured(["sh", "-c", f"cp -r '{source}' '{tmp}/copy' && sync"])
            cp_rate = 2 * du(source) / cp_seconds
            shutil.rmtree(tmp / "copy")
            sources = {"xai": source}
            for name, kind, extra in CASES:
                if kind == "int8" and "int8" not in sources:
                    sources["int8"] = tmp / "int8-src"
                    run_measured(grok1("convert", str(source), str(sources["int8"]), "--to",
                                       "hf", "--dtype", "int8", "--quiet", *workers))
                src = sources[kind]
                dst = tmp / "out"
                seconds, rss = run_measured(grok1("convert", str(src), str(dst), "--quiet",
                                                  *extra, *workers))
                read, written = du(src), du(dst)
                rate = (read + written) / seconds
                print(f"| {args.preset} | {depth} | {name} | {read / 1e9:.2f} | "
                      f"{written / 1e9:.2f} | {seconds:.1f} | {rate / 1e9:.2f} | "
                      f"{cp_rate / 1e9:.2f} | {rate / cp_rate:.2f} | {rss / 1e6:.0f} | "
                      f"{largest / 1e6:.0f} |", flush=True)
                shutil.rmtree(dst)


if __name__ == "__main__":
    main()
