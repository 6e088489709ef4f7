"""Helpers shared by the benchmark scripts: timed subprocesses with peak RSS, cached inputs."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

BIN = Path(sys.executable).parent
CACHE = Path(os.environ.get("GROK1_BENCH_DIR", Path(__file__).resolve().parent.parent
                            / ".bench-cache"))


def _tree_rss(root: int) -> int:
    """Summed RSS (bytes) of a process and all its descendants, from /proc."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            parents[int(entry.name)] = int(fields[1])
            rss[int(entry.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    return sum(rss.get(pid, 0) for pid in tree)


class Measured(NamedTuple):
    """One run: wall seconds, peak summed RSS (bytes) of its process tree, and the CPU seconds
    of that tree: user + system, and system alone (the kernel: reads, writes, page faults)."""

    seconds: float
    rss: int
    cpu: float
    sys: float


def run_measured(args: list[str], **kwargs) -> Measured:
    """Run a command; return its wall time, peak RSS and CPU time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(args, **kwargs)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss(proc.pid))
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark command failed: {' '.join(args)}")
    system = after.ru_stime - before.ru_stime
    return Measured(seconds, peak, after.ru_utime - before.ru_utime + system, system)


def median_of(runs: int, args: list[str], before_each: Callable[[], None] = lambda: None
              ) -> Measured:
    """The run with the median wall time of `runs` runs (`before_each` readies each); the
    command's own output is discarded."""
    measured = []
    for _ in range(runs):
        before_each()
        measured.append(run_measured(args, stdout=subprocess.DEVNULL))
    return sorted(measured)[len(measured) // 2]


def grok1(*args: str) -> list[str]:
    """The grok1 command line of this environment."""
    return [str(BIN / "grok1"), *args]


def checkpoint(preset: str, layers: int | None = None) -> Path:
    """A generated checkpoint, made once and kept in the cache folder."""
    name = f"{preset}-{layers}L" if layers else preset
    folder = CACHE / name
    if not (folder / "config.json").exists():
        args = ["make-tiny", str(folder), "--preset", preset, "--quiet", "--overwrite"]
        if layers:
            args += ["--layers", str(layers)]
        subprocess.run(grok1(*args), check=True)
    return folder


def du(folder: Path) -> int:
    """Bytes of all files under a folder."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
