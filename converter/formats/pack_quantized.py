"""compressed-tensors `pack-quantized`: integer codes packed into int32 words, a scale per
output channel or per group of inputs, and (asymmetric) packed zero points.

Checked against the compressed-tensors 0.20.0 package: codes are offset by 2^(bits-1) and packed
low bits first along the input dimension into int32 words (int4: column 8j+k of word j at bits
4k..4k+3), zero points likewise but along the output dimension. These are pure functions; the
quantization math that chooses codes and scales lives in `quant/`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import numpy as np

from converter.dtypes import FLOATS
from converter.errors import MalformedFileError
from converter.formats.base import LinearFormat, Part, StoredParts, linear_shape
from converter.model.spec import TensorSpec
from converter.tensors import QuantizedWeight8bit, bf16_bits_to_f32, transposed

__all__ = ["PackQuantized", "PackedLinear", "codes_per_word", "pack_codes", "pack_zero_points",
           "packed_width", "unpack_codes"]


def codes_per_word(bits: int) -> int:
    """Codes of `bits` bits one int32 word holds: the packing rule."""
    return 32 // bits


def packed_width(columns: int, bits: int) -> int:
    """int32 words that hold `columns` codes of `bits` bits."""
    return -(-columns // codes_per_word(bits))


@dataclasses.dataclass(frozen=True)
class PackQuantized(LinearFormat):
    """4- or 8-bit integer codes; group_size None is one group per output channel."""

    bits: int = 8
    group_size: int | None = None
    symmetric: bool = True
    scale_dtype: str = "BF16"

    name: ClassVar[str] = "pack-quantized"

    def groups(self, in_features: int) -> int:
        """Number of scale groups along the input dimension."""
        return 1 if self.group_size is None else math.ceil(in_features / self.group_size)

    def part_table(self) -> dict[str, Part]:
        """weight_packed, weight_scale, weight_shape (and weight_zero_point)."""
        table = {
            "weight_packed": Part("I32", ("I32",),
                                  lambda out, cols: (out, packed_width(cols, self.bits))),
            "weight_scale": Part(self.scale_dtype, FLOATS,
                                 lambda out, cols: (out, self.groups(cols))),
            "weight_shape": Part("I64", ("I64", "I32"), lambda out, cols: (2,)),
        }
        if not self.symmetric:
            table["weight_zero_point"] = Part(
                "I32", ("I32",), lambda out, cols: (packed_width(out, self.bits),
                                                    self.groups(cols)))
        return table

    def read(self, stored: StoredParts, spec: TensorSpec) -> Any:
        """A `PackedLinear`, or the release's codes and scales when it repeats them exactly."""
        out, cols = linear_shape(spec)
        stored.check_recorded_shape("weight_shape", (out, cols))
        scale = stored.tensor("weight_scale")
        if scale.dtype != np.uint16:
            scale = np.asarray(scale, np.float32)
        packed = PackedLinear(
            packed=stored.tensor("weight_packed"), scale=scale, shape=(out, cols),
            bits=self.bits, group_size=self.group_size or cols,
            zero_point=None if self.symmetric else stored.tensor("weight_zero_point"))
        return _as_release_int8(packed, spec) or packed

    def card(self) -> tuple[str, list[str]]:
        """e.g. "compressed-tensors pack-quantized, int4 group (group size 128), symmetric"."""
        strategy = "group" if self.group_size else "channel"
        size = f" (group size {self.group_size})" if self.group_size else ""
        return (f"compressed-tensors {self.name}, int{self.bits} {strategy}{size}, "
                + ("symmetric" if self.symmetric else "asymmetric"),
                ["compressed-tensors", f"int{self.bits}"])

    def label(self) -> str:
        """int4, int8 (-asym when asymmetric)."""
        return f"int{self.bits}" + ("" if self.symmetric else "-asym")

    def group(self) -> dict[str, Any]:
        """The group as compressed-tensors 0.20.0 writes it."""
        return {"weights": {"num_bits": self.bits, "type": "int", "symmetric": self.symmetric,
                            "strategy": "group" if self.group_size else "channel",
                            "group_size": self.group_size, "dynamic": False, "actorder": None,
                            "block_structure": None, "observer": "minmax",
                            "observer_kwargs": {}},
                "input_activations": None, "output_activations": None, "format": self.name}

    @classmethod
    def recognises(cls, group: dict[str, Any]) -> bool:
        """Named pack-quantized, or (unnamed) integer weights."""
        if "format" in group:
            return group["format"] == cls.name
        return group["weights"].get("type", "int") == "int"

    @classmethod
    def from_group(cls, name: str, weights: dict[str, Any], source: str) -> PackQuantized:
        """4 or 8 bits, by channel or by group."""
        bits, strategy = weights.get("num_bits"), weights.get("strategy")
        group_size, symmetric = weights.get("group_size"), weights.get("symmetric", True)
        problems = []
        if bits not in (4, 8) or isinstance(bits, bool):
            problems.append(f"num_bits {bits!r} (pack-quantized holds 4 or 8)")
        if weights.get("type", "int") != "int":
            problems.append(f"type {weights.get('type')!r} (expected int)")
        if strategy not in ("channel", "group"):
            problems.append(f"strategy {strategy!r} (expected channel or group)")
        if strategy == "group" and (isinstance(group_size, bool) or
                                    not isinstance(group_size, int) or group_size < 1):
            problems.append(f"group_size {group_size!r}")
        if not isinstance(symmetric, bool):
            problems.append(f"symmetric {symmetric!r}")
        if problems:
            raise MalformedFileError(f"{source}: quantization config group {name!r} has an "
                                     f"unsupported " + ", ".join(problems))
        return cls(bits, group_size if strategy == "group" else None, symmetric)


def _check_bits(bits: int) -> None:
    if bits not in (4, 8):
        raise ValueError(f"pack-quantized supports 4 and 8 bits, not {bits}")


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Signed codes [rows, cols] (int8) -> int32 words [rows, ceil(cols * bits / 32)].

    Little-endian words packed low bits first are just the offset codes' bytes (8-bit) or
    nibble pairs (4-bit) in order, so packing is a byte-level operation.
    """
    _check_bits(bits)
    rows, cols = codes.shape
    per_word = codes_per_word(bits)
    words = -(-cols // per_word)
    offset = np.zeros((rows, words * per_word), np.uint8)
    np.add(np.ascontiguousarray(codes).view(np.uint8), np.uint8(1 << (bits - 1)),
           out=offset[:, :cols])
    if bits == 4:  # byte pairs as little-endian uint16 a | b << 8 -> the byte a | b << 4
        pairs = offset.view("<u2")
        offset = (pairs | (pairs >> 4)).astype(np.uint8)
    return offset.view("<i4")


def unpack_codes(packed: np.ndarray, bits: int, cols: int) -> np.ndarray:
    """int32 words [rows, words] -> signed codes [rows, cols] (int8)."""
    _check_bits(bits)
    raw = np.ascontiguousarray(packed).view(np.uint8)
    if bits == 8:
        return (raw[:, :cols] ^ np.uint8(0x80)).view(np.int8)
    nibbles = np.empty((raw.shape[0], raw.shape[1] * 2), np.uint8)
    nibbles[:, 0::2] = raw & np.uint8(0x0F)
    nibbles[:, 1::2] = raw >> 4
    return (nibbles[:, :cols].astype(np.int16) - 8).astype(np.int8)


def pack_zero_points(zero_points: np.ndarray, bits: int) -> np.ndarray:
    """Signed zero points [out, n_groups] -> int32 packed along the output dimension."""
    return pack_codes(np.ascontiguousarray(zero_points.T), bits).T.copy()


@dataclasses.dataclass(frozen=True, eq=False)
class PackedLinear:
    """One Linear in pack-quantized form (PyTorch orientation, [out, in]).

    packed: int32 [out, ceil(in * bits / 32)]; scale: float32 or bf16 bits (uint16)
    [out, n_groups]; zero_point: int32 [ceil(out * bits / 32), n_groups] or None (symmetric).
    """

    packed: np.ndarray
    scale: np.ndarray
    shape: tuple[int, int]
    bits: int
    group_size: int
    zero_point: np.ndarray | None = None

    def scale_f32(self) -> np.ndarray:
        """Scales as float32 [out, n_groups]."""
        if self.scale.dtype == np.uint16:
            return bf16_bits_to_f32(self.scale)
        return self.scale.astype(np.float32)

    def codes(self) -> np.ndarray:
        """Signed codes [out, in]."""
        return unpack_codes(self.packed, self.bits, self.shape[1])

    def zero_points(self) -> np.ndarray:
        """Signed zero points [out, n_groups] (zeros when symmetric)."""
        groups = self.scale.shape[1]
        if self.zero_point is None:
            return np.zeros((self.shape[0], groups), np.int8)
        return unpack_codes(self.zero_point.T.copy(), self.bits, self.shape[0]).T

    def dequantize(self) -> np.ndarray:
        """float32 weights in the canonical [in, out] orientation."""
        group = np.arange(self.shape[1]) // self.group_size
        codes = self.codes().astype(np.float32)
        if self.zero_point is not None:
            codes -= self.zero_points().astype(np.float32)[:, group]
        return np.ascontiguousarray((codes * self.scale_f32()[:, group]).T)


def _as_release_int8(packed: PackedLinear, spec: TensorSpec) -> QuantizedWeight8bit | None:
    """The release's (codes, G scales) when an 8-bit packed Linear repeats them exactly."""
    if packed.bits != 8 or packed.zero_point is not None or packed.scale.dtype != np.uint16:
        return None
    cols = packed.shape[1]
    block = cols // spec.scale_groups
    if block % packed.group_size or cols % spec.scale_groups:
        return None
    per_block = block // packed.group_size
    scales = np.ascontiguousarray(packed.scale[:, ::per_block].T)
    if not np.array_equal(np.repeat(scales.T, per_block, axis=1), packed.scale):
        return None
    return QuantizedWeight8bit(transposed(packed.codes()), scales)
