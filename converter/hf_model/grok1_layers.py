"""Grok-1's layer math in torch: the one definition both the toolchain's streamed forward and the
transformers model shipped in every Hugging Face output use.

Faithful to xai-org/grok-1's `model.py`: RMSNorm computed in float32, RoPE in rotate-half layout,
attention logits scaled, then soft-capped as cap * tanh(x / cap), softmax router whose top-k
probabilities are the gates (not renormalised), tanh-approximated GELU on the gate projection.
This file is copied next to `modeling_grok1.py` in every output and imports nothing but torch.
"""

from __future__ import annotations

import torch

__all__ = ["attend", "gated_gelu", "rms_norm", "rope", "route", "unembed_logits"]

MASKED = -1e30  # the attention logit of a masked key (finite: a fully masked row stays finite)


def rms_norm(x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """x * rsqrt(mean(x^2) + eps) * scale, in float32, returned in x's dtype."""
    xf = x.float()
    normed = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
    return (normed * scale.float()).to(x.dtype)


def rope(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary embedding, rotate-half layout, of x [B, T, H, D] at `positions` ([T] or [B, T])."""
    d = x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float32, device=x.device) / d))
    phase = positions.to(device=x.device, dtype=torch.float32)[..., None] * inv_freq
    phase = torch.cat([phase, phase], dim=-1)
    phase = phase[None, :, None, :] if phase.dim() == 2 else phase[:, :, None, :]
    rotated = torch.cat([-x[..., d // 2:], x[..., : d // 2]], dim=-1)
    return (x.float() * phase.cos() + rotated.float() * phase.sin()).to(x.dtype)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float,
           softcap: float) -> torch.Tensor:
    """Grouped-query attention: q [B, T, KV, G, D] (G query heads per key head), k and v
    [B, S, KV, D], mask [B, T, S] (True where query t may see key s); returns [B, T, KV, G, D].
    Logits are float32, scaled, then soft-capped; the probabilities are cast to q's dtype."""
    logits = torch.einsum("bthgd,bshd->bhgts", q, k).float() * scale
    logits = softcap * torch.tanh(logits / softcap)
    logits = logits.masked_fill(~mask[:, None, None], MASKED)
    probs = torch.softmax(logits, dim=-1).to(q.dtype)
    return torch.einsum("bhgts,bshd->bthgd", probs, v)


def route(router_logits: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(gates, experts) [N, topk] of float32 router logits [N, experts]: the top-k softmax
    probabilities themselves (no renormalisation, no soft cap)."""
    return torch.topk(torch.softmax(router_logits.float(), dim=-1), topk, dim=-1)


def gated_gelu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """An expert's hidden activation: gelu_tanh(x @ gate) * (x @ up)."""
    return torch.nn.functional.gelu(gate, approximate="tanh") * up


def unembed_logits(hidden: torch.Tensor, table: torch.Tensor, multiplier: float) -> torch.Tensor:
    """Float32 logits of final-normed `hidden` against (a slice of) the tied embedding table
    [vocab, emb]: (hidden @ table.T) * multiplier, computed in hidden's dtype."""
    return ((hidden @ table.to(hidden.dtype).T) * multiplier).float()
