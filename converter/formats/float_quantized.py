"""compressed-tensors `float-quantized` FP8: e4m3 weights with float32 scales, one per output
channel or one per [b0, b1] block (the FP8_DYNAMIC and FP8_BLOCK presets)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import numpy as np

from converter.dtypes import FLOATS
from converter.errors import MalformedFileError
from converter.formats.base import LinearFormat, Part, StoredParts, linear_shape
from converter.model.spec import TensorSpec

__all__ = ["E4M3_MAX", "FP8Linear", "FloatQuantized", "e4m3_to_f32", "expand_scale"]

E4M3_MAX = 448.0
"""The largest finite float8 e4m3fn value."""


@dataclasses.dataclass(frozen=True)
class FloatQuantized(LinearFormat):
    """e4m3 weights; `block` None scales per output channel, else per [out, in] block."""

    block: tuple[int, int] | None = None

    name: ClassVar[str] = "float-quantized"

    def part_table(self) -> dict[str, Part]:
        """`weight` (F8_E4M3 only: a BF16 tensor there would be decoded as fp8 bytes) and
        float32 `weight_scale` [out, 1] or the block grid."""
        return {"weight": Part("F8_E4M3", ("F8_E4M3",), lambda out, cols: (out, cols)),
                "weight_scale": Part("F32", FLOATS, self._scale_shape)}

    def _scale_shape(self, out: int, cols: int) -> tuple[int, int]:
        if self.block is None:
            return out, 1
        return math.ceil(out / self.block[0]), math.ceil(cols / self.block[1])

    def check(self, spec: TensorSpec, source: str) -> None:
        """A block no larger than the Linear it tiles (checked before any scale is expanded:
        a block_structure of [1, 4194304] must not allocate gigabytes)."""
        out, cols = linear_shape(spec)
        if self.block is not None and (self.block[0] > out or self.block[1] > cols):
            raise MalformedFileError(f"{source}: fp8 block_structure {list(self.block)} is "
                                     f"larger than the [out, in] = [{out}, {cols}] Linear "
                                     f"{spec.role} it tiles")

    def read(self, stored: StoredParts, spec: TensorSpec) -> Any:
        """An `FP8Linear`."""
        return FP8Linear(stored.tensor("weight"), stored.floats("weight_scale"), self.block)

    def card(self) -> tuple[str, list[str]]:
        """FP8 weights, and the hardware they need."""
        layout = (f"{self.block[0]}x{self.block[1]} blocks" if self.block else
                  "one scale per output channel")
        return (f"compressed-tensors {self.name}, FP8 e4m3 weights ({layout}) with dynamic FP8 "
                "activations: needs FP8 tensor cores (NVIDIA Hopper, H100/H200, or newer) to be "
                "served", ["compressed-tensors", "fp8"])

    def label(self) -> str:
        """fp8 or fp8-block."""
        return "fp8-block" if self.block else "fp8"

    def group(self) -> dict[str, Any]:
        """The FP8_DYNAMIC or FP8_BLOCK preset group, as compressed-tensors 0.20.0 writes it."""
        block = self.block is not None
        weights: dict[str, Any] = {"num_bits": 8, "type": "float", "symmetric": True,
                                   "group_size": None, "strategy": "block" if block else "channel"}
        if block:
            weights["block_structure"] = list(self.block)
        weights["dynamic"] = False
        return {"weights": weights,
                "input_activations": {"num_bits": 8, "type": "float", "symmetric": True,
                                      "group_size": 128 if block else None,
                                      "strategy": "group" if block else "token",
                                      "dynamic": True},
                "output_activations": None, "format": self.name}

    @classmethod
    def recognises(cls, group: dict[str, Any]) -> bool:
        """Named float-quantized, or (unnamed) 8-bit float weights."""
        if "format" in group:
            return group["format"] == cls.name
        return group["weights"].get("type") == "float"

    @classmethod
    def from_group(cls, name: str, weights: dict[str, Any], source: str) -> FloatQuantized:
        """8-bit symmetric float weights by channel or by block."""
        strategy, block = weights.get("strategy"), weights.get("block_structure")
        valid_block = (isinstance(block, list) and len(block) == 2 and all(
            isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block))
        if weights.get("num_bits") != 8 or weights.get("type") != "float" or strategy not in (
                "channel", "block") or (strategy == "block" and not valid_block) or \
                weights.get("symmetric") is False:
            raise MalformedFileError(f"{source}: quantization config group {name!r}: only "
                                     "8-bit symmetric float weights by channel or block are "
                                     "supported")
        return cls(tuple(block) if strategy == "block" else None)


def e4m3_to_f32(bits: np.ndarray) -> np.ndarray:
    """float8 e4m3fn bits (uint8) -> float32, exactly."""
    return _E4M3[np.asarray(bits, np.uint8)]


def _e4m3_table() -> np.ndarray:
    codes = np.arange(256)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exponent, mantissa = (codes >> 3) & 0xF, codes & 0x7
    value = np.where(exponent == 0, mantissa / 8 * 2.0**-6,
                     (1 + mantissa / 8) * 2.0 ** (exponent - 7))
    value[(codes & 0x7F) == 0x7F] = np.nan
    return (sign * value).astype(np.float32)


_E4M3 = _e4m3_table()


@dataclasses.dataclass(frozen=True, eq=False)
class FP8Linear:
    """One Linear in float-quantized form ([out, in]): e4m3 bits (uint8) and float32 scales,
    one per output channel [out, 1] or per block [ceil(out/b0), ceil(in/b1)]."""

    bits: np.ndarray
    scale: np.ndarray
    block: tuple[int, int] | None = None

    def dequantize(self) -> np.ndarray:
        """float32 weights in the canonical [in, out] orientation."""
        scale = expand_scale(np.asarray(self.scale, np.float32), self.bits.shape, self.block)
        return np.ascontiguousarray((e4m3_to_f32(self.bits) * scale).T)


def expand_scale(scale: np.ndarray, shape: tuple[int, int], block: tuple[int, int] | None
                 ) -> np.ndarray:
    """Per-element scales of an [out, in] matrix from per-channel [out, 1] or per-block ones."""
    if block is None:
        return np.broadcast_to(scale, shape)
    rows = np.arange(shape[0]) // block[0]
    cols = np.arange(shape[1]) // block[1]
    return scale[rows[:, None], cols[None, :]]
