"""Quantization math as pure, vectorised numpy functions: the CPU reference.

Every function takes a float32 matrix in PyTorch orientation [out, in] and an explicit scheme;
groups run along the input dimension (the last group may be shorter). The Triton kernels in
`quant.kernels` compute exactly the same operations in the same order, so results are
bit-identical: IEEE division, round half to even, bf16 scales rounded to nearest even, and a
zero bf16 scale replaced by the smallest normal (2^-126).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from converter.compressed import PackedLinear, pack_codes, pack_zero_points
from converter.tensors import bf16_bits_to_f32, f32_to_bf16_bits
from quant.schemes import QuantScheme

__all__ = ["MSE_GRID", "Quantized", "choose_qparams", "dequantize", "error_stats", "grouped",
           "quantize", "quantize_linear"]

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


@dataclasses.dataclass(frozen=True, eq=False)
class Quantized:
    """Codes and how far they are from the input.

    codes: int8 [out, in]; group_sq_error: float64 [out, groups], the summed squared
    reconstruction error of each group; clipped: codes that hit the range limits after
    rounding; max_error: the largest absolute reconstruction error.
    """

    codes: np.ndarray
    group_sq_error: np.ndarray
    clipped: int
    max_error: float


def quantize(x: np.ndarray, scale_bits: np.ndarray, zero: np.ndarray,
             scheme: QuantScheme) -> Quantized:
    """Round x [out, in] to codes with the given bf16 scales and zero points (in place on one
    working buffer: divide, clamp, round half to even, shift, clip; then the error)."""
    out, cols = x.shape
    g = grouped(x, scheme.group_size)
    scale = bf16_bits_to_f32(scale_bits)[..., None]
    work = g / scale
    np.clip(work, scheme.qmin - 1 - 255, scheme.qmax + 1 + 255, out=work)
    np.rint(work, out=work)
    if not scheme.symmetric:
        work += zero[..., None].astype(np.float32)
    clipped = int(np.count_nonzero(work < scheme.qmin) + np.count_nonzero(work > scheme.qmax))
    np.clip(work, scheme.qmin, scheme.qmax, out=work)
    codes = work.astype(np.int8).reshape(out, -1)[:, :cols]
    if not scheme.symmetric:
        work -= zero[..., None].astype(np.float32)
    work *= scale
    work -= g
    max_error = float(np.abs(work).max()) if work.size else 0.0
    np.square(work, out=work)
    return Quantized(codes=codes, group_sq_error=work.sum(axis=-1, dtype=np.float64),
                     clipped=clipped, max_error=max_error)


def dequantize(codes: np.ndarray, scale_bits: np.ndarray, zero: np.ndarray,
               group_size: int | None) -> np.ndarray:
    """float32 [out, in] from codes and bf16 scales."""
    out, cols = codes.shape
    g = grouped(codes.astype(np.float32), group_size)
    values = (g - zero[..., None].astype(np.float32)) * bf16_bits_to_f32(scale_bits)[..., None]
    return values.reshape(out, -1)[:, :cols]


def _mse_qparams(x: np.ndarray, scheme: QuantScheme) -> tuple[np.ndarray, np.ndarray]:
    """Per group, the clipping ratio of MSE_GRID with the least squared reconstruction error."""
    best_bits, best_zero = choose_qparams(x, scheme)
    best_err = quantize(x, best_bits, best_zero, scheme).group_sq_error
    for clip in MSE_GRID[1:]:
        bits, zero = choose_qparams(x, scheme, clip)
        err = quantize(x, bits, zero, scheme).group_sq_error
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_bits = np.where(better, bits, best_bits)
        best_zero = np.where(better, zero, best_zero)
    return best_bits.astype(np.uint16), best_zero.astype(np.int8)


def error_stats(x: np.ndarray, result: Quantized) -> dict[str, float]:
    """Relative RMS error, max |error| and % of codes clipped."""
    flat = x.reshape(-1)
    norm_sq = float(np.dot(flat, flat))
    return {"rel_rms": float(np.sqrt(result.group_sq_error.sum() / norm_sq)) if norm_sq else 0.0,
            "max_abs_err": result.max_error,
            "clipped_pct": 100.0 * result.clipped / max(x.size, 1),
            "numel": int(x.size)}


def quantize_linear(x: np.ndarray, scheme: QuantScheme) -> tuple[PackedLinear, dict[str, float]]:
    """Quantize and pack one float32 [out, in] matrix; returns it and its error statistics."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if scheme.method == "mse":
        bits, zero = _mse_qparams(x, scheme)
    else:
        bits, zero = choose_qparams(x, scheme)
    result = quantize(x, bits, zero, scheme)
    packed = PackedLinear(
        packed=pack_codes(result.codes, scheme.bits), scale=bits, shape=x.shape,
        bits=scheme.bits, group_size=scheme.group_size or x.shape[1],
        zero_point=None if scheme.symmetric else pack_zero_points(zero, scheme.bits))
    return packed, error_stats(x, result)
