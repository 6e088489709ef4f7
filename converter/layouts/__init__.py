"""Readers and writers over a stream of canonically named tensors, one module per layout.

Every reader exposes `config`, `specs` (the canonical parameter tree in file order) and
`read(spec)`, which returns a float32 numpy array or an object with `.dequantize()` giving the
canonical float32 matrix `[..., in, out]`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from converter.config import Grok1Config
from converter.spec import TensorSpec

__all__ = ["CheckpointReader", "open_checkpoint"]


class CheckpointReader(Protocol):
    """What every layout's reader offers."""

    layout: str
    config: Grok1Config
    specs: list[TensorSpec]

    def read(self, spec: TensorSpec) -> Any: ...


def open_checkpoint(path: Path) -> CheckpointReader:
    """Open a checkpoint in whichever layout `path` holds."""
    from converter.layouts.xai import XaiCheckpoint

    return XaiCheckpoint.open(Path(path))
