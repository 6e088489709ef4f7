"""The reference forward pass of Grok-1 in numpy, float32 or float64.

Written to be read against the original xai-org/grok-1 `model.py`: sandwich RMSNorms, RoPE in
rotate-half layout, grouped-query attention with a 30 * tanh(x / 30) soft cap, a top-2 MoE whose
gates are the unrenormalised softmax probabilities, tanh-approximated GELU, tied unembedding.
Weights are the int8 codes times their scales, exact in float32; nothing is rounded to bf16.
It is slow and simple on purpose: the torch forward is checked against it.
"""

from __future__ import annotations

import numpy as np

from converter.forward.layer_weights import dense, global_weights, load_layer
from converter.model.config import Grok1Config
from converter.model.stream import CheckpointReader

__all__ = ["gelu_tanh", "reference_logits", "rms_norm", "rope"]


def rms_norm(x: np.ndarray, scale: np.ndarray, eps: float) -> np.ndarray:
    """x * rsqrt(mean(x^2) + eps) * scale."""
    mean_sq = np.mean(np.square(x), axis=-1, keepdims=True)
    return x / np.sqrt(mean_sq + x.dtype.type(eps)) * scale.astype(x.dtype)


def rope(x: np.ndarray, base: float) -> np.ndarray:
    """Rotary embedding, rotate-half layout, positions 0..T-1; x is [B, T, H, D]."""
    d = x.shape[-1]
    inv_freq = 1.0 / (base ** (np.arange(0, d, 2, dtype=np.float32) / d))
    phase = np.arange(x.shape[1], dtype=np.float32)[:, None] * inv_freq[None, :]
    phase = np.concatenate([phase, phase], axis=-1).astype(x.dtype)[None, :, None, :]
    half = d // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * np.cos(phase) + rotated * np.sin(phase)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (jax.nn.gelu's default)."""
    c = x.dtype.type(np.sqrt(2.0 / np.pi))
    return x.dtype.type(0.5) * x * (1 + np.tanh(c * (x + x.dtype.type(0.044715) * x ** 3)))


def softmax(x: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _attention(x: np.ndarray, w: dict, valid: np.ndarray, c: Grok1Config) -> np.ndarray:
    b, t, _ = x.shape
    dt = x.dtype
    q = (x @ dense(w["attn_q"]).astype(dt)).reshape(b, t, c.q_heads, c.key_size)
    k = (x @ dense(w["attn_k"]).astype(dt)).reshape(b, t, c.kv_heads, c.key_size)
    v = (x @ dense(w["attn_v"]).astype(dt)).reshape(b, t, c.kv_heads, c.key_size)
    q, k = rope(q, c.rope_base), rope(k, c.rope_base)
    group = c.q_heads // c.kv_heads
    q = q.reshape(b, t, c.kv_heads, group, c.key_size)
    logits = np.einsum("bthgd,bshd->bhgts", q, k) * dt.type(c.attn_mult)
    logits = dt.type(c.attn_softcap) * np.tanh(logits / dt.type(c.attn_softcap))
    causal = np.tril(np.ones((t, t), dtype=bool))
    mask = causal[None, None, None] & valid[:, None, None, None, :]
    logits = np.where(mask, logits, dt.type(-1e30))
    probs = softmax(logits)
    out = np.einsum("bhgts,bshd->bthgd", probs, v).reshape(b, t, c.q_dim)
    return out @ dense(w["attn_o"]).astype(dt)


def _moe(x: np.ndarray, w: dict, c: Grok1Config) -> np.ndarray:
    dt = x.dtype
    probs = softmax(x @ dense(w["router"]).astype(dt))  # upstream ignores the padding mask
    chosen = np.argsort(-probs, axis=-1, kind="stable")[..., : c.topk]
    gates = np.take_along_axis(probs, chosen, axis=-1)
    gate_w, up_w, down_w = (dense(w[r]).astype(dt) for r in ("moe_gate", "moe_up", "moe_down"))
    out = np.zeros_like(x)
    for e in range(c.experts):
        weight = np.where(chosen == e, gates, 0).sum(axis=-1)  # [B, T]
        rows = weight != 0
        if not rows.any():
            continue
        xe = x[rows]
        he = gelu_tanh(xe @ gate_w[e]) * (xe @ up_w[e])
        out[rows] += (he @ down_w[e]) * weight[rows][:, None]
    return out


def reference_logits(reader: CheckpointReader, tokens: np.ndarray,
                     dtype: type = np.float32) -> np.ndarray:
    """Logits [batch, seq, vocab] (float32 result) of the model in `reader` on `tokens`."""
    c = reader.config
    tokens = np.asarray(tokens)
    valid = tokens != c.pad_token
    embed, final_scale = global_weights(reader)
    embed = embed.astype(dtype)
    h = embed[tokens] * dtype(c.emb_mult)
    for layer in range(c.layers):
        w = load_layer(reader, layer)
        norm = {r: dense(w[r]) for r in ("pre_attn_norm", "post_attn_norm", "pre_moe_norm",
                                          "post_moe_norm")}
        attn = _attention(rms_norm(h, norm["pre_attn_norm"], c.rms_norm_eps), w, valid, c)
        h = h + rms_norm(attn, norm["post_attn_norm"], c.rms_norm_eps)
        moe = _moe(rms_norm(h, norm["pre_moe_norm"], c.rms_norm_eps), w, c)
        h = h + rms_norm(moe, norm["post_moe_norm"], c.rms_norm_eps)
    h = rms_norm(h, final_scale, c.rms_norm_eps)
    return ((h @ embed.T) * dtype(c.out_mult)).astype(np.float32)
