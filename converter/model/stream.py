"""The stream every layout reads and writes: a reader's config and parameter tree, and the one
type of value it yields for a tensor.

A value is either a float32 numpy array in the canonical orientation (`[..., in, out]` for a
matrix) or a stored Linear: an object whose `dequantize()` gives that canonical float32 array
exactly (the release's `QuantizedWeight8bit`, a compressed-tensors Linear, a stack of
per-expert values). Code that has an exact fast path for one stored form (the release's int8
codes kept as Q8_0 or per-channel int8, a packed Linear multiplied band by band) checks for
that form and otherwise calls `dequantize()`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from converter.model.architecture import Architecture
from converter.model.config import Grok1Config
from converter.model.spec import TensorSpec

__all__ = ["CheckpointReader", "StoredLinear", "StreamValue"]


class StoredLinear(Protocol):
    """A weight kept in its stored form, made canonical float32 on demand."""

    def dequantize(self) -> np.ndarray: ...


StreamValue = np.ndarray | StoredLinear


class CheckpointReader(Protocol):
    """What every layout's reader offers: the architecture it holds, the config, the parameter
    tree in file order, and one tensor (or one expert of a stacked tensor) at a time."""

    layout: str
    architecture: Architecture
    config: Grok1Config
    specs: list[TensorSpec]

    def read(self, spec: TensorSpec) -> StreamValue: ...

    def read_expert(self, spec: TensorSpec, expert: int) -> StreamValue: ...

    def byte_ranges(self, spec: TensorSpec) -> list[tuple[Path, int, int]]: ...

    def source_files(self) -> list[Path]: ...
