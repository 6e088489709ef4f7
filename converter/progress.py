"""tqdm progress bars that stay silent when stderr is not a terminal or with --quiet."""

from __future__ import annotations

import sys

from tqdm import tqdm

__all__ = ["byte_bar"]


def byte_bar(total: int, desc: str, *, quiet: bool = False) -> tqdm:
    """A progress bar counting bytes."""
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True, leave=False)
