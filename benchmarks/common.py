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


def run_measured(args: list[str], **kwargs) -> tuple[float, int]:
    """Run a command; return (wall seconds, peak RSS in bytes of that process tree's largest)."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, **kwargs)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"benchmark command failed: {' '.join(args)}")
    return seconds, usage.ru_maxrss * 1024


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
