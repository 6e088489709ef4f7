"""SGLang's `w8a8_int8` Linears: int8 codes with one float32 scale per output channel.

Where the release scales a Linear per output channel (one scale group: q, k, v and the
experts' `linear` / `linear_v`), its codes and scales carry over exactly (the bf16 scales are
float32 values). The Linears with several scale groups (the attention output and the experts'
`linear_1`: 8 groups) and any non-release source are quantized per channel on compressed-
tensors' int8 grid (`quant.cpu`: scale max |w| / 127.5, codes in [-128, 127]; the bf16 scale
is stored as the float32 value it is).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from converter.formats import ChannelInt8, LinearFormat
from converter.model.spec import TensorSpec
from converter.tensors import QuantizedWeight8bit, bf16_bits_to_f32, transposed
from quant.cpu import BAND, NotFinite, quantize_cpu
from quant.primitives import error_stats
from quant.requantize import ReportedLinears, check_finite, not_finite_error
from quant.schemes import QuantScheme

__all__ = ["ChannelInt8Linears"]

PER_CHANNEL = QuantScheme(8, None)


@dataclasses.dataclass(frozen=True)
class ChannelInt8Linears(ReportedLinears):
    """Linears in SGLang's w8a8_int8 (CPU only: the work is a transpose and, for two Linears
    per layer, a per-channel quantization), for the Linear `roles`."""

    roles: tuple[str, ...]
    device: str = "cpu"
    label: str = "w8a8-int8"

    @property
    def formats(self) -> dict[str, LinearFormat]:
        """w8a8_int8 for every role."""
        return dict.fromkeys(self.roles, ChannelInt8())

    def settings(self) -> dict[str, Any]:
        """What identifies this output for --resume."""
        return {"dtype": self.label, "scheme": self.label}

    def make(self, spec: TensorSpec, expert: int | None, value: Any
             ) -> tuple[dict[str, np.ndarray], dict[str, Any] | None]:
        """weight (int8 [out, in]) and weight_scale (float32 [out, 1]), with the error."""
        if isinstance(value, QuantizedWeight8bit) and value.scale_groups == 1:
            scale = bf16_bits_to_f32(value.scales).T.copy()
            check_finite(spec, expert, scale)
            stats = error_stats(0.0, _norm_sq(value), 0.0, 0, value.weight.size)
            codes = transposed(value.weight)
        else:
            try:
                packed, stats = quantize_cpu(value, PER_CHANNEL)
            except NotFinite:
                raise not_finite_error(spec, expert) from None
            codes, scale = packed.codes(), packed.scale_f32()
        stats["group_size"] = None
        return {"weight": np.ascontiguousarray(codes), "weight_scale": scale}, stats


def _norm_sq(value: QuantizedWeight8bit) -> float:
    """Squared norm of the release's per-channel Linear, a band of rows at a time (each
    column's summed squared codes times its squared scale)."""
    codes = value.weight
    column_sq = np.zeros(codes.shape[1], np.float64)
    for r0 in range(0, codes.shape[0], BAND):
        band = codes[r0:r0 + BAND].astype(np.float32)
        column_sq += np.einsum("kn,kn->n", band, band)
    return float(column_sq @ np.square(bf16_bits_to_f32(value.scales[0]).astype(np.float64)))
