"""FP8 (float8 e4m3fn) weights for Hopper serving: compressed-tensors `float-quantized`.

`fp8`: one float32 scale per output channel (vLLM's W8A8-FP8 with dynamic per-token
activations); `fp8-block`: one scale per 128 x 128 block (DeepSeek-V3's layout, dynamic
group-128 activations). Scales are max |w| / 448 (1 where that is 0: an all-zero channel or
block, or one so small that the division underflows); codes are w / scale (IEEE division),
clamped to +-448 and rounded to nearest even. Three implementations give the same bits:
`quantize_fp8`, the numpy reference (its `e4m3_bits` is written from the format's definition;
tests check it against torch's `float8_e4m3fn` cast); `quantize_fp8_cpu`, the CPU path, which
works band by band in the source's orientation and rounds through a 64K-entry table of the
reference's results; and the Triton kernel in `quant.kernels`, which rounds with integer
operations (Triton's own fp8 cast is not round-to-nearest-even under its interpreter).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np

from converter.formats import (
    E4M3_MAX,
    FloatQuantized,
    FP8Linear,
    LinearFormat,
    e4m3_to_f32,
    expand_scale,
)
from converter.model.spec import TensorSpec
from converter.tensors import rounding_table_index, top16_floats, transposed
from quant.cpu import BAND, NotFinite, SourceRows
from quant.primitives import error_stats
from quant.requantize import ReportedLinears, not_finite_error

__all__ = ["FP8Linears", "e4m3_bits", "fp8_scales", "quantize_fp8", "quantize_fp8_cpu"]


def e4m3_bits(x: np.ndarray) -> np.ndarray:
    """float32 (already within +-448) -> e4m3fn bits, round to nearest even: the reference."""
    x = np.ascontiguousarray(x, np.float32)
    u = x.view(np.uint32)
    sign = ((u >> 24) & 0x80).astype(np.uint8)
    a = np.abs(x)
    au = a.view(np.uint32).astype(np.int64)
    normal = (au + 0x7FFFF + ((au >> 20) & 1)) >> 20
    normal = normal - ((127 - 7) << 3)
    subnormal = np.rint(a * np.float32(512)).astype(np.int64)  # units of 2^-9
    magnitude = np.where(a >= np.float32(2.0**-6), normal, subnormal)
    return (magnitude.astype(np.uint8) | sign).astype(np.uint8)


def fp8_scales(x: np.ndarray, block: tuple[int, int] | None) -> np.ndarray:
    """float32 scales of [out, in] weights: max |w| / 448 per channel [out, 1] or per block."""
    a = np.abs(np.asarray(x, np.float32))
    if block is None:
        amax = a.max(axis=1, keepdims=True)
    else:
        out, cols = a.shape
        rows, width = math.ceil(out / block[0]), math.ceil(cols / block[1])
        padded = np.zeros((rows * block[0], width * block[1]), np.float32)
        padded[:out, :cols] = a
        amax = padded.reshape(rows, block[0], width, block[1]).max(axis=(1, 3))
    return _scale_of(amax)


def _scale_of(amax: np.ndarray) -> np.ndarray:
    """max |w| / 448, or 1 where that is 0 (all zero, or so small the division underflows)."""
    scale = amax / np.float32(E4M3_MAX)
    return np.where(scale == 0, np.float32(1), scale).astype(np.float32)


def quantize_fp8(x: np.ndarray, block: tuple[int, int] | None) -> tuple[FP8Linear, dict]:
    """The reference: float32 [out, in] -> the FP8 Linear and its error statistics."""
    x = np.ascontiguousarray(x, np.float32)
    scale = fp8_scales(x, block)
    per = np.ascontiguousarray(expand_scale(scale, x.shape, block))
    bits = e4m3_bits(np.clip(x / per, -E4M3_MAX, E4M3_MAX))
    error = e4m3_to_f32(bits) * per - x
    stats = error_stats(float(np.square(error, dtype=np.float64).sum()),
                        float(np.dot(x.reshape(-1), x.reshape(-1))),
                        float(np.abs(error).max()) if error.size else 0.0, 0, x.size)
    return FP8Linear(bits, scale, block), stats


@functools.cache
def _rounding_table() -> np.ndarray:
    """e4m3 bits (the reference's, clamped to +-448) by `rounding_table_index`: every rounding
    position e4m3 has lies above bit 16, so the lookup is the rounding of the float itself."""
    return e4m3_bits(np.clip(top16_floats(), -E4M3_MAX, E4M3_MAX))


def _round_to_e4m3(ratio: np.ndarray, table: np.ndarray) -> np.ndarray:
    """e4m3 bits of finite float32 values (clamped to +-448), through the rounding table."""
    return table.take(rounding_table_index(ratio))


def quantize_fp8_cpu(value: Any, block: tuple[int, int] | None) -> tuple[FP8Linear, dict]:
    """The CPU path: one canonical [in, out] Linear (the release's int8 or any dense value) to
    FP8, bit-identical to `quantize_fp8` on its transpose, with its error statistics (relative
    RMS summed per band, so equal to the reference's to rounding). Raises NotFinite."""
    source = SourceRows(value, block[1] if block else None)
    k, n = source.rows, source.cols
    with np.errstate(over="ignore", invalid="ignore"):
        low, high = source.extremes()
        amax = np.maximum(np.abs(low), np.abs(high))  # [input blocks, out]
        if not np.isfinite(amax).all():
            raise NotFinite
    if block is not None:
        out_blocks = math.ceil(n / block[0])
        padded = np.zeros((amax.shape[0], out_blocks * block[0]), np.float32)
        padded[:, :n] = amax
        amax = padded.reshape(amax.shape[0], out_blocks, block[0]).max(axis=-1)
    scale = _scale_of(amax).T
    table, values = _rounding_table(), e4m3_to_f32(np.arange(256, dtype=np.uint8))
    bits = np.empty((k, n), np.uint8)
    rows = np.empty((min(BAND, k), n), np.float32)
    work = np.empty_like(rows)
    sq_error = norm_sq = max_error = 0.0
    for g, r0, r1 in source.pieces:
        per = scale[:, 0] if block is None else np.repeat(scale[:, g], block[0])[:n]
        x = source.fill(r0, r1, 0, n, rows[:r1 - r0])
        piece = _round_to_e4m3(np.divide(x, per, out=work[:r1 - r0]), table)
        bits[r0:r1] = piece
        error = values.take(piece, out=work[:r1 - r0])
        error *= per
        error -= x
        sq_error += np.einsum("ij,ij->j", error, error).sum(dtype=np.float64)
        norm_sq += np.einsum("ij,ij->j", x, x).sum(dtype=np.float64)
        if error.size:
            max_error = max(max_error, float(error.max()), -float(error.min()))
    stats = error_stats(float(sq_error), float(norm_sq), max_error, 0, k * n)
    return FP8Linear(transposed(bits), scale, block), stats


@dataclasses.dataclass(frozen=True)
class FP8Linears(ReportedLinears):
    """The Linear `roles` re-quantized to FP8 e4m3 (per channel, or per block)."""

    roles: tuple[str, ...]
    block: tuple[int, int] | None = None
    device: str = "cpu"

    @property
    def label(self) -> str:
        """fp8-channel or fp8-block128x128."""
        return "fp8-channel" if self.block is None else f"fp8-block{self.block[0]}x{self.block[1]}"

    @property
    def formats(self) -> dict[str, LinearFormat]:
        """float-quantized, float32 scales, for every role."""
        return dict.fromkeys(self.roles, FloatQuantized(self.block))

    def settings(self) -> dict[str, Any]:
        """What identifies this output for --resume."""
        return {"dtype": self.label, "scheme": self.label}

    def make(self, spec: TensorSpec, expert: int | None, value: Any
             ) -> tuple[dict[str, np.ndarray], dict[str, Any] | None]:
        """weight (e4m3 bits) and weight_scale of one Linear, with its error statistics."""
        if self.device == "cuda":
            import torch

            from quant.kernels import device_matrix, fp8_triton

            matrix = device_matrix(value, "cuda")
            if not bool(torch.isfinite(matrix).all()):
                raise not_finite_error(spec, expert)
            linear, stats = fp8_triton(matrix, self.block)
        else:
            try:
                linear, stats = quantize_fp8_cpu(value, self.block)
            except NotFinite:
                raise not_finite_error(spec, expert) from None
        stats["group_size"] = None
        return {"weight": linear.bits, "weight_scale": linear.scale}, stats
