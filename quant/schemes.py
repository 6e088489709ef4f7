"""An integer quantization scheme's parameters (bits, groups, symmetry, method), its code range
and the pack-quantized format it produces (hence its compressed-tensors config group). The
schemes users name are rows of `quant.registry.SCHEMES`."""

from __future__ import annotations

import dataclasses

from converter.errors import UsageError
from converter.formats import PackQuantized
from converter.formats.pack_quantized import codes_per_word

__all__ = ["ARITHMETICS", "GRIDS", "METHODS", "QuantScheme", "SchemeOptions"]

METHODS = ("rtn", "mse")
GRIDS = ("compressed-tensors", "release")
"""compressed-tensors' grid (scale max|w| / ((2^b - 1) / 2), codes from -2^(b-1)), or the
release's own symmetric grid (scale max|w| / (2^(b-1) - 1), codes in +-(2^(b-1) - 1), a zero
scale stored as 2^-126): re-quantizing the release's int8 to int8 on it keeps every Linear the
release scales per output channel exactly (the grids' error, measured: BENCHMARKS.md)."""
ARITHMETICS = ("f32", "bf16")
"""How `w / scale` is computed: in float32 (compressed-tensors' Triton kernel on a GPU), or
rounded to bf16 as every bf16 intermediate is in compressed-tensors' torch path (what
llm-compressor computes on a CPU, byte for byte; int8 loses a little precision there: quotients
above 64 are rounded to halves before they are rounded to a code)."""


@dataclasses.dataclass(frozen=True)
class QuantScheme:
    """bits, group size (None: one scale per output channel), symmetry and method.

    compressed-tensors' integer grid: codes in [-2^(b-1), 2^(b-1) - 1]; the scale is
    absmax / ((2^b - 1) / 2) when symmetric (int4: amax / 7.5), else (max - min) / (2^b - 1)
    with a zero point. Scales are stored in bf16.
    """

    bits: int
    group_size: int | None
    symmetric: bool = True
    method: str = "rtn"
    arithmetic: str = "f32"
    grid: str = "compressed-tensors"

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise UsageError(f"{self.bits}-bit is not supported; choose int8 or int4")
        if self.method not in METHODS:
            raise UsageError(f"unknown method {self.method!r}; known: {', '.join(METHODS)}")
        if self.grid not in GRIDS:
            raise UsageError(f"unknown grid {self.grid!r}; known: {', '.join(GRIDS)}")
        if self.grid == "release" and (not self.symmetric or self.arithmetic != "f32"):
            raise UsageError("--grid release is symmetric, in float32: it takes no "
                             "--asymmetric or --arithmetic bf16")
        if self.arithmetic not in ARITHMETICS:
            raise UsageError(f"unknown arithmetic {self.arithmetic!r}; known: "
                             f"{', '.join(ARITHMETICS)}")
        per_word = codes_per_word(self.bits)
        if self.group_size is not None and (self.group_size <= 0 or
                                            self.group_size % per_word):
            raise UsageError(f"--group-size {self.group_size} must be a positive multiple of "
                             f"{per_word} for {self.bits}-bit packing")

    @property
    def qmin(self) -> int:
        """Smallest code."""
        return -(1 << (self.bits - 1)) + (self.grid == "release")

    @property
    def qmax(self) -> int:
        """Largest code."""
        return (1 << (self.bits - 1)) - 1

    @property
    def divisor(self) -> float:
        """What the range (absmax when symmetric, max - min when not) is divided by."""
        if self.grid == "release":
            return float(self.qmax)
        levels = (1 << self.bits) - 1
        return levels / 2 if self.symmetric else float(levels)

    @property
    def zero_scale_bits(self) -> int:
        """The bf16 bits a scale that rounds to zero is stored as: compressed-tensors uses
        bf16's eps (2^-7), the release grid the smallest normal (2^-126)."""
        return 0x0080 if self.grid == "release" else 0x3C00

    @property
    def label(self) -> str:
        """e.g. int4-g128-sym-rtn."""
        group = f"g{self.group_size}" if self.group_size else "channel"
        arithmetic = "" if self.arithmetic == "f32" else f"-{self.arithmetic}"
        grid = "" if self.grid == "compressed-tensors" else f"-{self.grid}-grid"
        return (f"int{self.bits}-{group}-{'sym' if self.symmetric else 'asym'}-{self.method}"
                + arithmetic + grid)

    def linear_format(self) -> PackQuantized:
        """The pack-quantized layout of this scheme."""
        return PackQuantized(self.bits, self.group_size, self.symmetric)


@dataclasses.dataclass(frozen=True)
class SchemeOptions:
    """What a user chooses of an integer scheme (`grok1 quantize --group-size --asymmetric
    --method --arithmetic --grid`): a group size of None is the scheme's default."""

    group_size: int | None = None
    symmetric: bool = True
    method: str = "rtn"
    arithmetic: str = "f32"
    grid: str = "compressed-tensors"

    @property
    def chosen(self) -> bool:
        """Whether any option differs from the defaults (schemes with a fixed grid take none)."""
        return self != SchemeOptions()
