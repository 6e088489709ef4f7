"""`grok1 make-tiny`: seconds and peak RSS for the `bench` preset and the real dimensions.

    python benchmarks/bench_generate.py [--presets bench real:1]

The release layout is written in chunks, so memory stays at a chunk (a few hundred MB at most)
whatever the size of the checkpoint.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.common import du, grok1, run_measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--presets", nargs="+", default=["bench", "real:1"])
    args = parser.parse_args()
    print("| preset | layers | GB written | seconds | GB/s | peak RSS MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for item in args.presets:
        preset, _, layers = item.partition(":")
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "ckpt"
            extra = ["--layers", layers] if layers else []
            seconds, rss, *_ = run_measured(grok1("make-tiny", str(out), "--preset", preset,
                                              "--quiet", *extra))
            size = du(out)
        print(f"| {preset} | {layers or 'preset'} | {size / 1e9:.2f} | {seconds:.1f} | "
              f"{size / seconds / 1e9:.3f} | {rss / 1e6:.0f} |", flush=True)


if __name__ == "__main__":
    main()
