"""What every Linear storage format declares: its stored parts (names, dtypes, shapes), how it
reads a Linear's value back from them, and its config.json `quantization_config` group.

A format is one frozen dataclass (hashable: equal formats share one config group) that the
writers, the readers, the serving table and `quantization_config` ask instead of branching on
which format it is. Formats that quantize are registered in `converter.formats.FORMATS` under
their compressed-tensors format name.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import numpy as np

from converter.errors import MalformedFileError
from converter.model.spec import TensorSpec
from converter.tensors import dense

__all__ = ["LinearFormat", "Part", "StackedExperts", "StoredParts", "linear_shape",
           "lossless_group_size"]


@dataclasses.dataclass(frozen=True)
class Part:
    """One stored tensor of a Linear: its dtype, the dtypes a reader accepts, and its shape
    from the Linear's [out, in]."""

    dtype: str
    accepted: tuple[str, ...]
    shape: Callable[[int, int], tuple[int, ...]]


class StoredParts(Protocol):
    """The stored parts of one (expert's) Linear, as a reader hands them to its format."""

    def tensor(self, part: str) -> np.ndarray:
        """The part as stored (bf16 as uint16 bits, fp8 as uint8 bits)."""
        ...

    def floats(self, part: str) -> np.ndarray:
        """A floating part as float32."""
        ...

    def check_recorded_shape(self, part: str, shape: tuple[int, int]) -> None:
        """Refuse the checkpoint when the shape recorded in `part` is not `shape`."""
        ...

    def fused_floats(self, part: str) -> dict[str, np.ndarray]:
        """`part` (as float32) of every Linear engines fuse with this one, itself included
        (same layer and expert), by tensor name."""
        ...


class LinearFormat:
    """How one Linear is stored. Subclasses are frozen dataclasses."""

    name: ClassVar[str]              # compressed-tensors format name ("dense" for plain weights)
    quantized: ClassVar[bool] = True

    def part_table(self) -> dict[str, Part]:
        """Every stored part, in write order."""
        raise NotImplementedError

    def parts(self) -> tuple[str, ...]:
        """Tensor name suffixes of one Linear in this format."""
        return tuple(self.part_table())

    def part(self, name: str, spec: TensorSpec) -> tuple[str, tuple[int, ...]]:
        """(safetensors dtype, shape) of one part of one (expert's) Linear of `spec`."""
        table = self.part_table()
        if name not in table:
            raise MalformedFileError(f"unknown {self.name} Linear part {name!r}")
        return table[name].dtype, table[name].shape(*linear_shape(spec))

    def accepted(self, name: str) -> tuple[str, ...]:
        """The stored dtypes a reader takes for part `name`."""
        return self.part_table()[name].accepted

    def check(self, spec: TensorSpec, source: str) -> None:
        """Refuse a format that cannot hold `spec` before anything is allocated for it."""

    def read(self, stored: StoredParts, spec: TensorSpec) -> Any:
        """The canonical value of one (expert's) Linear from its stored parts."""
        raise NotImplementedError

    def card(self) -> tuple[str, list[str]]:
        """What a model card says of these weights, and its tags (besides grok-1)."""
        raise NotImplementedError

    def label(self) -> str:
        """Short name of the weights ("bf16", "int4", "fp8-block"), as the serving table says."""
        raise NotImplementedError

    @property
    def compute_dtype(self) -> str:
        """The safetensors dtype engines compute in beside these weights (config.json's
        `torch_dtype`): bf16 beside quantized weights, whatever their scales' dtype."""
        return "BF16"

    def group(self) -> dict[str, Any]:
        """This format's compressed-tensors config group (without `targets`)."""
        raise NotImplementedError(f"{self.name} weights have no quantization_config group")

    def model_config(self) -> dict[str, Any]:
        """config.json's whole `quantization_config` (formats of `METHODS` only)."""
        raise NotImplementedError(f"{self.name} weights are described by config groups")

    @classmethod
    def recognises(cls, group: dict[str, Any]) -> bool:
        """Whether a compressed-tensors config group is stored in this format."""
        return group.get("format") == cls.name

    @classmethod
    def from_group(cls, name: str, weights: dict[str, Any], source: str) -> LinearFormat:
        """The format a recognised group's `weights` describe, checked."""
        raise NotImplementedError

    @classmethod
    def from_config_group(cls, name: str, group: dict[str, Any], source: str) -> LinearFormat:
        """The format a recognised config group describes (by its `weights`, unless the
        format also stores something of the activations)."""
        return cls.from_group(name, group["weights"], source)


def linear_shape(spec: TensorSpec) -> tuple[int, int]:
    """[out, in] of one (expert's) matrix of a canonical [.., in, out] spec."""
    return spec.shape[-1], spec.shape[-2]


def lossless_group_size(spec: TensorSpec) -> int:
    """Group size that holds the release's scales exactly: gcd(128, rows per scale block)."""
    return math.gcd(128, spec.rows_per_scale_group)


@dataclasses.dataclass(frozen=True, eq=False)
class StackedExperts:
    """Per-expert values of one stacked canonical tensor, read one expert at a time."""

    experts: list[Any]

    def __getitem__(self, index: int) -> Any:
        return self.experts[index]

    def __len__(self) -> int:
        return len(self.experts)

    def dequantize(self) -> np.ndarray:
        """float32 [E, in, out]."""
        return np.stack([dense(e) for e in self.experts])
