"""tqdm progress bars that stay silent when stderr is not a terminal or with --quiet."""

from __future__ import annotations

import contextlib
import glob
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from tqdm import tqdm

from converter.files.atomic import INCOMPLETE_SUFFIX

__all__ = ["byte_bar", "file_growth", "step_bar"]

POLL_SECONDS = 0.5


def _silent(quiet: bool) -> bool:
    return quiet or not sys.stderr.isatty()


def byte_bar(total: int, desc: str, *, quiet: bool = False) -> tqdm:
    """A progress bar counting bytes, in decimal units (GB, as the summaries and the Hub)."""
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1000,
                disable=_silent(quiet), dynamic_ncols=True, leave=False)


def step_bar(total: int, desc: str, unit: str, *, quiet: bool = False) -> tqdm:
    """A progress bar counting steps (layers, documents), with tqdm's time-left estimate."""
    return tqdm(total=total, desc=desc, unit=f" {unit}", disable=_silent(quiet),
                dynamic_ncols=True, leave=False)


@contextlib.contextmanager
def file_growth(bar: tqdm, folder: Path, planned: dict[str, int],
                already: int = 0) -> Iterator[Callable[[str], None]]:
    """Advance a byte bar as the files `planned` (name -> bytes) are written into `folder`:
    their temporary `*.incomplete` copies are measured twice a second, so threads, processes
    and Ray workers on this filesystem all show. Yields `finished(name)`, which counts a file
    whole."""
    finished: set[str] = set()
    stop, lock = threading.Event(), threading.Lock()

    def written(name: str) -> int:
        if name in finished:
            return planned[name]
        pattern = f"{glob.escape(str(Path(folder) / name))}.*{INCOMPLETE_SUFFIX}"
        size = 0
        for temporary in glob.glob(pattern):
            with contextlib.suppress(OSError):
                size = max(size, Path(temporary).stat().st_size)
        return min(size, planned[name])

    def show() -> None:
        with lock:
            now = already + sum(written(name) for name in planned)
            if now > bar.n:
                bar.update(now - bar.n)

    def poll() -> None:
        while not stop.wait(POLL_SECONDS):
            show()

    watcher = threading.Thread(target=poll, daemon=True)
    if not bar.disable:
        watcher.start()

    def finish(name: str) -> None:
        finished.add(name)
        show()

    try:
        yield finish
    finally:
        stop.set()
        if watcher.is_alive():
            watcher.join()
