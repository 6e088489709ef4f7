"""Quantization math as pure, vectorised numpy functions: the CPU reference.

Every function takes a float32 matrix in PyTorch orientation [out, in] and an explicit scheme;
groups run along the input dimension (the last group may be shorter). The Triton kernels in
`quant.kernels` compute exactly the same operations in the same order, so results are
bit-identical: IEEE division, round half to even, bf16 scales rounded to nearest even, and a
zero bf16 scale replaced by the smallest normal (2^-126).
"""

from __future__ import annotations

import math

import numpy as np

from converter.compressed import PackedLinear, pack_codes, pack_zero_points
from converter.tensors import bf16_bits_to_f32, f32_to_bf16_bits
from quant.schemes import QuantScheme

__all__ = ["MSE_GRID", "choose_qparams", "dequantize", "grouped", "quantize", "quantize_linear"]

SMALLEST_SCALE_BITS = np.uint16(0x0080)  # bf16 2^-126
# Clipping ratios tried by --method mse, largest first (ties keep the larger range).
MSE_GRID = tuple(np.float32(1 - 0.025 * i) for i in range(21))


def grouped(x: np.ndarray, group_size: int | None) -> np.ndarray:
    """[out, in] -> [out, groups, group] padded with zeros (zeros change no statistic used)."""
    out, cols = x.shape
    size = group_size or cols
    groups = math.ceil(cols / size)
    if groups * size != cols:
        x = np.pad(x, ((0, 0), (0, groups * size - cols)))
    return x.reshape(out, groups, size)


def _bf16_scale(scale: np.ndarray) -> np.ndarray:
    bits = f32_to_bf16_bits(scale)
    return np.where(bits == 0, SMALLEST_SCALE_BITS, bits).astype(np.uint16)


def choose_qparams(x: np.ndarray, scheme: QuantScheme,
                   clip: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(bf16 scale bits [out, groups], zero points int8 [out, groups]) by min/max (RTN)."""
    g = grouped(x, scheme.group_size)
    if scheme.symmetric:
        absmax = np.abs(g).max(axis=-1) * np.float32(clip)
        bits = _bf16_scale(absmax / np.float32(scheme.qmax))
        return bits, np.zeros(bits.shape, np.int8)
    low = np.minimum(g.min(axis=-1), np.float32(0)) * np.float32(clip)
    high = np.maximum(g.max(axis=-1), np.float32(0)) * np.float32(clip)
    bits = _bf16_scale((high - low) / np.float32(scheme.qmax - scheme.qmin))
    zero = np.float32(scheme.qmin) - low / bf16_bits_to_f32(bits)
    zero = np.clip(np.rint(zero), scheme.qmin, scheme.qmax).astype(np.int8)
    return bits, zero


def quantize(x: np.ndarray, scale_bits: np.ndarray, zero: np.ndarray,
             scheme: QuantScheme) -> tuple[np.ndarray, int]:
    """Codes int8 [out, in] and how many were clipped."""
    out, cols = x.shape
    g = grouped(x, scheme.group_size)
    scale = bf16_bits_to_f32(scale_bits)[..., None]
    ratio = np.clip(g / scale, scheme.qmin - 1 - 255, scheme.qmax + 1 + 255)
    rounded = np.rint(ratio) + zero[..., None].astype(np.float32)
    clipped = (rounded < scheme.qmin) | (rounded > scheme.qmax)
    codes = np.clip(rounded, scheme.qmin, scheme.qmax).astype(np.int8)
    codes = codes.reshape(out, -1)[:, :cols]
    clipped = clipped.reshape(out, -1)[:, :cols]
    return codes, int(clipped.sum())


def dequantize(codes: np.ndarray, scale_bits: np.ndarray, zero: np.ndarray,
               group_size: int | None) -> np.ndarray:
    """float32 [out, in] from codes and bf16 scales."""
    out, cols = codes.shape
    g = grouped(codes.astype(np.float32), group_size)
    values = (g - zero[..., None].astype(np.float32)) * bf16_bits_to_f32(scale_bits)[..., None]
    return values.reshape(out, -1)[:, :cols]


def _mse_qparams(x: np.ndarray, scheme: QuantScheme) -> tuple[np.ndarray, np.ndarray]:
    """Per group, the clipping ratio of MSE_GRID with the least squared reconstruction error."""
    g = grouped(x, scheme.group_size)
    best_err = np.full(g.shape[:2], np.inf, np.float64)
    best = choose_qparams(x, scheme)
    for clip in MSE_GRID:
        bits, zero = choose_qparams(x, scheme, clip)
        codes, _ = quantize(x, bits, zero, scheme)
        err = grouped(dequantize(codes, bits, zero, scheme.group_size) - x, scheme.group_size)
        err = np.square(err.astype(np.float64)).sum(axis=-1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best = (np.where(better, bits, best[0]), np.where(better, zero, best[1]))
    return best[0].astype(np.uint16), best[1].astype(np.int8)


def quantize_linear(x: np.ndarray, scheme: QuantScheme) -> tuple[PackedLinear, int]:
    """Quantize and pack one float32 [out, in] matrix; returns it and the clipped-code count."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if scheme.method == "mse":
        bits, zero = _mse_qparams(x, scheme)
    else:
        bits, zero = choose_qparams(x, scheme)
    codes, clipped = quantize(x, bits, zero, scheme)
    packed = PackedLinear(
        packed=pack_codes(codes, scheme.bits), scale=bits, shape=x.shape, bits=scheme.bits,
        group_size=scheme.group_size or x.shape[1],
        zero_point=None if scheme.symmetric else pack_zero_points(zero, scheme.bits))
    return packed, clipped
