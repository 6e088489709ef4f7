"""compressed-tensors `mxfp4-pack-quantized`: OCP MX FP4. e2m1 values two per byte
(`weight_packed` U8 [out, in / 2]) and one power-of-two scale per 32 inputs, stored as its
biased exponent (E8M0, `weight_scale` U8 [out, in / 32]: scale = 2^(e - 127)).

Checked against compressed-tensors 0.20.0 (`compressors/mxfp4/base.py`, `compressors/
mx_utils.py`). Its rounding of a group's scale differs from ggml's MXFP4 (the GGUF `--dtype
mxfp4`): compressed-tensors rounds the group maximum up to the next power of two when its
mantissa is 1.75 or more (`round_to_power_2`), ggml always takes the power below."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

from converter.errors import MalformedFileError
from converter.formats.base import LinearFormat, Part, StoredParts, linear_shape
from converter.formats.fp4 import (
    check_fp4_weights,
    e2m1_values,
    is_fp4_group,
    unpack_nibbles,
)
from converter.model.spec import TensorSpec

__all__ = ["MX_GROUP", "MXFP4Linear", "MXFP4PackQuantized", "e8m0_to_f32"]

MX_GROUP = 32
"""Inputs per power-of-two scale."""


def e8m0_to_f32(exponents: np.ndarray) -> np.ndarray:
    """float32 scales 2^(e - 127) of biased exponents (e = 0 is 2^-127, a float32 subnormal)."""
    return np.ldexp(np.float32(1), np.asarray(exponents, np.int32) - 127).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class MXFP4PackQuantized(LinearFormat):
    """MXFP4 weights, bf16 activations (compressed-tensors' MXFP4A16 preset)."""

    name: ClassVar[str] = "mxfp4-pack-quantized"

    def part_table(self) -> dict[str, Part]:
        """weight_packed, weight_scale (biased exponents)."""
        return {"weight_packed": Part("U8", ("U8",), lambda out, cols: (out, cols // 2)),
                "weight_scale": Part("U8", ("U8",), lambda out, cols: (out, cols // MX_GROUP))}

    def check(self, spec: TensorSpec, source: str) -> None:
        """An input width that whole groups of 32 cover."""
        cols = linear_shape(spec)[1]
        if cols % MX_GROUP:
            raise MalformedFileError(f"{source}: {spec.role} has {cols} inputs; MXFP4 needs a "
                                     f"multiple of {MX_GROUP}")

    def read(self, stored: StoredParts, spec: TensorSpec) -> Any:
        """An `MXFP4Linear` (an exponent of 255, E8M0's NaN, is refused)."""
        exponents = stored.tensor("weight_scale")
        if exponents.size and exponents.max() == 255:
            raise MalformedFileError(f"{spec.name}: an MXFP4 scale exponent of 255 (E8M0's NaN)")
        return MXFP4Linear(stored.tensor("weight_packed"), exponents)

    def card(self) -> tuple[str, list[str]]:
        """MXFP4, weights only."""
        return (f"compressed-tensors {self.name} weights only (MXFP4A16): e2m1 values with a "
                "power-of-two (E8M0) scale per 32 inputs; bf16 activations",
                ["compressed-tensors", "mxfp4"])

    def label(self) -> str:
        """mxfp4."""
        return "mxfp4"

    def group(self) -> dict[str, Any]:
        """The MXFP4A16 preset group, as compressed-tensors 0.20.0 writes it."""
        return {"weights": {"num_bits": 4, "type": "float", "symmetric": True,
                            "group_size": MX_GROUP, "strategy": "group", "dynamic": False,
                            "scale_dtype": "torch.uint8"},
                "input_activations": None, "output_activations": None, "format": self.name}

    @classmethod
    def recognises(cls, group: dict[str, Any]) -> bool:
        """Named mxfp4-pack-quantized, or (unnamed) 4-bit float weights in groups of 32."""
        return is_fp4_group(group, cls.name, MX_GROUP)

    @classmethod
    def from_group(cls, name: str, weights: dict[str, Any], source: str) -> MXFP4PackQuantized:
        """4-bit symmetric float weights in groups of 32."""
        check_fp4_weights(weights, group_size=MX_GROUP, strategy="group", label="MXFP4",
                          group=name, source=source)
        return cls()


@dataclasses.dataclass(frozen=True, eq=False)
class MXFP4Linear:
    """One Linear in MXFP4 ([out, in]): packed e2m1 codes and biased exponents (uint8)."""

    packed: np.ndarray
    exponents: np.ndarray

    def dequantize(self) -> np.ndarray:
        """float32 weights in the canonical [in, out] orientation."""
        values = e2m1_values(unpack_nibbles(self.packed))
        values *= np.repeat(e8m0_to_f32(self.exponents), MX_GROUP, axis=1)
        return np.ascontiguousarray(values.T)
