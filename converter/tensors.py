"""Tensor values that flow through the stream, and bfloat16 helpers for numpy.

numpy has no bfloat16, so bf16 data is carried as its raw bits in a `uint16` array. Conversion to
float32 is exact (a bit shift); float32 -> bf16 rounds to nearest even, as XLA and torch do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["QuantizedWeight8bit", "bf16_bits_to_f32", "dense", "f32_to_bf16_bits",
           "round_to_bf16", "round_to_bf16_inplace", "rounding_table_index", "top16_floats",
           "transposed", "transposed_bands"]


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """bf16 raw bits (uint16) -> float32, exactly."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def round_to_bf16_inplace(values: np.ndarray, scratch: np.ndarray | None = None) -> np.ndarray:
    """float32 values rounded to the nearest bf16 (ties to even), in place, kept as float32
    (finite values; `scratch`, a uint32 array of the same shape, saves an allocation)."""
    u = values.view(np.uint32)
    carry = np.right_shift(u, 16, out=scratch)
    carry &= np.uint32(1)
    carry += np.uint32(0x7FFF)
    u += carry
    u &= np.uint32(0xFFFF0000)
    return values


def f32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bf16 raw bits (uint16), round to nearest even; NaN stays NaN."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    u = values.view(np.uint32)
    rounded = u >> 16
    rounded &= np.uint32(1)
    rounded += np.uint32(0x7FFF)
    rounded += u
    rounded >>= 16
    bits = rounded.astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        bits[nan] = ((u[nan] >> 16) | np.uint32(0x0040)).astype(np.uint16)
    return bits


def top16_floats() -> np.ndarray:
    """Every float32 whose low 16 bits are zero, by its top 16 bits (NaN as 0, infinities as
    the largest finite float): the keys of a rounding table that `rounding_table_index`
    looks up."""
    values = (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32)
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(values)


def rounding_table_index(values: np.ndarray) -> np.ndarray:
    """Where finite float32 `values` are looked up in a table over `top16_floats`, for a
    rounding whose thresholds all have their low 17 bits zero (e4m3, e2m1): the top 16 bits,
    with bit 16 set where any lower bit is. No threshold lies between a value and the float
    it is looked up by, so the entry is the rounding of the value itself (ties included)."""
    u = np.ascontiguousarray(values, np.float32).view(np.uint32)
    index = u & np.uint32(0xFFFF)
    np.minimum(index, 1, out=index)
    index <<= np.uint32(16)
    index |= u
    index >>= np.uint32(16)
    return index


def round_to_bf16(values: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bf16, returned as float32."""
    return bf16_bits_to_f32(f32_to_bf16_bits(values))


@dataclasses.dataclass(frozen=True, eq=False)
class QuantizedWeight8bit:
    """The release's quantized matrix.

    weight: int8 [..., K, N] (codes, stored [in, out]).
    scales: uint16 [..., G, N] holding bf16 bits; rows k of weight use scale group k // (K / G).
    """

    weight: np.ndarray
    scales: np.ndarray

    def __getitem__(self, index: int) -> QuantizedWeight8bit:
        """One slice along the leading (expert) axis."""
        return QuantizedWeight8bit(weight=self.weight[index], scales=self.scales[index])

    @property
    def shape(self) -> tuple[int, ...]:
        """The logical shape [..., K, N] (the codes' shape), as a dense value's."""
        return tuple(self.weight.shape)

    @property
    def scale_groups(self) -> int:
        """G: the number of scale groups along the input axis."""
        return int(self.scales.shape[-2])

    def dequantize(self) -> np.ndarray:
        """float32 weights int8 * scale, exact (the product of 8-bit operands fits float32)."""
        *lead, k, n = self.weight.shape
        g = self.scale_groups
        codes = np.asarray(self.weight).reshape(*lead, g, k // g, n).astype(np.float32)
        scales = bf16_bits_to_f32(self.scales).reshape(*lead, g, 1, n)
        return (codes * scales).reshape(*lead, k, n)


def dense(value: object) -> np.ndarray:
    """Any reader value as a float32 array in the canonical `[..., in, out]` layout."""
    if hasattr(value, "dequantize"):
        return value.dequantize()
    return np.asarray(value, dtype=np.float32)


def transposed(array: np.ndarray) -> np.ndarray:
    """A contiguous copy of a 2-D array's transpose."""
    return transposed_bands(array.shape, array.dtype, lambda r0, r1: array[r0:r1])


def transposed_bands(shape: tuple[int, int], dtype: Any,
                     band: Callable[[int, int], np.ndarray]) -> np.ndarray:
    """The transpose [cols, rows] of a [rows, cols] matrix that `band(r0, r1)` gives a band
    of rows at a time, copied tile by tile (numpy's own strided copy of a large matrix is 1.5-3x
    slower: every row it writes misses the cache). Where the rows are a multiple of 2 KiB apart
    (every real Grok-1 width), tall tiles alias in the cache, so bands are 16 rows and tiles
    1024 columns there; elsewhere tiles are 256 bytes, or 128 elements, a side (both the
    fastest measured here for their case)."""
    rows, cols = shape
    itemsize = np.dtype(dtype).itemsize
    if (cols * itemsize) % 2048 == 0:
        tile_rows, tile_cols = 16, 1024
    else:
        tile_rows = tile_cols = 256 if itemsize == 1 else 128
    out = np.empty((cols, rows), dtype)
    for i in range(0, rows, tile_rows):
        rows_i = band(i, min(i + tile_rows, rows))
        for j in range(0, cols, tile_cols):
            out[j:j + tile_cols, i:i + tile_rows] = rows_i[:, j:j + tile_cols].T
    return out
