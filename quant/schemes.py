"""The scheme registry: each quantization scheme `grok1 quantize --scheme` and `pipeline --to`
offer, with its parameters, the pack-quantized format it produces (hence its compressed-tensors
config group) and the verify profile its output is judged by. A new scheme is one row in
`SCHEMES`."""

from __future__ import annotations

import dataclasses
from typing import Any

from converter.compressed import LinearFormat
from converter.errors import UsageError

__all__ = ["METHODS", "SCHEMES", "QuantScheme", "SchemeEntry", "scheme_for"]

METHODS = ("rtn", "mse")


@dataclasses.dataclass(frozen=True)
class QuantScheme:
    """bits, group size (None: one scale per output channel), symmetry and method.

    Codes are signed: symmetric in [-(2^(b-1) - 1), 2^(b-1) - 1] with scale absmax / qmax;
    asymmetric in [-2^(b-1), 2^(b-1) - 1] with scale (max - min) / (2^b - 1) and a zero point,
    as compressed-tensors defines them. Scales are stored in bf16.
    """

    bits: int
    group_size: int | None
    symmetric: bool = True
    method: str = "rtn"

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise UsageError(f"{self.bits}-bit is not supported; choose int8 or int4")
        if self.method not in METHODS:
            raise UsageError(f"unknown method {self.method!r}; known: {', '.join(METHODS)}")
        per_word = 32 // self.bits
        if self.group_size is not None and (self.group_size <= 0 or
                                            self.group_size % per_word):
            raise UsageError(f"--group-size {self.group_size} must be a positive multiple of "
                             f"{per_word} for {self.bits}-bit packing")

    @property
    def qmin(self) -> int:
        """Smallest code."""
        return -(1 << (self.bits - 1)) + (1 if self.symmetric else 0)

    @property
    def qmax(self) -> int:
        """Largest code."""
        return (1 << (self.bits - 1)) - 1

    @property
    def label(self) -> str:
        """e.g. int4-g128-sym-rtn."""
        group = f"g{self.group_size}" if self.group_size else "channel"
        return f"int{self.bits}-{group}-{'sym' if self.symmetric else 'asym'}-{self.method}"

    def linear_format(self) -> LinearFormat:
        """The pack-quantized layout of this scheme."""
        return LinearFormat("packed", "BF16", self.bits, self.group_size, self.symmetric)


@dataclasses.dataclass(frozen=True)
class SchemeEntry:
    """One registered scheme: what it is, its defaults, how it makes Linears (its verify
    profile is `verify.profiles.SCHEME_PROFILES`)."""

    name: str
    summary: str
    bits: int = 8
    default_group_size: int | None = None
    fp8_block: tuple[int, int] | None = None
    fp8: bool = False

    def scheme(self, *, group_size: int | None, symmetric: bool, method: str) -> QuantScheme:
        """The integer scheme with the user's options over its defaults."""
        return QuantScheme(self.bits, group_size or self.default_group_size, symmetric, method)

    def linears(self, specs: list[Any], *, group_size: int | None = None,
                symmetric: bool = True, method: str = "rtn", device: str = "cpu") -> Any:
        """The Linears this scheme composes into the writer."""
        if self.fp8:
            from quant.fp8 import FP8Linears

            if group_size is not None or not symmetric or method != "rtn":
                raise UsageError(f"--scheme {self.name} takes no --group-size, --asymmetric "
                                 "or --method (its scales are fixed: max |w| / 448)")
            return FP8Linears(self.fp8_block, device)
        from quant.requantize import QuantizedLinears

        scheme = self.scheme(group_size=group_size, symmetric=symmetric, method=method)
        return QuantizedLinears.for_specs(scheme, specs, device)


SCHEMES: dict[str, SchemeEntry] = {entry.name: entry for entry in (
    SchemeEntry("int8", "8-bit weights, one scale per output channel (vLLM W8A16)"),
    SchemeEntry("int4", "4-bit weights, groups of 128 input columns (vLLM W4A16)",
                bits=4, default_group_size=128),
    SchemeEntry("fp8", "float8 e4m3 weights, one scale per output channel, dynamic per-token "
                "FP8 activations (W8A8-FP8; Hopper or newer)", fp8=True),
    SchemeEntry("fp8-block", "float8 e4m3 weights in 128x128 blocks, dynamic group-128 FP8 "
                "activations (DeepSeek-V3 style; Hopper or newer)", fp8=True,
                fp8_block=(128, 128)),
)}


def scheme_for(name: str, *, group_size: int | None, symmetric: bool, method: str) -> QuantScheme:
    """The integer scheme behind `--scheme NAME` with the user's options."""
    if name not in SCHEMES or SCHEMES[name].fp8:
        raise UsageError(f"unknown integer scheme {name!r}; known: "
                         f"{', '.join(n for n, e in SCHEMES.items() if not e.fp8)}")
    return SCHEMES[name].scheme(group_size=group_size, symmetric=symmetric, method=method)
