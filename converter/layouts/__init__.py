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

__all__ = ["CheckpointReader", "detect_layout", "open_checkpoint", "require_folder"]


class CheckpointReader(Protocol):
    """What every layout's reader offers."""

    layout: str
    config: Grok1Config
    specs: list[TensorSpec]

    def read(self, spec: TensorSpec) -> Any: ...

    def read_expert(self, spec: TensorSpec, expert: int) -> Any: ...

    def source_files(self) -> list[Path]: ...


def require_folder(path: Path) -> Path:
    """`path` as a Path, if it is an existing folder; a one-line error otherwise."""
    from converter.errors import CheckpointNotFoundError, LayoutError

    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise LayoutError(f"{path}: not a checkpoint folder")
    return path


def detect_layout(path: Path) -> str:
    """`xai`, `hf` or `torch`: the layout of the checkpoint at `path`."""
    from converter.errors import LayoutError
    from converter.layouts.hf import CONTAINERS
    from converter.layouts.xai import find_tensor_dir

    path = require_folder(path)
    if find_tensor_dir(path) is not None:
        return "xai"
    for name, container in CONTAINERS.items():
        if (path / container.index_name).is_file() or (path / container.single_name).is_file():
            return name
    raise LayoutError(f"{path}: not a checkpoint: no ckpt-0/tensor*_000 files, no "
                      "model.safetensors(.index.json), no pytorch_model.bin(.index.json)")


def open_checkpoint(path: Path) -> CheckpointReader:
    """Open a checkpoint in whichever layout `path` holds."""
    from converter.layouts.hf import CONTAINERS, HfCheckpoint
    from converter.layouts.xai import XaiCheckpoint

    layout = detect_layout(path)
    if layout == "xai":
        return XaiCheckpoint.open(Path(path))
    return HfCheckpoint(Path(path), CONTAINERS[layout])
