"""Turn a reader's canonical values into the arrays of one output tensor (layout math only).

Dense Linears are dequantized exactly (int8 x scale in float32) and transposed to `[out, in]`;
bf16 rounds that once, to nearest even, as the release's bf16 run did. int8 output re-packs the
release's own codes and repeats each of its scales over the groups it covers: nothing is lost.
"""

from __future__ import annotations

import collections
import threading
from typing import Any

import numpy as np

from converter.compressed import PackedLinear, pack_codes
from converter.errors import UsageError
from converter.layouts import CheckpointReader
from converter.layouts.hf import LinearFormat, OutTensor
from converter.names import EXPERT_ROLES
from converter.spec import TensorSpec
from converter.tensors import (
    QuantizedWeight8bit,
    bf16_bits_to_f32,
    dense,
    f32_to_bf16_bits,
    transposed,
)

__all__ = ["Producer", "dense_transposed"]

_ROWS = 128
_KEEP = 4


def dense_transposed(value: Any) -> np.ndarray:
    """float32 [out, in] of a canonical [in, out] matrix, dequantized without extra copies."""
    if isinstance(value, QuantizedWeight8bit):
        k, n = value.weight.shape
        groups = value.scale_groups
        block = k // groups
        scales = bf16_bits_to_f32(value.scales)
        out = np.empty((n, k), np.float32)
        for g in range(groups):
            rows = slice(g * block, (g + 1) * block)
            np.multiply(value.weight[rows].T, scales[g][:, None], out=out[:, rows],
                        dtype=np.float32)
        return out
    return np.ascontiguousarray(dense(value).T)


def _to_bf16(values: np.ndarray) -> np.ndarray:
    out = np.empty(values.shape, np.uint16)
    for start in range(0, values.shape[0], _ROWS):
        out[start:start + _ROWS] = f32_to_bf16_bits(values[start:start + _ROWS])
    return out


class Producer:
    """Computes output tensors from a reader, caching the last source value it read."""

    def __init__(self, reader: CheckpointReader, specs: dict[str, TensorSpec],
                 formats: dict[str, LinearFormat]) -> None:
        self.reader, self.formats = reader, formats
        self._specs = {(s.role, s.layer): s for s in specs.values()}
        self._recent: collections.OrderedDict[tuple[str, int | None], Any] = (
            collections.OrderedDict())
        self._lock = threading.Lock()

    def source(self, spec: TensorSpec, expert: int | None) -> Any:
        """The canonical value (or one expert's slice) of `spec`. The last few Linears are kept
        (their parts are read together); nothing else is, so no mapped file stays alive."""
        key = (spec.name, expert)
        with self._lock:
            if key in self._recent:
                return self._recent[key]
        value = (self.reader.read_expert(spec, expert) if expert is not None
                 else self.reader.read(spec))
        if spec.role not in self.formats:
            return value
        with self._lock:
            self._recent[key] = value
            while len(self._recent) > _KEEP:
                self._recent.popitem(last=False)
        return value

    def summary(self) -> dict[str, Any]:
        """Anything to record in the manifest beside the tensors' hashes."""
        return {}

    def __call__(self, out: OutTensor) -> np.ndarray:
        """The array of one output tensor."""
        origin = out.origin
        spec = self._specs[(origin.role, origin.layer)]
        value = self.source(spec, origin.expert if origin.role in EXPERT_ROLES else None)
        if origin.role == "router":
            return dense_transposed(value)
        if origin.part == "weight" and origin.role in self.formats:
            matrix = dense_transposed(value)
            return _to_bf16(matrix) if out.dtype == "BF16" else matrix
        if origin.role in self.formats:
            return self.packed_part(spec, value, origin.part, self.formats[origin.role])
        return dense(value)

    def packed_part(self, spec: TensorSpec, value: Any, part: str,
                    fmt: LinearFormat) -> np.ndarray:
        """One part of a losslessly re-packed 8-bit Linear."""
        if isinstance(value, PackedLinear) and (value.bits, value.group_size) == (
                fmt.bits, fmt.group_size or value.shape[1]) and value.zero_point is None:
            return {"weight_packed": value.packed, "weight_scale": value.scale,
                    "weight_shape": np.array(value.shape, np.int64)}[part]
        if not isinstance(value, QuantizedWeight8bit):
            raise UsageError(f"{spec.name}: int8 output keeps the release's codes and scales, "
                             f"but the source holds {type(value).__name__} weights; use "
                             "`grok1 quantize` to re-quantize")
        k, n = value.weight.shape
        if part == "weight_shape":
            return np.array([n, k], np.int64)
        if part == "weight_packed":
            return pack_codes(transposed(value.weight), 8)
        per_block = (k // value.scale_groups) // (fmt.group_size or k)
        return np.ascontiguousarray(np.repeat(value.scales.T, per_block, axis=1))
