"""Output that appears atomically or not at all, and a free-disk preflight."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from converter.errors import DiskSpaceError

__all__ = ["INCOMPLETE_SUFFIX", "atomic_open", "check_free_space", "free_bytes"]

INCOMPLETE_SUFFIX = ".incomplete"


@contextlib.contextmanager
def atomic_open(path: Path) -> Iterator[BinaryIO]:
    """Open `<path>.<random>.incomplete` for writing; fsync and rename onto `path` on success.

    On any error the temporary file is removed and `path` is untouched. ENOSPC becomes a
    `DiskSpaceError` naming the file.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}{INCOMPLETE_SUFFIX}")
    try:
        with open(tmp, "w+b") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskSpaceError(f"{path}: disk full while writing (no space left on device)"
                                 ) from None
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def free_bytes(folder: Path) -> int:
    """Free bytes on the disk that holds (or will hold) `folder`."""
    probe = Path(folder)
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


def check_free_space(folder: Path, needed: int) -> None:
    """Raise `DiskSpaceError` when `folder`'s disk has less than `needed` bytes free."""
    free = free_bytes(folder)
    if free < needed:
        raise DiskSpaceError(
            f"{folder}: needs {needed / 1e9:.2f} GB, only {free / 1e9:.2f} GB free on its disk")
