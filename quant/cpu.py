"""The CPU quantizer: the reference's arithmetic (`quant.primitives`) run where it is cheap.

The reference works on a float32 [out, in] matrix: a transposed float32 copy of the source
and a dozen full passes over it. Here the same operations run in the source's own [in, out]
orientation, a band of rows at a time, so the passes (dequantize, divide, round, clip, error)
stay in the cache and the only transpose is of the 1-byte codes:

- group extremes come from the release's int8 codes (min and max code times the scale: exact,
  every such product fits float32);
- clipping is counted and applied only in the groups whose rounded extremes leave the code
  range (rounding is monotone, so no other element can);
- `--method mse` measures each candidate's error group by group with the reference's
  operations, its sum over a group's elements taken in input order as the reference takes it,
  so the search picks the same clipping ratios;
- every element sees the reference's operations in the reference's order, so codes, scales,
  zero points, the clipped count and the max error are bit-identical to it. The squared error
  and the norm of the report are summed per band, then in float64, so the relative RMS error
  agrees with the reference's to rounding (tests: 1e-6 relative).

`tests/test_quant_cpu.py` checks all of it against the reference.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from converter.formats import PackedLinear, pack_codes, pack_zero_points
from converter.layouts.linears import CanonicalRows
from converter.tensors import bf16_bits_to_f32, transposed
from quant.primitives import code_quotients, error_stats, on_code_grid, qparams, search_clip
from quant.schemes import QuantScheme

__all__ = ["BAND", "NotFinite", "SourceRows", "quantize_cpu"]

BAND = 128  # input rows per piece
MSE_BAND = 1 << 19  # at most this many elements of a group's columns at once in the mse search
MSE_KEEP = 256 << 20  # the mse search keeps a float32 copy of matrices up to this size


class NotFinite(ValueError):
    """NaN or Inf among the weights."""


class SourceRows(CanonicalRows):
    """A canonical [in, out] Linear read as float32 a band of rows at a time, in pieces that
    never cross a group of `group` input rows (None: one group) or a release scale block."""

    def __init__(self, value: Any, group: int | None) -> None:
        super().__init__(value)
        self.rows, self.cols = self.shape
        self.group = group or self.rows
        self.groups = math.ceil(self.rows / self.group)
        cuts = sorted({*range(0, self.rows, self.group), *range(0, self.rows, self.block),
                       *range(0, self.rows, BAND), self.rows})
        # (group, r0, r1): pieces within one group and one scale block
        self.pieces = [(r0 // self.group, r0, r1) for r0, r1 in itertools.pairwise(cuts)]

    def extremes(self) -> tuple[np.ndarray, np.ndarray]:
        """Per group and column, the min and max weight: two float32 [groups, out]."""
        low = np.full((self.groups, self.cols), np.inf, np.float32)
        high = np.full((self.groups, self.cols), -np.inf, np.float32)
        for g, r0, r1 in self.pieces:
            if self.codes is None:
                lo, hi = self.full[r0:r1].min(axis=0), self.full[r0:r1].max(axis=0)
            else:
                scale = self.scales[r0 // self.block]
                lo = self.codes[r0:r1].min(axis=0).astype(np.float32) * scale
                hi = self.codes[r0:r1].max(axis=0).astype(np.float32) * scale
                lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)  # a negative scale swaps them
            np.minimum(low[g], lo, out=low[g])
            np.maximum(high[g], hi, out=high[g])
        return low, high


class _GroupErrors:
    """The mse search's measure: each group's squared error under candidate parameters, as
    the reference's `_group_sq_error` computes it, one group and band of columns at a time."""

    def __init__(self, source: SourceRows, scheme: QuantScheme) -> None:
        self.source, self.scheme = source, scheme
        bands = math.ceil(source.cols * min(source.group, source.rows) / MSE_BAND)
        self.width = math.ceil(source.cols / bands)
        shape = (min(source.group, source.rows), min(self.width, source.cols))
        self.ratio, self.work = np.empty(shape, np.float32), np.empty(shape, np.float32)
        self.scratch = np.empty(shape, np.uint32)
        if source.rows * source.cols * 4 <= MSE_KEEP:  # keep the float32 matrix
            self.weights: np.ndarray | None = source.fill(0, source.rows)
        else:  # or fill each group's rows again for every candidate
            self.weights, self.x = None, np.empty(shape, np.float32)

    def _rows(self, g: int, c0: int, c1: int) -> np.ndarray:
        """Group g's rows, columns [c0, c1), as float32."""
        source = self.source
        top = g * source.group
        bottom = min(top + source.group, source.rows)
        if self.weights is not None:
            return self.weights[top:bottom, c0:c1]
        return source.fill(top, bottom, c0, c1, self.x[:bottom - top, :c1 - c0])

    def __call__(self, bits: np.ndarray, zero: np.ndarray) -> np.ndarray:
        source, scheme = self.source, self.scheme
        errors = np.empty(bits.shape, np.float32)
        for c0 in range(0, source.cols, self.width):
            c1 = min(c0 + self.width, source.cols)
            for g in range(source.groups):
                x = self._rows(g, c0, c1)
                scale = bf16_bits_to_f32(bits[g, c0:c1])
                rows, cols = x.shape
                ratio = np.divide(x, scale, out=self.ratio[:rows, :cols])
                work = self.work[:rows, :cols]
                scratch = self.scratch[:rows, :cols]
                np.copyto(work, ratio)
                shift = None if scheme.symmetric else zero[g, c0:c1].astype(np.float32)
                on_code_grid(work, shift, scheme, scratch)
                np.rint(work, out=work)
                np.clip(work, scheme.qmin, scheme.qmax, out=work)
                if shift is not None:
                    work -= shift
                work -= ratio
                np.square(work, out=work)
                errors[g, c0:c1] = work.sum(axis=0) * np.square(scale)
        return errors


def _encode(source: SourceRows, extremes: tuple[np.ndarray, np.ndarray], bits: np.ndarray,
            zero: np.ndarray, scheme: QuantScheme) -> tuple[PackedLinear, dict[str, Any]]:
    """Codes with the chosen parameters, packed, and the error statistics."""
    k, n = source.rows, source.cols
    scale = bf16_bits_to_f32(bits)
    zero_f = zero.astype(np.float32)
    low, high = extremes
    shift = None if scheme.symmetric else zero
    with np.errstate(over="ignore"):
        spills = ((np.rint(code_quotients(high, scale, shift, scheme)) > scheme.qmax) |
                  (np.rint(code_quotients(low, scale, shift, scheme)) < scheme.qmin))
    codes = np.empty((k, n), np.int8)
    sq_error = np.zeros((source.groups, n), np.float64)
    norm_sq = 0.0
    max_error = 0.0
    clipped = 0
    rows = np.empty((min(BAND, k), n), np.float32)
    work = np.empty_like(rows)
    scratch = np.empty(rows.shape, np.uint32)
    for g, r0, r1 in source.pieces:
        x = source.fill(r0, r1, 0, n, rows[:r1 - r0])
        w = np.divide(x, scale[g], out=work[:r1 - r0])
        on_code_grid(w, None if scheme.symmetric else zero_f[g], scheme, scratch[:r1 - r0])
        np.rint(w, out=w)
        spill = np.flatnonzero(spills[g])
        if spill.size:
            whole = spill.size > n // 4  # past that, a pass over all columns is cheaper
            part = w if whole else w[:, spill]
            clipped += int(np.count_nonzero(part < scheme.qmin) +
                           np.count_nonzero(part > scheme.qmax))
            if whole:
                np.clip(w, scheme.qmin, scheme.qmax, out=w)
            else:
                w[:, spill] = np.clip(part, scheme.qmin, scheme.qmax)
        codes[r0:r1] = w
        if not scheme.symmetric:
            w -= zero_f[g]
        w *= scale[g]
        w -= x
        sq_error[g] += np.einsum("ij,ij->j", w, w)
        norm_sq += float(np.einsum("ij,ij->j", x, x).sum(dtype=np.float64))
        if w.size:
            max_error = max(max_error, float(w.max()), -float(w.min()))
    packed = PackedLinear(
        packed=pack_codes(transposed(codes), scheme.bits), scale=np.ascontiguousarray(bits.T),
        shape=(n, k), bits=scheme.bits, group_size=source.group,
        zero_point=None if scheme.symmetric else pack_zero_points(zero.T, scheme.bits))
    return packed, error_stats(float(sq_error.sum()), norm_sq, max_error, clipped, k * n)


def quantize_cpu(value: Any, scheme: QuantScheme) -> tuple[PackedLinear, dict[str, Any]]:
    """Quantize one canonical [in, out] Linear (the release's int8 or any dense value) on the
    CPU: the packed Linear and its error statistics. Raises NotFinite for NaN or Inf."""
    source = SourceRows(value, scheme.group_size)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        low, high = source.extremes()
        if not (np.isfinite(low).all() and np.isfinite(high).all()):
            raise NotFinite
        if scheme.method == "mse":
            bits, zero = search_clip(low, high, scheme, _GroupErrors(source, scheme))
        else:
            bits, zero = qparams(low, high, scheme)
        return _encode(source, (low, high), bits, zero, scheme)
