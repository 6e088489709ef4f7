"""Activation quantization as a W4A4 checkpoint is served, simulated in the forward: NVFP4
inputs (compressed-tensors' dynamic "local" strategy, `input_global_scale` from calibration):
per token, each run of 16 inputs gets the e4m3 scale clamp(g * amax16 / 6, +-448) (an exact
zero becomes 0.125), and the inputs are rounded to e2m1 at x / (scale / g), then multiplied
back: the same arithmetic as the weights' (`quant.fp4`), on the activations. The block-scale
rule in torch (`nvfp4_block_scales`) also serves the FP4 Triton kernel."""

from __future__ import annotations

import torch

from converter.formats.float_quantized import E4M3_MAX
from converter.formats.fp4 import ABOVE, E2M1_MAX, MAGNITUDES
from converter.formats.nvfp4 import E4M3_EPS_BITS, NVFP4_GROUP

__all__ = ["nvfp4_activations", "nvfp4_block_scales"]


def nvfp4_block_scales(amax: torch.Tensor, global_scale: float,
                       arithmetic: str = "f32") -> torch.Tensor:
    """e4m3 scales (float8_e4m3fn) of NVFP4 blocks with max |x| `amax` (float32) under
    `global_scale`, as compressed-tensors' calculate_qparams makes them: amax / 6 (rounded to
    bf16 under bf16 arithmetic) times the global scale, clamped to +-448 and rounded to
    nearest even by torch's cast; an exact zero becomes 0.125. The forward's activations and
    the FP4 Triton kernel's weights both take their scales from here."""
    local = amax / E2M1_MAX
    if arithmetic == "bf16":
        local = local.to(torch.bfloat16).float()
    g = torch.tensor(global_scale, dtype=torch.float32, device=amax.device)
    bits = (local * g).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).view(torch.uint8)
    bits = torch.where(bits == 0, torch.full_like(bits, E4M3_EPS_BITS), bits)
    return bits.view(torch.float8_e4m3fn)


def nvfp4_activations(x: torch.Tensor, global_scale: float) -> torch.Tensor:
    """x [..., in] as NVFP4 with global scale `global_scale`, dequantized (x's dtype)."""
    groups = x.float().reshape(-1, NVFP4_GROUP)
    scale = nvfp4_block_scales(groups.abs().amax(dim=-1, keepdim=True), global_scale)
    per = scale.float() / torch.tensor(global_scale, dtype=torch.float32, device=x.device)
    quotient = groups / per
    above = torch.as_tensor(ABOVE, device=x.device)
    magnitude = torch.as_tensor(MAGNITUDES, device=x.device)[
        torch.bucketize(quotient.abs(), above, right=False)]
    values = torch.where(quotient < 0, -magnitude, magnitude) * per
    return values.reshape(x.shape).to(x.dtype)
