"""FP4 (e2m1) values as compressed-tensors stores them: a 4-bit code per value (bit 3 the sign,
bits 0-2 the index of |value| in {0, 0.5, 1, 1.5, 2, 3, 4, 6}), two codes per byte along the
input dimension, the even column in the low nibble (`compressors/nvfp4/helpers.py` 0.20:
`pack_fp4_to_uint8`, `unpack_fp4_from_uint8`). Shared by NVFP4 and MXFP4, which differ only in
their scales; rounding to the grid is `e2m1_codes` (compressed-tensors' `cast_to_fp4`)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from converter.errors import MalformedFileError
from converter.tensors import rounding_table_index, top16_floats

__all__ = ["ABOVE", "E2M1_MAX", "MAGNITUDES", "check_fp4_weights", "e2m1_codes", "e2m1_values",
           "is_fp4_group", "unpack_nibbles"]

E2M1_MAX = 6.0
"""The largest e2m1 value."""

MAGNITUDES = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float32)
_VALUES = np.concatenate([MAGNITUDES, -MAGNITUDES]).astype(np.float32)

# cast_to_fp4's buckets: |q| <= .25 -> 0, < .75 -> .5, <= 1.25 -> 1, < 1.75 -> 1.5,
# <= 2.5 -> 2, < 3.5 -> 3, <= 5 -> 4, else 6 (round to nearest, ties to the even code). A
# magnitude's index is how many of these it exceeds ("a >= t" as "a > the float below t").
ABOVE = np.array([0.25, np.nextafter(np.float32(0.75), np.float32(0)), 1.25,
                  np.nextafter(np.float32(1.75), np.float32(0)), 2.5,
                  np.nextafter(np.float32(3.5), np.float32(0)), 5.0], np.float32)


def _rounded(quotient: np.ndarray) -> np.ndarray:
    """4-bit codes of float32 values by `ABOVE` and their sign (the definition)."""
    codes = np.searchsorted(ABOVE, np.abs(quotient), side="left").astype(np.uint8)
    codes |= (quotient < 0).astype(np.uint8) << 3
    return codes


@functools.cache
def _code_table() -> np.ndarray:
    """The code of every float32 by `rounding_table_index` (every threshold's low 17 bits are
    zero)."""
    return _rounded(top16_floats())


def e2m1_codes(quotient: np.ndarray) -> np.ndarray:
    """4-bit codes (uint8) of finite float32 values already divided by their scale: the
    magnitude rounded as compressed-tensors' `cast_to_fp4` rounds it (values beyond 6 clamp to
    6), the sign bit set for every value below zero, those rounded to zero included (-0.0
    itself is not below zero: code 0, as compressed-tensors' torch.sign makes it). Through a
    64K-entry table of `_rounded`'s results."""
    return _code_table().take(rounding_table_index(quotient))


def e2m1_values(codes: np.ndarray) -> np.ndarray:
    """float32 values of 4-bit codes."""
    return _VALUES.take(codes)


def unpack_nibbles(packed: np.ndarray) -> np.ndarray:
    """[rows, cols / 2] bytes -> [rows, cols] 4-bit codes."""
    packed = np.asarray(packed, np.uint8)
    codes = np.empty((packed.shape[0], packed.shape[1] * 2), np.uint8)
    codes[:, 0::2] = packed & 0x0F
    codes[:, 1::2] = packed >> 4
    return codes


def is_fp4_group(group: dict[str, Any], name: str, group_size: int) -> bool:
    """Whether a config group is the FP4 format `name`: named so, or (unnamed) 4-bit float
    weights in groups of `group_size`."""
    if "format" in group:
        return group["format"] == name
    weights = group["weights"]
    return (weights.get("type") == "float" and weights.get("num_bits") == 4
            and weights.get("group_size") == group_size)


def check_fp4_weights(weights: dict[str, Any], *, group_size: int, strategy: str, label: str,
                      group: str, source: str) -> None:
    """Refuse a config group's `weights` unless they are 4-bit symmetric floats with this
    strategy and group size."""
    if (weights.get("num_bits") != 4 or weights.get("type") != "float"
            or weights.get("group_size") != group_size or weights.get("strategy") != strategy
            or weights.get("symmetric") is False):
        raise MalformedFileError(f"{source}: quantization config group {group!r}: {label} is "
                                 f"4-bit symmetric float weights, strategy {strategy}, "
                                 f"group_size {group_size}")
