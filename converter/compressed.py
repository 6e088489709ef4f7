"""The compressed-tensors `pack-quantized` layout: packing, unpacking and packed Linears.

Checked against the compressed-tensors 0.20.0 package: codes are offset by 2^(bits-1) and packed
low bits first along the input dimension into int32 words (int4: column 8j+k of word j at bits
4k..4k+3), zero points likewise but along the output dimension. These are pure functions; the
quantization math that chooses codes and scales lives in `quant/`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from converter.tensors import bf16_bits_to_f32, dense

__all__ = ["PackedLinear", "StackedExperts", "pack_codes", "quantization_config",
           "unpack_codes"]


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
    per_word = 32 // bits
    words = -(-cols // per_word)
    offset = np.ascontiguousarray(codes).view(np.uint8) ^ np.uint8(1 << (bits - 1) if bits == 8
                                                                     else 0)
    raw = np.zeros((rows, words * 4), np.uint8)
    if bits == 8:
        raw[:, :cols] = offset
    else:
        nibbles = np.zeros((rows, words * per_word), np.uint8)
        nibbles[:, :cols] = (codes.astype(np.int16) + 8).astype(np.uint8)
        raw[:] = nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)
    return raw.view("<i4")


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


def pack_zero_points(zero_points: np.ndarray, bits: int) -> np.ndarray:
    """Signed zero points [out, n_groups] -> int32 packed along the output dimension."""
    return pack_codes(np.ascontiguousarray(zero_points.T), bits).T.copy()


def quantization_config(groups: list[dict[str, Any]], ignore: list[str]) -> dict[str, Any]:
    """config.json `quantization_config` for weight-only pack-quantized Linears.

    groups: one dict per config group with keys targets, num_bits, symmetric, strategy and
    group_size (None for channel).
    """
    config_groups = {}
    for index, group in enumerate(groups):
        config_groups[f"group_{index}"] = {
            "targets": group["targets"],
            "weights": {
                "num_bits": group["num_bits"], "type": "int",
                "symmetric": group["symmetric"], "strategy": group["strategy"],
                "group_size": group["group_size"], "dynamic": False, "actorder": None,
                "block_structure": None, "observer": "minmax", "observer_kwargs": {},
            },
            "input_activations": None,
            "output_activations": None,
            "format": "pack-quantized",
        }
    return {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": config_groups,
        "ignore": ignore,
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
        "sparsity_config": {},
    }
