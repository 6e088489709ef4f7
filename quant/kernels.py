"""Triton kernels: integer re-quantization (dequantize -> quantize -> pack in one pass over
memory, RTN), FP8 and FP4 (NVFP4, MXFP4). The integer kernel:

One program owns BLOCK_N output channels of one quantization group. Pass 1 reads the group's
source weights (the release's int8 codes times their bf16 group scales, exact in float32, or
plain float32) and reduces absmax / min / max; pass 2 reads them again, quantizes and packs the
codes into int32 words along the input dimension, summing each group's squared error, squared
weights, largest error and clipped codes on the way. It mirrors `quant.primitives` operation for
operation (IEEE division via div_rn, round half to even, bf16 scale rounding), so its output is
bit-identical to the CPU reference; with TRITON_INTERPRET=1 it runs on CPU tensors.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import triton
import triton.language as tl

from converter.formats import E4M3_MAX, FP8Linear, PackedLinear, e4m3_to_f32, pack_zero_points
from converter.formats.pack_quantized import codes_per_word
from converter.forward.activations import nvfp4_block_scales
from quant.primitives import error_stats
from quant.schemes import QuantScheme

__all__ = ["device_matrix", "fp4_triton", "fp8_triton", "mx_exponents_torch",
           "requantize_triton"]

_MAGIC = 12582912.0  # 1.5 * 2^23: (v + M) - M rounds |v| < 2^22 to nearest even


@triton.jit
def _load_group_tile(w_ptr, ws_ptr, k, n, kmask, nmask, N, ROWS_PER_SCALE,
                     SOURCE_INT8: tl.constexpr):
    mask = kmask[:, None] & nmask[None, :]
    offsets = k[:, None] * N + n[None, :]
    if SOURCE_INT8:
        codes = tl.load(w_ptr + offsets, mask=mask, other=0).to(tl.float32)
        block = k // ROWS_PER_SCALE
        bits = tl.load(ws_ptr + block[:, None] * N + n[None, :], mask=mask, other=0)
        scale = (bits.to(tl.uint32) << 16).to(tl.float32, bitcast=True)
        return codes * scale
    else:
        return tl.load(w_ptr + offsets, mask=mask, other=0.0)


@triton.jit
def _bf16_bits(x):
    u = x.to(tl.uint32, bitcast=True)
    return (u + (0x7FFF + ((u >> 16) & 1))) >> 16


@triton.jit
def _bf16_round(x):
    u = x.to(tl.uint32, bitcast=True)
    return ((u + (0x7FFF + ((u >> 16) & 1))) & 0xFFFF0000).to(tl.float32, bitcast=True)


@triton.jit
def _requant_kernel(w_ptr, ws_ptr, packed_ptr, scale_ptr, zero_ptr, stats_ptr, clip_ptr,
                    K, N, ROWS_PER_SCALE, GROUP, WORDS, GROUPS,
                    BITS: tl.constexpr, QMIN: tl.constexpr, QMAX: tl.constexpr,
                    DIVISOR: tl.constexpr, ZERO_SCALE_BITS: tl.constexpr,
                    SYMMETRIC: tl.constexpr, SOURCE_INT8: tl.constexpr,
                    BF16_QUOTIENT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)
    group = tl.program_id(1)
    PER: tl.constexpr = 32 // BITS
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    k_start = group * GROUP
    k_end = tl.minimum(k_start + GROUP, K)

    absmax = tl.zeros((BLOCK_N,), tl.float32)
    low = tl.zeros((BLOCK_N,), tl.float32)
    high = tl.zeros((BLOCK_N,), tl.float32)
    for kk in range(k_start, k_end, BLOCK_K):
        k = kk + tl.arange(0, BLOCK_K)
        x = _load_group_tile(w_ptr, ws_ptr, k, n, k < k_end, nmask, N, ROWS_PER_SCALE,
                             SOURCE_INT8)
        absmax = tl.maximum(absmax, tl.max(tl.abs(x), axis=0))
        low = tl.minimum(low, tl.min(x, axis=0))
        high = tl.maximum(high, tl.max(x, axis=0))

    divisor = tl.full((BLOCK_N,), DIVISOR, tl.float32)
    if SYMMETRIC:
        raw_bits = _bf16_bits(tl.math.div_rn(absmax, divisor))
        zero = tl.zeros((BLOCK_N,), tl.float32)
    else:
        raw_bits = _bf16_bits(tl.math.div_rn(_bf16_round(high - low), divisor))
        raw = (raw_bits << 16).to(tl.float32, bitcast=True)
        quotient = tl.math.div_rn(low, tl.where(raw == 0, 1.0, raw))
        zero = _bf16_round(QMIN - _bf16_round(quotient))
        zero = (tl.minimum(tl.maximum(zero, QMIN), QMAX) + _MAGIC) - _MAGIC
        # low / 0: -inf (QMIN - it clamps to QMAX) for low < 0, 0 / 0 = NaN (zero point 0)
        zero = tl.where(raw == 0, tl.where(low < 0, QMAX, 0.0), zero)
    scale_bits = tl.where(raw_bits == 0, ZERO_SCALE_BITS, raw_bits)
    scale = (scale_bits << 16).to(tl.float32, bitcast=True)
    tl.store(scale_ptr + n * GROUPS + group, scale_bits.to(tl.uint16), mask=nmask)
    tl.store(zero_ptr + n * GROUPS + group, zero.to(tl.int8), mask=nmask)

    shifts = (tl.arange(0, PER) * BITS).to(tl.uint32)
    sq_err = tl.zeros((BLOCK_N,), tl.float32)
    sq_x = tl.zeros((BLOCK_N,), tl.float32)
    max_err = tl.zeros((BLOCK_N,), tl.float32)
    clipped = tl.zeros((BLOCK_N,), tl.int32)
    for kk in range(k_start, k_end, BLOCK_K):
        k = kk + tl.arange(0, BLOCK_K)
        kmask = k < k_end
        valid = kmask[:, None] & nmask[None, :]
        x = _load_group_tile(w_ptr, ws_ptr, k, n, kmask, nmask, N, ROWS_PER_SCALE,
                             SOURCE_INT8)
        ratio = tl.math.div_rn(x, scale[None, :])
        if BF16_QUOTIENT:
            ratio = _bf16_round(ratio)
        if not SYMMETRIC:
            ratio = ratio + zero[None, :]
            if BF16_QUOTIENT:
                ratio = _bf16_round(ratio)
        ratio = tl.minimum(tl.maximum(ratio, QMIN - 256.0), QMAX + 256.0)
        q = (ratio + _MAGIC) - _MAGIC
        clipped += tl.sum(tl.where(valid & ((q < QMIN) | (q > QMAX)), 1, 0), axis=0)
        q = tl.minimum(tl.maximum(q, QMIN), QMAX)
        err = tl.where(valid, (q - zero[None, :]) * scale[None, :] - x, 0.0)
        sq_err += tl.sum(err * err, axis=0)
        sq_x += tl.sum(x * x, axis=0)
        max_err = tl.maximum(max_err, tl.max(tl.abs(err), axis=0))
        offset = (q.to(tl.int32) + (1 << (BITS - 1))).to(tl.uint32)
        offset = tl.where(kmask[:, None], offset, 0)
        tiles = tl.reshape(offset, (BLOCK_K // PER, PER, BLOCK_N))
        words = tl.sum(tiles << shifts[None, :, None], axis=1)
        w = kk // PER + tl.arange(0, BLOCK_K // PER)
        wmask = (w < (k_end + PER - 1) // PER)[:, None] & nmask[None, :]
        tl.store(packed_ptr + n[None, :] * WORDS + w[:, None], words.to(tl.int32, bitcast=True),
                 mask=wmask)
    at = (n * GROUPS + group) * 3
    tl.store(stats_ptr + at, sq_err, mask=nmask)
    tl.store(stats_ptr + at + 1, sq_x, mask=nmask)
    tl.store(stats_ptr + at + 2, max_err, mask=nmask)
    tl.store(clip_ptr + n * GROUPS + group, clipped, mask=nmask)


def requantize_triton(source: torch.Tensor, source_scales: torch.Tensor | None,
                      scheme: QuantScheme, *, block_n: int = 32,
                      block_k: int = 128) -> tuple[PackedLinear, dict[str, float]]:
    """Re-quantize one matrix given in the release orientation [in, out].

    source: int8 codes [K, N] with `source_scales` bf16 bits as int16/uint16 [G0, N], or
    float32 [K, N] with source_scales None. Returns the pack-quantized Linear ([out, in]) and
    its error statistics, computed on the device in the same pass (relative RMS error, max
    |error|, % of codes clipped): only the packed result and a few numbers per group come back.
    """
    if scheme.method != "rtn":
        raise ValueError("the Triton kernel implements RTN; --method mse runs the CPU reference")
    k_rows, n_cols = source.shape
    group = scheme.group_size or k_rows
    groups = math.ceil(k_rows / group)
    words = math.ceil(k_rows * scheme.bits / 32)
    device = source.device
    packed = torch.empty((n_cols, words), dtype=torch.int32, device=device)
    scales = torch.empty((n_cols, groups), dtype=torch.int16, device=device)
    zeros = torch.empty((n_cols, groups), dtype=torch.int8, device=device)
    stats = torch.empty((n_cols, groups, 3), dtype=torch.float32, device=device)
    clips = torch.empty((n_cols, groups), dtype=torch.int32, device=device)
    int8_source = source.dtype == torch.int8
    if int8_source:
        if source_scales is None:
            raise ValueError("int8 source codes need their scales")
        rows_per_scale = k_rows // source_scales.shape[0]
        source_scales = source_scales.contiguous()
    else:
        rows_per_scale, source_scales = 1, source
    block_k = min(block_k, max(codes_per_word(scheme.bits), triton.next_power_of_2(group)))
    grid = (triton.cdiv(n_cols, block_n), groups)
    _requant_kernel[grid](source.contiguous(), source_scales, packed, scales, zeros, stats, clips,
                          k_rows, n_cols, rows_per_scale, group, words, groups,
                          BITS=scheme.bits, QMIN=scheme.qmin, QMAX=scheme.qmax,
                          DIVISOR=scheme.divisor, ZERO_SCALE_BITS=scheme.zero_scale_bits,
                          SYMMETRIC=scheme.symmetric, SOURCE_INT8=int8_source,
                          BF16_QUOTIENT=scheme.arithmetic == "bf16", BLOCK_N=block_n,
                          BLOCK_K=block_k)
    scale_bits = scales.cpu().numpy().view(np.uint16)
    zero_point = None if scheme.symmetric else pack_zero_points(zeros.cpu().numpy(),
                                                                scheme.bits)
    result = PackedLinear(packed=packed.cpu().numpy(), scale=scale_bits, shape=(n_cols, k_rows),
                          bits=scheme.bits, group_size=group, zero_point=zero_point)
    sums = stats.double().sum(dim=(0, 1))
    numel = k_rows * n_cols
    return result, error_stats(float(sums[0]), float(sums[1]),
                               float(stats[..., 2].max()) if numel else 0.0,
                               int(clips.sum()), numel)


@triton.jit
def _fp8_kernel(x_ptr, s_ptr, out_ptr, N, COLS, S_COLS, B0, B1, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < N
    row = offsets // COLS
    col = offsets % COLS
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
    scale = tl.load(s_ptr + (row // B0) * S_COLS + col // B1, mask=mask, other=1.0)
    q = tl.math.div_rn(x, scale)
    q = tl.minimum(tl.maximum(q, -448.0), 448.0)
    a = tl.abs(q)
    au = a.to(tl.uint32, bitcast=True)
    normal = ((au + (0x7FFFF + ((au >> 20) & 1))) >> 20) - 960
    subnormal = ((a * 512.0 + _MAGIC) - _MAGIC).to(tl.uint32)
    magnitude = tl.where(a >= 0.015625, normal, subnormal)
    sign = (q.to(tl.uint32, bitcast=True) >> 24) & 0x80
    tl.store(out_ptr + offsets, (magnitude | sign).to(tl.uint8), mask=mask)


def device_matrix(value: Any, device: str) -> torch.Tensor:
    """float32 [out, in] on the device of a canonical [in, out] Linear: the release's int8
    codes and bf16 scales are copied as they are (a quarter of the float32 bytes) and
    dequantized there, exactly (every code times scale fits float32)."""
    from converter.tensors import QuantizedWeight8bit, dense

    if isinstance(value, QuantizedWeight8bit):
        k, n = value.weight.shape
        groups = value.scale_groups
        codes = torch.from_numpy(np.ascontiguousarray(value.weight)).to(device)
        bits = torch.from_numpy(np.ascontiguousarray(value.scales).view(np.int16)).to(device)
        scales = bits.view(torch.bfloat16).float()
        x = codes.view(groups, k // groups, n).float() * scales.view(groups, 1, n)
        return x.view(k, n).T.contiguous()
    matrix = torch.from_numpy(np.ascontiguousarray(dense(value), np.float32))
    return matrix.to(device).T.contiguous()


def fp8_triton(matrix: np.ndarray | torch.Tensor, block: tuple[int, int] | None, *,
               device: str = "cuda", block_elems: int = 1024) -> tuple[Any, dict[str, float]]:
    """FP8 e4m3 quantization of float32 [out, in] on the device (the same bits as
    `quant.fp8.quantize_fp8`); scales and error statistics are computed there too."""
    if isinstance(matrix, torch.Tensor):
        x = matrix.to(device, torch.float32).contiguous()
    else:
        x = torch.from_numpy(np.ascontiguousarray(matrix, np.float32)).to(device)
    rows, cols = x.shape
    b0, b1 = block if block is not None else (1, cols)
    grid_rows, grid_cols = math.ceil(rows / b0), math.ceil(cols / b1)
    padded = torch.zeros((grid_rows * b0, grid_cols * b1), dtype=torch.float32, device=device)
    padded[:rows, :cols] = x.abs()
    amax = padded.view(grid_rows, b0, grid_cols, b1).amax(dim=(1, 3))
    scale = amax / E4M3_MAX
    scale = torch.where(scale == 0, torch.ones_like(scale), scale).contiguous()
    bits = torch.empty((rows, cols), dtype=torch.uint8, device=device)
    grid = (triton.cdiv(rows * cols, block_elems),)
    _fp8_kernel[grid](x, scale, bits, rows * cols, cols, grid_cols, b0, b1, BLOCK=block_elems)
    table = torch.from_numpy(e4m3_to_f32(np.arange(256))).to(device)
    per = scale.repeat_interleave(b0, 0)[:rows].repeat_interleave(b1, 1)[:, :cols]
    error = (table[bits.long()] * per - x).double()
    stats = error_stats(float(error.square().sum()), float(x.double().square().sum()),
                        float(error.abs().max()) if error.numel() else 0.0, 0, rows * cols)
    out_scale = scale.cpu().numpy() if block is not None else scale.cpu().numpy().reshape(-1, 1)
    return FP8Linear(bits.cpu().numpy(), out_scale, block), stats


@triton.jit
def _e2m1_code(q):
    """compressed-tensors' cast_to_fp4 buckets (ties to the even code), the sign bit for every
    value below zero."""
    a = tl.abs(q)
    code = ((a > 0.25).to(tl.uint8) + (a >= 0.75).to(tl.uint8) + (a > 1.25).to(tl.uint8)
            + (a >= 1.75).to(tl.uint8) + (a > 2.5).to(tl.uint8) + (a >= 3.5).to(tl.uint8)
            + (a > 5.0).to(tl.uint8))
    return code | ((q < 0.0).to(tl.uint8) << 3)


@triton.jit
def _fp4_kernel(x_ptr, per_ptr, out_ptr, PAIRS, COLS, GROUP, BLOCK: tl.constexpr):
    pair = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = pair < PAIRS
    first = pair * 2
    row, col = first // COLS, first % COLS
    per = tl.load(per_ptr + row * (COLS // GROUP) + col // GROUP, mask=mask, other=1.0)
    low = tl.math.div_rn(tl.load(x_ptr + first, mask=mask, other=0.0), per)
    high = tl.math.div_rn(tl.load(x_ptr + first + 1, mask=mask, other=0.0), per)
    tl.store(out_ptr + pair, _e2m1_code(low) | (_e2m1_code(high) << 4), mask=mask)


def mx_exponents_torch(amax: torch.Tensor) -> torch.Tensor:
    """`quant.fp4.mx_exponents` of a float32 tensor, on its device (the same integer
    operations)."""
    u = amax.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    field = ((u + (1 << 21)) >> 23) & 0xFF
    exponents = torch.where(field == 255, 255, field - 2)
    return torch.where(field == 0, 0, exponents).clamp(0, 255).to(torch.uint8)


def fp4_triton(matrix: torch.Tensor, kind: str, global_scale: float | None = None,
               arithmetic: str = "f32", *, block_elems: int = 1024
               ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """NVFP4 (`kind` "nvfp4", with its `global_scale`) or MXFP4 ("mxfp4") of float32 [out, in]
    on its device: the parts and error statistics of `quant.fp4`'s CPU path, bit for bit.
    Block scales are computed with torch on the device (`nvfp4_block_scales`: e4m3 by
    torch's cast, which rounds to nearest even as `quant.fp8.e4m3_bits` does); the kernel
    divides, rounds and packs two codes per byte."""
    x = matrix.to(torch.float32).contiguous()
    rows, cols = x.shape
    group = 16 if kind == "nvfp4" else 32
    amax = x.abs().view(rows, cols // group, group).amax(dim=-1)
    if kind == "nvfp4":
        if global_scale is None:
            raise ValueError("NVFP4 needs its global scale")
        scales = nvfp4_block_scales(amax, global_scale, arithmetic)
        per = scales.float() / torch.tensor(global_scale, dtype=torch.float32, device=x.device)
        parts = {"weight_scale": scales.view(torch.uint8).cpu().numpy(),
                 "weight_global_scale": np.array([global_scale], np.float32)}
    else:
        exponents = mx_exponents_torch(amax)
        per = torch.ldexp(torch.ones_like(amax), exponents.to(torch.int32) - 127)
        parts = {"weight_scale": exponents.cpu().numpy()}
    per = per.contiguous()
    packed = torch.empty((rows, cols // 2), dtype=torch.uint8, device=x.device)
    pairs = rows * cols // 2
    _fp4_kernel[(triton.cdiv(pairs, block_elems),)](x, per, packed, pairs, cols, group,
                                                     BLOCK=block_elems)
    codes = torch.stack((packed & 0x0F, packed >> 4), dim=-1).view(rows, cols).long()
    magnitudes = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6], device=x.device)
    values = magnitudes[codes & 7] * torch.where(codes >= 8, -1.0, 1.0)
    scale = per.repeat_interleave(group, dim=1)
    error = (values * scale - x).double()
    quotient = x / scale
    stats = error_stats(float(error.square().sum()), float(x.double().square().sum()),
                        float(error.abs().max()) if error.numel() else 0.0,
                        int((quotient.abs() > 6.0).sum()), rows * cols)
    return {"weight_packed": packed.cpu().numpy(), **parts}, stats
