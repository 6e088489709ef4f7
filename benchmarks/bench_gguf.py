"""GGUF conversion of the real dimensions (one layer): time and peak RSS, beside a plain copy.

    python -m benchmarks.bench_gguf [--preset real --layers 1] [--dtypes q8_0 bf16]

The issue this answers quotes llama.cpp's own converter on the same real-dimensions layer:
232 s and 23.1 GB at f16, out of memory (24 GB) at its q8_0 default.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from benchmarks.common import checkpoint, du, grok1, run_measured
from converter.model import GROK1
from converter.model.config import Grok1Config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="real")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--dtypes", nargs="+", default=["q8_0", "bf16"])
    parser.add_argument("--scratch", type=Path, default=None)
    args = parser.parse_args()
    config = Grok1Config.preset(args.preset, layers=args.layers)
    largest = max(s.payload_bytes for s in GROK1.build_spec(config))
    source = checkpoint(args.preset, args.layers)
    print("| preset | layers | dtype | input GB | output GB | seconds | cp seconds | "
          "peak RSS MB | largest tensor MB |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        tmp = Path(tmp)
        cp_seconds, *_ = run_measured(["sh", "-c", f"cp -r '{source}' '{tmp}/copy' && sync"])
        shutil.rmtree(tmp / "copy")
        for dtype in args.dtypes:
            dst = tmp / dtype
            seconds, rss, *_ = run_measured(grok1("convert", str(source), str(dst), "--to", "gguf",
                                              "--dtype", dtype, "--quiet"))
            print(f"| {args.preset} | {args.layers} | {dtype} | {du(source) / 1e9:.2f} | "
                  f"{du(dst) / 1e9:.2f} | {seconds:.1f} | {cp_seconds:.1f} | {rss / 1e6:.0f} | "
                  f"{largest / 1e6:.0f} |", flush=True)
            shutil.rmtree(dst)


if __name__ == "__main__":
    main()
