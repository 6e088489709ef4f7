"""The floor under a conversion's system time: CPU seconds to write N GB from Python in 14 MB
pieces and fsync it (what our writers do with every tensor), against `cp` of the same file.

    python -m benchmarks.bench_write [--gb 2.2] [--scratch DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from benchmarks.common import run_measured

PIECE = 14 << 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gb", type=float, default=2.2)
    parser.add_argument("--scratch", type=Path, default=None)
    args = parser.parse_args()
    piece = os.urandom(PIECE)
    pieces = max(1, round(args.gb * 1e9 / PIECE))
    size = pieces * PIECE / 1e9
    print("| what | GB | seconds | CPU s | of which sys | CPU s per GB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        path = Path(tmp) / "written"
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        with open(path, "wb") as f:
            for _ in range(pieces):
                f.write(piece)
            f.flush()
            os.fsync(f.fileno())
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
        system = after.ru_stime - before.ru_stime
        cpu = after.ru_utime - before.ru_utime + system
        print(f"| Python write + fsync | {size:.2f} | {seconds:.1f} | {cpu:.1f} | {system:.1f} | "
              f"{cpu / size:.2f} |")
        cp = run_measured(["sh", "-c", f"cp '{path}' '{path}.copy' && sync"])
        print(f"| cp + sync of that file | {size:.2f} | {cp.seconds:.1f} | {cp.cpu:.1f} | "
              f"{cp.sys:.1f} | {cp.cpu / size:.2f} |")


if __name__ == "__main__":
    main()
