"""x @ W for a stored Linear without making W whole: the weight is dequantized a band of rows
at a time (exactly: int8 x scale, or a pack-quantized Linear's codes x scale) into one reused
buffer, and the products accumulate in place. The bands depend only on the shape, so every
source of the same weights sums in the same order and gives the same bits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from converter.formats import PackedLinear
from converter.formats.pack_quantized import codes_per_word
from converter.tensors import QuantizedWeight8bit, bf16_bits_to_f32

__all__ = ["BAND_ELEMENTS", "bands", "fill_band", "packed_bands", "packed_rows", "packed_unit"]

# float32 elements of a weight matrix dequantized at a time (64 MB), into one reused buffer: a
# whole real expert matrix would be an 805 MB fresh allocation, 24 of them per layer.
BAND_ELEMENTS = 1 << 24


def bands(rows: int, cols: int, groups: int) -> Iterator[tuple[int, int, int]]:
    """(first row, end row, scale group) of the row bands a [rows, cols] weight matrix is
    multiplied in. No band crosses a scale group, and the bands depend only on the shape, so
    every source of the same weights (the release's int8, a dense copy of it) sums in the same
    order and gives the same bits."""
    per_group = rows // groups
    step = max(1, min(per_group, BAND_ELEMENTS // max(cols, 1)))
    for group in range(groups):
        end = (group + 1) * per_group
        for first in range(group * per_group, end, step):
            yield first, min(first + step, end), group


def fill_band(buffer: np.ndarray, value: Any, first: int, end: int, group: int) -> np.ndarray:
    """Rows first:end of a weight matrix as exact float32 ([in, out]), written into `buffer`:
    the release's int8 codes times their group's bf16 scale, or a dense matrix's rows."""
    cols = value.shape[1]
    band = buffer[:(end - first) * cols].reshape(end - first, cols)
    if isinstance(value, QuantizedWeight8bit):
        np.multiply(value.weight[first:end], bf16_bits_to_f32(value.scales[group]), out=band)
    else:
        np.copyto(band, value[first:end])
    return band


def packed_unit(value: PackedLinear) -> int:
    """Input columns a band of a pack-quantized Linear is made of: a scale group, or (one scale
    per output channel) a packed word."""
    return value.group_size if value.scale.shape[1] > 1 else codes_per_word(value.bits)


def packed_bands(value: PackedLinear) -> Iterator[tuple[int, int]]:
    """Row bands of a pack-quantized Linear (canonical rows = its input columns): whole
    `packed_unit`s, about BAND_ELEMENTS elements each."""
    cols, rows = value.shape
    unit = packed_unit(value)
    step = max(unit, BAND_ELEMENTS // max(cols, 1) // unit * unit)
    for first in range(0, rows, step):
        yield first, min(first + step, rows)


def packed_rows(value: PackedLinear, first: int, end: int) -> torch.Tensor:
    """Canonical rows first:end of a pack-quantized Linear, transposed ([out, end - first]
    float32; `first` on a `packed_unit` boundary): the values of `PackedLinear.dequantize`
    bit for bit, decoded in torch, whose elementwise kernels run on every core and allocate no
    page-faulting numpy temporaries."""
    per_word = codes_per_word(value.bits)
    raw = torch.from_numpy(np.ascontiguousarray(
        value.packed[:, first // per_word:-(-end // per_word)]).view(np.uint8))
    if value.bits == 8:
        codes = (raw ^ 0x80).view(torch.int8)
    else:
        codes = torch.stack([(raw & 0x0F).to(torch.int8), (raw >> 4).to(torch.int8)],
                            dim=-1).reshape(raw.shape[0], -1) - 8
    values = codes[:, :end - first].float()
    scale = torch.from_numpy(value.scale_f32())
    zero = (torch.from_numpy(value.zero_points().astype(np.float32))
            if value.zero_point is not None else None)
    if value.scale.shape[1] == 1:  # one scale per output channel
        if zero is not None:
            values -= zero
        return values.mul_(scale)
    grouped = values.view(values.shape[0], -1, value.group_size)
    window = slice(first // value.group_size, end // value.group_size)
    if zero is not None:
        grouped -= zero[:, window, None]
    grouped.mul_(scale[:, window, None])
    return values
