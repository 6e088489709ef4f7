"""Grok-1's streamed, layer-major forward in torch (float32 or bfloat16; CPU or CUDA).

All sequences go through layer L before layer L+1 is read, so every weight is read from disk once
per run and only one layer is in memory; expert matrices are dequantized one expert at a time.
This is how the real 314B checkpoint verifies on one machine. Checkpoint values are dequantized
exactly (int8 x scale in float32; rounded once to bf16 in bfloat16 mode, as the release ran).

Its `ForwardHooks` see every Linear's input as it is multiplied (`converter.forward.drive` also
calls `layer_end` once all sequences have been through a layer). Each Linear is multiplied a band
of rows at a time (`converter.forward.matmul`).
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np
import torch

from converter.errors import UsageError
from converter.formats import NVFP4Linear, PackedLinear
from converter.forward.activations import nvfp4_activations
from converter.forward.base import DTYPES, NO_HOOKS, ForwardHooks, LayerOutput
from converter.forward.layer_weights import (
    dense,
    drop_pages,
    load_layer,
    mapped_embedding,
    prefetch_layer,
)
from converter.forward.matmul import (
    BAND_ELEMENTS,
    bands,
    fill_band,
    packed_bands,
    packed_rows,
    packed_unit,
)
from converter.hf_model.grok1_layers import (
    attend,
    gated_gelu,
    rms_norm,
    rope,
    route,
    unembed_logits,
)
from converter.model.config import Grok1Config
from converter.model.stream import CheckpointReader
from converter.tensors import QuantizedWeight8bit

__all__ = ["StreamedGrok1"]

_HEAD_CHUNK = 16384
# Query positions whose attention logits are made at a time (a 8192-token sequence would need
# 12 GB of them at once for Grok-1's 48 heads).
_QUERY_BLOCK = 512


class StreamedGrok1:
    """A Grok-1 forward that loads one layer's weights at a time from a checkpoint reader."""

    def __init__(self, reader: CheckpointReader, *, dtype: str = "float32",
                 device: str = "cpu", hooks: ForwardHooks = NO_HOOKS) -> None:
        if dtype not in DTYPES:
            raise UsageError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
        if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
            raise UsageError(f"unknown device {device!r}; choose cpu, cuda or cuda:N")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError("--device cuda asked for, but torch sees no CUDA device")
        self.reader = reader
        self.hooks = hooks
        self.config: Grok1Config = reader.config
        self.dtype = DTYPES[dtype]
        self.device = torch.device(device)
        by_role = {s.role: s for s in reader.specs if s.layer is None}
        # a view of the file where it is stored float32, else decoded once
        self._embed = mapped_embedding(reader, by_role["embed"])
        self._final_norm = dense(reader.read(by_role["final_norm"]))
        self._groups = {s.role: s.scale_groups for s in reader.specs if s.layer == 0}
        self._buffer = np.empty(0, np.float32)

    def _tensor(self, value: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
        array = np.array(dense(value), dtype=np.float32, order="C", copy=None)
        if not array.flags.writeable:
            array = array.copy()
        return torch.from_numpy(array).to(device=self.device, dtype=dtype or self.dtype)

    def _linear(self, x: torch.Tensor, value: Any, role: str, layer: int, real: torch.Tensor,
                expert: int | None = None) -> torch.Tensor:
        """One Linear of a layer: its input shown to the hook (with which rows are real
        tokens, not padding), quantized as served where the checkpoint quantizes activations
        (NVFP4 W4A4), then x @ W."""
        if self.hooks.linear_input is not None:
            self.hooks.linear_input(layer, role, expert, x.reshape(-1, x.shape[-1]), real)
        if isinstance(value, NVFP4Linear) and value.input_global_scale is not None:
            x = nvfp4_activations(x, float(value.input_global_scale))
        return self._matmul(x, value, role)

    def _matmul(self, x: torch.Tensor, value: Any, role: str) -> torch.Tensor:
        """x @ W for a weight in the canonical [in, out] orientation. In float32 on the CPU,
        W is dequantized a band of rows at a time into one reused buffer and the products
        accumulate in place; elsewhere it is made whole."""
        if self.dtype != torch.float32 or self.device.type != "cpu":
            return x @ self._tensor(value)
        if isinstance(value, PackedLinear) and value.shape[1] % packed_unit(value) == 0:
            flat = x.reshape(-1, value.shape[1])
            out = torch.zeros(flat.shape[0], value.shape[0], dtype=torch.float32)
            for first, end in packed_bands(value):  # x @ band.T: no transposed copy
                out.addmm_(flat[:, first:end], packed_rows(value, first, end).T)
            return out.view(*x.shape[:-1], value.shape[0])
        if not isinstance(value, QuantizedWeight8bit):
            value = dense(value)
        rows, cols = value.shape
        flat = x.reshape(-1, rows)
        out = torch.zeros(flat.shape[0], cols, dtype=torch.float32)
        need = min(rows, max(1, BAND_ELEMENTS // max(cols, 1))) * cols
        if self._buffer.size < need:
            self._buffer = np.empty(max(need, BAND_ELEMENTS), np.float32)
        for first, end, group in bands(rows, cols, self._groups.get(role, 1)):
            band = fill_band(self._buffer, value, first, end, group)
            out.addmm_(flat[:, first:end], torch.from_numpy(band))
        return out.view(*x.shape[:-1], cols)

    def embed(self, tokens: np.ndarray) -> torch.Tensor:
        """Scaled token embeddings [B, T, emb] (only the rows used are read)."""
        rows = np.asarray(self._embed[np.asarray(tokens)], dtype=np.float32)
        return torch.from_numpy(rows).to(self.device, self.dtype) * self.config.emb_mult

    def head(self, hidden: torch.Tensor) -> np.ndarray:
        """Final norm and tied unembedding, vocabulary in chunks; float32 [B, T, vocab]."""
        c = self.config
        h = rms_norm(hidden, self._tensor(self._final_norm, torch.float32), c.rms_norm_eps)
        out = np.empty((*h.shape[:-1], c.vocab), np.float32)
        for start in range(0, c.vocab, _HEAD_CHUNK):
            rows = self._embed[start:start + _HEAD_CHUNK]
            logits = unembed_logits(h, self._view(rows), c.out_mult)
            out[..., start:start + rows.shape[0]] = logits.cpu().numpy()
            drop_pages(rows)
        return out

    def _view(self, array: np.ndarray) -> torch.Tensor:
        """A float32 array as a tensor of the run's dtype and device, without a copy where it
        can be (a read-only memory map is only ever read)."""
        if self.dtype != torch.float32 or self.device.type != "cpu" or array.dtype != np.float32:
            return self._tensor(array)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "not writable": it is never written
            return torch.from_numpy(np.ascontiguousarray(array))

    def load_layer(self, layer: int) -> dict[str, Any]:
        """One layer's values by role (still quantized; experts read when used), and the
        next layer's bytes asked of the disk in the background."""
        weights = load_layer(self.reader, layer)
        prefetch_layer(self.reader, layer + 1)
        return weights

    def layer(self, weights: dict[str, Any], hidden: torch.Tensor, valid: torch.Tensor, *,
              index: int) -> LayerOutput:
        """Run decoder layer `index` on `hidden` [B, T, emb] with key mask `valid` [B, T]."""
        c = self.config
        norm = {r: self._tensor(weights[r], torch.float32) for r in (
            "pre_attn_norm", "post_attn_norm", "pre_moe_norm", "post_moe_norm")}
        attn = self._attention(rms_norm(hidden, norm["pre_attn_norm"], c.rms_norm_eps),
                               weights, valid, index)
        attn = rms_norm(attn, norm["post_attn_norm"], c.rms_norm_eps)
        hidden = hidden + attn
        moe = self._moe(rms_norm(hidden, norm["pre_moe_norm"], c.rms_norm_eps), weights,
                        valid.reshape(-1), index)
        moe = rms_norm(moe, norm["post_moe_norm"], c.rms_norm_eps)
        return LayerOutput(hidden=hidden + moe, attention=attn, moe=moe)

    def _attention(self, x: torch.Tensor, w: dict[str, Any], valid: torch.Tensor,
                   layer: int) -> torch.Tensor:
        c = self.config
        b, t, _ = x.shape
        real = valid.reshape(-1)
        q = self._linear(x, w["attn_q"], "attn_q", layer, real).view(b, t, c.q_heads, c.key_size)
        k = self._linear(x, w["attn_k"], "attn_k", layer, real).view(b, t, c.kv_heads, c.key_size)
        v = self._linear(x, w["attn_v"], "attn_v", layer, real).view(b, t, c.kv_heads, c.key_size)
        positions = torch.arange(t, device=x.device)
        q, k = rope(q, positions, c.rope_base), rope(k, positions, c.rope_base)
        q = q.view(b, t, c.kv_heads, c.q_heads // c.kv_heads, c.key_size)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        blocks = []
        for start in range(0, t, _QUERY_BLOCK):  # each query's softmax is its own
            rows = slice(start, start + _QUERY_BLOCK)
            mask = causal[None, rows] & valid[:, None, :]
            blocks.append(attend(q[:, rows], k, v, mask, c.attn_mult, c.attn_softcap))
        out = torch.cat(blocks, dim=1) if len(blocks) > 1 else blocks[0]
        return self._linear(out.reshape(b, t, c.q_dim), w["attn_o"], "attn_o", layer, real)

    def _moe(self, x: torch.Tensor, w: dict[str, Any], real: torch.Tensor,
             layer: int) -> torch.Tensor:
        c = self.config
        flat = x.reshape(-1, x.shape[-1])
        router = self._tensor(w["router"], torch.float32)
        gates, chosen = route(flat.float() @ router, c.topk)  # upstream ignores padding here
        out = torch.zeros(flat.shape, dtype=torch.float32, device=x.device)
        for e in range(c.experts):
            token, slot = torch.nonzero(chosen == e, as_tuple=True)
            if token.numel() == 0:
                continue
            xe = flat[token]
            gate = self._linear(xe, w["moe_gate"][e], "moe_gate", layer, real[token], e)
            up = self._linear(xe, w["moe_up"][e], "moe_up", layer, real[token], e)
            he = gated_gelu(gate, up)
            ye = self._linear(he, w["moe_down"][e], "moe_down", layer, real[token], e).float()
            ye = ye * gates[token, slot, None]
            out.index_add_(0, token, ye)
        return out.to(x.dtype).view_as(x)
