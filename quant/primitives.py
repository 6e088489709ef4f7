"""Quantization math as pure, vectorised numpy functions: the reference, the oracle the fast
paths are tested against (the search of --method mse, `search_clip`, is shared with them).

Every function takes a float32 matrix in PyTorch orientation [out, in] and an explicit scheme;
groups run along the input dimension (the last group may be shorter). The CPU path in
`quant.cpu` and the Triton kernels in `quant.kernels` compute exactly the same operations in
the same order, so results are bit-identical.

The arithmetic is compressed-tensors' (0.19 / 0.20: `calculate_qparams` and `_quantize`, the
torch path llm-compressor runs on a CPU) on a bf16 model, where every intermediate is a bf16
tensor: a scale is the range over (2^b - 1) / 2 (symmetric) or over 2^b - 1 (asymmetric, whose
max - min is rounded to bf16 first), rounded to bf16, a zero scale replaced by bf16's eps
(2^-7); a zero point is qmin - bf16(min / scale), rounded to bf16, clamped and rounded (0 where
the scale was 0); a code is bf16(x / scale) (asymmetric: plus the zero point, rounded to bf16
again), clamped and rounded half to even. Each rounding to bf16 is of the float32 result (IEEE
division, then to nearest even), as torch computes bf16 arithmetic. That rounding of x / scale
is `arithmetic="bf16"`; the default, "f32", keeps the quotient (plus zero point) in float32 as
compressed-tensors' Triton kernel does on a GPU (for int8 the bf16 quotient costs precision:
above 64 it holds only halves). `benchmarks/bench_llmcompressor.py` compares our bytes with
llm-compressor's.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from converter.formats import PackedLinear, pack_codes, pack_zero_points
from converter.tensors import (
    bf16_bits_to_f32,
    f32_to_bf16_bits,
    round_to_bf16,
    round_to_bf16_inplace,
)
from quant.schemes import QuantScheme

__all__ = ["MSE_GRID", "Quantized", "choose_qparams", "error_stats", "grouped",
           "mse_qparams", "quantize", "quantize_linear", "scale_bits_of", "search_clip"]

# Clipping ratios --method mse chooses from, largest first: 1.0 down to 0.7 in steps of 0.025
# (GPTQ's search stops at 0.8; on the bench model no group's best ratio was below 0.675).
MSE_GRID = tuple(np.float32(1 - 0.025 * i) for i in range(13))
MSE_COARSE = 3  # first every 3rd ratio, then the one on each side of the best of those


def grouped(x: np.ndarray, group_size: int | None) -> np.ndarray:
    """[out, in] -> [out, groups, group] padded with zeros (zeros change no statistic used)."""
    out, cols = x.shape
    size = group_size or cols
    groups = math.ceil(cols / size)
    if groups * size != cols:
        x = np.pad(x, ((0, 0), (0, groups * size - cols)))
    return x.reshape(out, groups, size)


def scale_bits_of(scale: np.ndarray, scheme: QuantScheme) -> np.ndarray:
    """float32 scales -> bf16 bits, rounded to nearest even; a zero scale becomes the
    scheme's stand-in (2^-7, or 2^-126 on the release grid)."""
    bits = f32_to_bf16_bits(scale)
    return np.where(bits == 0, np.uint16(scheme.zero_scale_bits), bits).astype(np.uint16)


def zero_points(low: np.ndarray, raw_scale: np.ndarray, scheme: QuantScheme) -> np.ndarray:
    """int8 zero points: qmin - bf16(low / scale), rounded to bf16, clamped, rounded half to
    even. The scale is the one before a zero became 2^-7; dividing by that zero gives -inf for
    low < 0 (zero point qmax) and NaN for 0 / 0 (compressed-tensors' int8 cast makes it 0)."""
    zeroed = raw_scale == 0
    quotient = round_to_bf16(low / np.where(zeroed, np.float32(1), raw_scale))
    zero = round_to_bf16(np.float32(scheme.qmin) - quotient)
    zero = np.rint(np.clip(zero, scheme.qmin, scheme.qmax))
    return np.where(zeroed, np.where(low < 0, scheme.qmax, 0), zero).astype(np.int8)


def on_code_grid(quotient: np.ndarray, zero: np.ndarray | None, scheme: QuantScheme,
                 scratch: np.ndarray | None = None) -> np.ndarray:
    """x / scale (float32, in place) made what is rounded to a code: under bf16 arithmetic
    rounded to bf16, then (asymmetric: `zero` not None) plus the zero point, rounded again;
    `scratch` is round_to_bf16_inplace's. Every quantizer (reference, CPU path) calls this."""
    rounded = scheme.arithmetic == "bf16"
    if rounded:
        round_to_bf16_inplace(quotient, scratch)
    if zero is not None:
        quotient += zero
        if rounded:
            round_to_bf16_inplace(quotient, scratch)
    return quotient


def code_quotients(x: np.ndarray, scale: np.ndarray, zero: np.ndarray | None,
                   scheme: QuantScheme) -> np.ndarray:
    """`on_code_grid` of x / scale, in a new float32 array (x [..., n]; scales and zero points
    broadcast)."""
    return on_code_grid(np.divide(x, scale, dtype=np.float32), zero, scheme)


def group_extremes(x: np.ndarray, group_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) of each group of x [out, in]: two float32 [out, groups]."""
    g = grouped(x, group_size)
    return g.min(axis=-1), g.max(axis=-1)


def qparams(low: np.ndarray, high: np.ndarray, scheme: QuantScheme,
            clip: float | np.ndarray = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(bf16 scale bits, int8 zero points) of groups with these extremes, their range
    multiplied by `clip` (a number, or one per group)."""
    clip = np.asarray(clip, np.float32)
    divisor = np.float32(scheme.divisor)
    if scheme.symmetric:
        absmax = np.maximum(np.abs(low), np.abs(high)) * clip
        bits = scale_bits_of(absmax / divisor, scheme)
        return bits, np.zeros(bits.shape, np.int8)
    low = np.minimum(low, np.float32(0)) * clip
    high = np.maximum(high, np.float32(0)) * clip
    raw = round_to_bf16(round_to_bf16(high - low) / divisor)
    bits = scale_bits_of(raw, scheme)
    return bits, zero_points(low, raw, scheme)


def choose_qparams(x: np.ndarray, scheme: QuantScheme,
                   clip: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(bf16 scale bits [out, groups], zero points int8 [out, groups]) by min/max (RTN)."""
    return qparams(*group_extremes(x, scheme.group_size), scheme, clip)


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
    working buffer: the quotients, clamp, round half to even, clip; then the error)."""
    out, cols = x.shape
    g = grouped(x, scheme.group_size)
    scale = bf16_bits_to_f32(scale_bits)[..., None]
    work = code_quotients(g, scale, None if scheme.symmetric else zero[..., None], scheme)
    np.clip(work, scheme.qmin - 1 - 255, scheme.qmax + 1 + 255, out=work)
    np.rint(work, out=work)
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


def _group_sq_error(x: np.ndarray, bits: np.ndarray, zero: np.ndarray,
                    scheme: QuantScheme) -> np.ndarray:
    """float32 [out, groups]: the squared error these parameters leave in each group, as
    scale^2 * sum((code - x / scale)^2), summed in input order (equal to quantize()'s up to
    float32 rounding; a plain sequential sum so that the fast path reproduces it exactly)."""
    g = grouped(x, scheme.group_size)
    scale = bf16_bits_to_f32(bits)
    ratio = g / scale[..., None]
    work = on_code_grid(ratio.copy(), None if scheme.symmetric else zero[..., None], scheme)
    np.rint(work, out=work)
    np.clip(work, scheme.qmin, scheme.qmax, out=work)
    if not scheme.symmetric:
        work -= zero[..., None].astype(np.float32)
    work -= ratio
    np.square(work, out=work)
    return np.add.accumulate(work, axis=-1)[..., -1] * np.square(scale)


ErrorOf = Callable[[np.ndarray, np.ndarray], np.ndarray]


def search_clip(low: np.ndarray, high: np.ndarray, scheme: QuantScheme, error_of: ErrorOf
                ) -> tuple[np.ndarray, np.ndarray]:
    """--method mse: per group, the clipping ratio of MSE_GRID whose (scale bits, zero points)
    leave the least squared error (`error_of` measures it), searched coarse to fine: every
    MSE_COARSE-th ratio, then the one on each side of the best of those (7 of the 13
    measured; 99.4% of an exhaustive search's gain over RTN on the bench model). A candidate
    replaces the best only when strictly better (ties keep the larger range)."""
    ratios = np.array(MSE_GRID, np.float32)
    best = np.zeros(low.shape, np.int64)
    best_err = error_of(*qparams(low, high, scheme))

    def consider(index: np.ndarray) -> None:
        nonlocal best, best_err
        err = error_of(*qparams(low, high, scheme, ratios[index]))
        better = err < best_err
        best, best_err = np.where(better, index, best), np.where(better, err, best_err)

    for index in range(MSE_COARSE, len(MSE_GRID), MSE_COARSE):
        consider(np.full(low.shape, index))
    coarse = best
    for step in (-1, 1):
        consider(np.clip(coarse + step, 0, len(MSE_GRID) - 1))
    return qparams(low, high, scheme, ratios[best])


def mse_qparams(x: np.ndarray, scheme: QuantScheme) -> tuple[np.ndarray, np.ndarray]:
    """(scale bits, zero points) of x [out, in] chosen by search_clip."""
    low, high = group_extremes(x, scheme.group_size)
    return search_clip(low, high, scheme, lambda bits, zero: _group_sq_error(x, bits, zero,
                                                                             scheme))


def error_stats(sq_error: float, norm_sq: float, max_error: float, clipped: int,
                numel: int) -> dict[str, float]:
    """What every quantizer (reference, CPU path, kernels) reports of one Linear: relative RMS
    error (summed squared error over the input's squared norm, 0 for an all-zero input), max
    |error|, % of codes clipped, and the number of weights."""
    return {"rel_rms": math.sqrt(sq_error / norm_sq) if norm_sq else 0.0,
            "max_abs_err": float(max_error), "clipped_pct": 100.0 * clipped / max(numel, 1),
            "numel": int(numel)}


def quantize_linear(x: np.ndarray, scheme: QuantScheme) -> tuple[PackedLinear, dict[str, float]]:
    """Quantize and pack one float32 [out, in] matrix; returns it and its error statistics."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if scheme.method == "mse":
        bits, zero = mse_qparams(x, scheme)
    else:
        bits, zero = choose_qparams(x, scheme)
    result = quantize(x, bits, zero, scheme)
    packed = PackedLinear(
        packed=pack_codes(result.codes, scheme.bits), scale=bits, shape=x.shape,
        bits=scheme.bits, group_size=scheme.group_size or x.shape[1],
        zero_point=None if scheme.symmetric else pack_zero_points(zero, scheme.bits))
    flat = x.reshape(-1)
    return packed, error_stats(float(result.group_sq_error.sum()), float(np.dot(flat, flat)),
                               result.max_error, result.clipped, x.size)
