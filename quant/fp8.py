"""FP8 (float8 e4m3fn) weights for Hopper serving: compressed-tensors `float-quantized`.

`fp8`: one float32 scale per output channel (vLLM's W8A8-FP8 with dynamic per-token
activations); `fp8-block`: one scale per 128 x 128 block (DeepSeek-V3's layout, dynamic
group-128 activations). Scales are max |w| / 448 (1 where a channel or block is all zero); codes
are w / scale (IEEE division), clamped to +-448 and rounded to nearest even. Three
implementations give the same bits: `e4m3_bits`, the numpy reference written from the format's
definition; `quantize_fp8`, torch's `float8_e4m3fn` cast (the CPU path); and the Triton kernel
in `quant.kernels`, which does the rounding with integer operations (Triton's own fp8 cast is not
round-to-nearest-even under its interpreter).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from converter.compressed import FP8Linear, LinearFormat, e4m3_to_f32, expand_scale
from converter.linears import dense_transposed
from converter.spec import LINEAR_ROLES, TensorSpec
from quant.requantize import ReportedLinears, check_finite

__all__ = ["E4M3_MAX", "FP8Linears", "e4m3_bits", "fp8_scales", "quantize_fp8"]

E4M3_MAX = 448.0


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
    scale = amax / np.float32(E4M3_MAX)
    return np.where(amax == 0, np.float32(1), scale).astype(np.float32)


def quantize_fp8(x: np.ndarray, block: tuple[int, int] | None) -> tuple[FP8Linear, dict]:
    """Quantize float32 [out, in] with torch's e4m3fn cast; the Linear and its statistics."""
    import torch

    x = np.ascontiguousarray(x, np.float32)
    scale = fp8_scales(x, block)
    per = np.ascontiguousarray(expand_scale(scale, x.shape, block))
    ratio = torch.from_numpy(x) / torch.from_numpy(per)
    bits = ratio.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
    linear = FP8Linear(bits, scale, block)
    error = e4m3_to_f32(bits) * per - x
    norm = float(np.dot(x.reshape(-1), x.reshape(-1)))
    stats = {"rel_rms": math.sqrt(float(np.square(error, dtype=np.float64).sum()) / norm)
             if norm else 0.0, "max_abs_err": float(np.abs(error).max()) if error.size else 0.0,
             "clipped_pct": 0.0, "numel": int(x.size)}
    return linear, stats


@dataclasses.dataclass(frozen=True)
class FP8Linears(ReportedLinears):
    """Linears re-quantized to FP8 e4m3 (per channel, or per block)."""

    block: tuple[int, int] | None = None
    device: str = "cpu"

    @property
    def label(self) -> str:
        """fp8-channel or fp8-block128x128."""
        return "fp8-channel" if self.block is None else f"fp8-block{self.block[0]}x{self.block[1]}"

    @property
    def formats(self) -> dict[str, LinearFormat]:
        """float-quantized, float32 scales, for every role."""
        return dict.fromkeys(LINEAR_ROLES, LinearFormat("fp8", "F32", 8, None, True, self.block))

    def settings(self) -> dict[str, Any]:
        """What identifies this output for --resume."""
        return {"dtype": self.label, "scheme": self.label}

    def make(self, spec: TensorSpec, expert: int | None, value: Any
             ) -> tuple[dict[str, np.ndarray], dict[str, Any] | None]:
        """weight (e4m3 bits) and weight_scale of one Linear, with its error statistics."""
        matrix = dense_transposed(value)
        check_finite(spec, expert, matrix)
        if self.device == "cuda":
            from quant.kernels import fp8_triton

            linear, stats = fp8_triton(matrix, self.block)
        else:
            linear, stats = quantize_fp8(matrix, self.block)
        stats["group_size"] = None
        return {"weight": linear.bits, "weight_scale": linear.scale}, stats
