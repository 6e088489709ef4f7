"""Helpers shared by the benchmark scripts: timed subprocesses with peak RSS, cached inputs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

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


def run_measured(args: list[str], **kwargs) -> tuple[float, int]:
    """Run a command; return (wall seconds, peak summed RSS in bytes of its process tree)."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, **kwargs)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss(proc.pid))
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"benchmark command failed: {' '.join(args)}")
    return seconds, peak


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
