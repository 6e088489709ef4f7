"""How an output's Linears are made: a `Linears` is composed into a writer, never subclassed.

A `Linears` gives each Linear role's stored format and makes all the parts of one (expert's)
Linear from its canonical value at once. The core has two: dense f32/bf16 (dequantized exactly,
transposed to [out, in]; bf16 rounds once, to nearest even, as the release's bf16 run did) and
the release's own int8 (its codes re-packed and each scale repeated over the groups it covers:
lossless). `quant/` adds re-quantized ones. A `Linears` may also report statistics per Linear and
write report files beside the output.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from converter.dtypes import DTYPES
from converter.errors import UsageError
from converter.formats import (
    Dense,
    LinearFormat,
    PackedLinear,
    PackQuantized,
    lossless_group_size,
    pack_codes,
)
from converter.model.spec import TensorSpec, linear_roles
from converter.tensors import (
    QuantizedWeight8bit,
    bf16_bits_to_f32,
    dense,
    f32_to_bf16_bits,
    transposed,
    transposed_bands,
)

__all__ = ["CONVERT_DTYPES", "CanonicalRows", "DenseLinears", "Linears", "ReleaseInt8Linears",
           "bf16_transposed", "convert_linears", "dense_transposed"]

Parts = dict[str, np.ndarray]


class Linears(Protocol):
    """Makes the stored parts of Linears."""

    label: str
    formats: dict[str, LinearFormat]

    def settings(self) -> dict[str, Any]: ...

    def make(self, spec: TensorSpec, expert: int | None, value: Any
             ) -> tuple[Parts, dict[str, Any] | None]: ...

    def check_kept(self, spec: TensorSpec, array: np.ndarray) -> None: ...

    def report_files(self) -> list[str]: ...

    def reports(self, records: dict[str, Any]) -> dict[str, str | bytes]: ...

    def prepare_run(self, reader: Any, folder: Path, quiet: bool = True) -> Linears: ...


class CanonicalRows:
    """A canonical [in, out] matrix read as float32 a band of rows at a time: the release's
    int8 dequantized band by band (exactly: every code times scale fits float32), anything else
    dequantized once. `codes`, `scales` (float32 [G, out]) and `block` (rows per scale) are the
    release's; for other values `codes` is None and `full` holds the float32 matrix."""

    def __init__(self, value: Any) -> None:
        if isinstance(value, QuantizedWeight8bit):
            self.codes: np.ndarray | None = np.asarray(value.weight)
            self.scales = bf16_bits_to_f32(value.scales)
            self.shape: tuple[int, int] = self.codes.shape
            self.block = self.shape[0] // value.scale_groups
        else:
            self.codes = None
            self.full = np.ascontiguousarray(dense(value), np.float32)
            self.shape = self.full.shape
            self.block = self.shape[0]

    def fill(self, r0: int, r1: int, c0: int = 0, c1: int | None = None,
             out: np.ndarray | None = None) -> np.ndarray:
        """Rows [r0, r1), columns [c0, c1) as float32, into `out` if given (else a new array,
        or a view of `full`)."""
        c1 = self.shape[1] if c1 is None else c1
        if self.codes is None:
            if out is None:
                return self.full[r0:r1, c0:c1]
            out[:] = self.full[r0:r1, c0:c1]
            return out
        if out is None:
            out = np.empty((r1 - r0, c1 - c0), np.float32)
        cuts = [r0, *range((r0 // self.block + 1) * self.block, r1, self.block), r1]
        for a, b in itertools.pairwise(cuts):
            np.multiply(self.codes[a:b, c0:c1], self.scales[a // self.block, c0:c1],
                        out=out[a - r0:b - r0], dtype=np.float32)
        return out


def dense_transposed(value: Any) -> np.ndarray:
    """float32 [out, in] of a canonical [in, out] matrix."""
    rows = CanonicalRows(value)
    return transposed_bands(rows.shape, np.float32, rows.fill)


def bf16_transposed(value: Any) -> np.ndarray:
    """bf16 bits [out, in] of a canonical [in, out] matrix, each weight rounded once (to
    nearest even), band by band in the source's orientation."""
    rows = CanonicalRows(value)
    return transposed_bands(rows.shape, np.uint16,
                            lambda r0, r1: f32_to_bf16_bits(rows.fill(r0, r1)))


class _NoReports:
    """Linears that write no report files and take the other tensors as they are."""

    def check_kept(self, spec: TensorSpec, array: np.ndarray) -> None:
        """Nothing to check: a layout change keeps every value, NaN included."""

    def report_files(self) -> list[str]:
        """None."""
        return []

    def reports(self, records: dict[str, Any]) -> dict[str, str | bytes]:
        """None."""
        return {}

    def prepare_run(self, reader: Any, folder: Path, quiet: bool = True) -> Any:
        """Nothing to prepare: these Linears as they are."""
        return self


@dataclasses.dataclass(frozen=True)
class DenseLinears(_NoReports):
    """Dense Linears in f32 (exact) or bf16 (rounded once), for the Linear `roles`."""

    label: str
    roles: tuple[str, ...]

    @property
    def formats(self) -> dict[str, LinearFormat]:
        """The same dense format for every role."""
        return dict.fromkeys(self.roles, Dense(DTYPES[self.label].safetensors))

    def settings(self) -> dict[str, Any]:
        """What identifies this output for --resume."""
        return {"dtype": self.label}

    def make(self, spec: TensorSpec, expert: int | None, value: Any
             ) -> tuple[Parts, dict[str, Any] | None]:
        """`weight` [out, in]."""
        matrix = bf16_transposed(value) if self.label == "bf16" else dense_transposed(value)
        return {"weight": matrix}, None


@dataclasses.dataclass(frozen=True)
class ReleaseInt8Linears(_NoReports):
    """The release's int8 codes and scales as compressed-tensors 8-bit groups: lossless."""

    formats: dict[str, PackQuantized]
    label: str = "int8"

    @classmethod
    def for_specs(cls, specs: list[TensorSpec]) -> ReleaseInt8Linears:
        """Per role, the group size gcd(128, rows per scale block) that holds every scale."""
        sizes: dict[str, set[int]] = {}
        for spec in specs:
            if spec.param.linear:
                sizes.setdefault(spec.role, set()).add(lossless_group_size(spec))
        return cls({role: PackQuantized(8, min(found))
                    for role, found in sizes.items()})

    def settings(self) -> dict[str, Any]:
        """What identifies this output for --resume."""
        return {"dtype": self.label}

    def make(self, spec: TensorSpec, expert: int | None, value: Any
             ) -> tuple[Parts, dict[str, Any] | None]:
        """weight_packed, weight_scale, weight_shape, from the release's codes and scales (or
        from an identical packing already in the source)."""
        fmt = self.formats[spec.role]
        if isinstance(value, PackedLinear) and (value.bits, value.group_size) == (
                fmt.bits, fmt.group_size or value.shape[1]) and value.zero_point is None:
            return {"weight_packed": value.packed, "weight_scale": value.scale,
                    "weight_shape": np.array(value.shape, np.int64)}, None
        if not isinstance(value, QuantizedWeight8bit):
            raise UsageError(f"{spec.name}: int8 output keeps the release's codes and scales, "
                             f"but the source holds {type(value).__name__} weights; use "
                             "`grok1 quantize` to re-quantize")
        k, n = value.weight.shape
        per_block = (k // value.scale_groups) // (fmt.group_size or k)
        return {"weight_packed": pack_codes(transposed(value.weight), 8),
                "weight_scale": np.ascontiguousarray(np.repeat(value.scales.T, per_block,
                                                               axis=1)),
                "weight_shape": np.array([n, k], np.int64)}, None


CONVERT_DTYPES = {
    "bf16": "rounded once, as the release's bf16 run did",
    "f32": "exact",
    "int8": "the release's codes and scales as compressed-tensors, lossless",
}
"""What `--dtype` the hf and torch layouts take, the default first."""


def convert_linears(dtype: str | None, specs: list[TensorSpec]) -> Linears:
    """The Linears of `grok1 convert --dtype`: dense bf16 / f32, or the release's int8."""
    dtype = dtype or next(iter(CONVERT_DTYPES))
    if dtype == "int8":
        return ReleaseInt8Linears.for_specs(specs)
    if dtype not in CONVERT_DTYPES:
        raise UsageError(f"--to hf and --to torch take --dtype {', '.join(CONVERT_DTYPES)}, "
                         f"not {dtype} (q8_0, f16 and q4_0 are for --to gguf)")
    return DenseLinears(dtype, linear_roles(specs))
