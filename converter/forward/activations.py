"""Activation quantization as a W4A4 checkpoint is served, simulated in the forward: NVFP4
inputs (compressed-tensors' dynamic "local" strategy, `input_global_scale` from calibration):
per token, each run of 16 inputs gets the e4m3 scale clamp(g * amax16 / 6, +-448) (an exact
zero becomes 0.125), and the inputs are rounded to e2m1 at x / (scale / g), then multiplied
back: the same arithmetic as the weights' (`quant.fp4`), on the activations."""

from __future__ import annotations

import torch

from converter.formats.float_quantized import E4M3_MAX
from converter.formats.fp4 import ABOVE, E2M1_MAX, MAGNITUDES
from converter.formats.nvfp4 import NVFP4_GROUP

__all__ = ["nvfp4_activations"]

E4M3_EPS = 0.125  # what a block scale of exactly zero becomes


def nvfp4_activations(x: torch.Tensor, global_scale: float) -> torch.Tensor:
    """x [..., in] as NVFP4 with global scale `global_scale`, dequantized (x's dtype)."""
    groups = x.float().reshape(-1, NVFP4_GROUP)
    g = torch.tensor(global_scale, dtype=torch.float32, device=x.device)
    local = groups.abs().amax(dim=-1, keepdim=True) / E2M1_MAX
    scale = (local * g).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).float()
    scale = torch.where(scale == 0, torch.full_like(scale, E4M3_EPS), scale)
    per = scale / g
    quotient = groups / per
    above = torch.as_tensor(ABOVE, device=x.device)
    magnitude = torch.as_tensor(MAGNITUDES, device=x.device)[
        torch.bucketize(quotient.abs(), above, right=False)]
    values = torch.where(quotient < 0, -magnitude, magnitude) * per
    return values.reshape(x.shape).to(x.dtype)
