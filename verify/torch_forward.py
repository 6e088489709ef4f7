"""The streamed, layer-major Grok-1 forward in torch (float32 or bfloat16; CPU or CUDA).

All sequences go through layer L before layer L+1 is read, so every weight is read from disk once
per run and only one layer is in memory; expert matrices are dequantized one expert at a time.
This is how the real 314B checkpoint verifies on one machine. Checkpoint values are dequantized
exactly (int8 x scale in float32; rounded once to bf16 in bfloat16 mode, as the release ran).
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from converter.config import Grok1Config
from converter.errors import UsageError
from converter.formats import PackedLinear
from converter.hf_model.grok1_layers import (
    attend,
    gated_gelu,
    rms_norm,
    rope,
    route,
    unembed_logits,
)
from converter.layouts import CheckpointReader
from converter.progress import step_bar
from converter.tensors import QuantizedWeight8bit, bf16_bits_to_f32
from verify.weights import dense, drop_pages, load_layer, mapped_embedding, prefetch_layer

__all__ = ["DTYPES", "HEAD_ENTRIES", "LayerOutput", "StreamedGrok1", "stream_logits",
           "torch_logits"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_HEAD_CHUNK = 16384
# Logits (positions x vocabulary) made at a time: with Grok-1's vocabulary, 64 positions (each
# pass of the head reads the whole 3.2 GB embedding, so fewer, larger passes are cheaper).
HEAD_ENTRIES = 1 << 23
# float32 elements of a weight matrix dequantized at a time (64 MB), into one reused buffer: a
# whole real expert matrix would be an 805 MB fresh allocation, 24 of them per layer.
_BAND_ELEMENTS = 1 << 24
# Query positions whose attention logits are made at a time (a 8192-token sequence would need
# 12 GB of them at once for Grok-1's 48 heads).
_QUERY_BLOCK = 512


@dataclasses.dataclass
class LayerOutput:
    """A decoder layer's result and its two sub-block outputs (after their post-norms)."""

    hidden: torch.Tensor
    attention: torch.Tensor
    moe: torch.Tensor


def _bands(rows: int, cols: int, groups: int) -> Iterator[tuple[int, int, int]]:
    """(first row, end row, scale group) of the row bands a [rows, cols] weight matrix is
    multiplied in. No band crosses a scale group, and the bands depend only on the shape, so
    every source of the same weights (the release's int8, a dense copy of it) sums in the same
    order and gives the same bits."""
    per_group = rows // groups
    step = max(1, min(per_group, _BAND_ELEMENTS // max(cols, 1)))
    for group in range(groups):
        end = (group + 1) * per_group
        for first in range(group * per_group, end, step):
            yield first, min(first + step, end), group


def _shape(value: Any) -> tuple[int, int]:
    """[in, out] of a weight in the canonical orientation."""
    return value.weight.shape if isinstance(value, QuantizedWeight8bit) else value.shape


def _fill(buffer: np.ndarray, value: Any, first: int, end: int, group: int) -> np.ndarray:
    """Rows first:end of a weight matrix as exact float32 ([in, out]), written into `buffer`:
    the release's int8 codes times their group's bf16 scale, or a dense matrix's rows."""
    cols = _shape(value)[1]
    band = buffer[:(end - first) * cols].reshape(end - first, cols)
    if isinstance(value, QuantizedWeight8bit):
        np.multiply(value.weight[first:end], bf16_bits_to_f32(value.scales[group]), out=band)
    else:
        np.copyto(band, value[first:end])
    return band


def _packed_unit(value: PackedLinear) -> int:
    """Input columns a band of a pack-quantized Linear is made of: a scale group, or (one scale
    per output channel) a packed word."""
    return value.group_size if value.scale.shape[1] > 1 else 32 // value.bits


def _packed_bands(value: PackedLinear) -> Iterator[tuple[int, int]]:
    """Row bands of a pack-quantized Linear (canonical rows = its input columns): whole
    `_packed_unit`s, about _BAND_ELEMENTS elements each."""
    cols, rows = value.shape
    unit = _packed_unit(value)
    step = max(unit, _BAND_ELEMENTS // max(cols, 1) // unit * unit)
    for first in range(0, rows, step):
        yield first, min(first + step, rows)


def _packed_rows(value: PackedLinear, first: int, end: int) -> torch.Tensor:
    """Canonical rows first:end of a pack-quantized Linear, transposed ([out, end - first]
    float32; `first` on a `_packed_unit` boundary): the values of `PackedLinear.dequantize`
    bit for bit, decoded in torch, whose elementwise kernels run on every core and allocate no
    page-faulting numpy temporaries."""
    per_word = 32 // value.bits
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


class StreamedGrok1:
    """A Grok-1 forward that loads one layer's weights at a time from a checkpoint reader."""

    def __init__(self, reader: CheckpointReader, *, dtype: str = "float32",
                 device: str = "cpu") -> None:
        if dtype not in DTYPES:
            raise UsageError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
        if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
            raise UsageError(f"unknown device {device!r}; choose cpu, cuda or cuda:N")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError("--device cuda asked for, but torch sees no CUDA device")
        self.reader = reader
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

    def _matmul(self, x: torch.Tensor, value: Any, role: str) -> torch.Tensor:
        """x @ W for a weight in the canonical [in, out] orientation. In float32 on the CPU,
        W is dequantized a band of rows at a time into one reused buffer and the products
        accumulate in place; elsewhere it is made whole."""
        if self.dtype != torch.float32 or self.device.type != "cpu":
            return x @ self._tensor(value)
        if isinstance(value, PackedLinear) and value.shape[1] % _packed_unit(value) == 0:
            flat = x.reshape(-1, value.shape[1])
            out = torch.zeros(flat.shape[0], value.shape[0], dtype=torch.float32)
            for first, end in _packed_bands(value):  # x @ band.T: no transposed copy
                out.addmm_(flat[:, first:end], _packed_rows(value, first, end).T)
            return out.view(*x.shape[:-1], value.shape[0])
        if not isinstance(value, QuantizedWeight8bit):
            value = dense(value)
        rows, cols = _shape(value)
        flat = x.reshape(-1, rows)
        out = torch.zeros(flat.shape[0], cols, dtype=torch.float32)
        need = min(rows, max(1, _BAND_ELEMENTS // max(cols, 1))) * cols
        if self._buffer.size < need:
            self._buffer = np.empty(max(need, _BAND_ELEMENTS), np.float32)
        for first, end, group in _bands(rows, cols, self._groups.get(role, 1)):
            band = _fill(self._buffer, value, first, end, group)
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

    def layer(self, weights: dict[str, Any], hidden: torch.Tensor,
              valid: torch.Tensor) -> LayerOutput:
        """Run one decoder layer on `hidden` [B, T, emb] with key mask `valid` [B, T]."""
        c = self.config
        norm = {r: self._tensor(weights[r], torch.float32) for r in (
            "pre_attn_norm", "post_attn_norm", "pre_moe_norm", "post_moe_norm")}
        attn = self._attention(rms_norm(hidden, norm["pre_attn_norm"], c.rms_norm_eps),
                               weights, valid)
        attn = rms_norm(attn, norm["post_attn_norm"], c.rms_norm_eps)
        hidden = hidden + attn
        moe = self._moe(rms_norm(hidden, norm["pre_moe_norm"], c.rms_norm_eps), weights)
        moe = rms_norm(moe, norm["post_moe_norm"], c.rms_norm_eps)
        return LayerOutput(hidden=hidden + moe, attention=attn, moe=moe)

    def _attention(self, x: torch.Tensor, w: dict[str, Any], valid: torch.Tensor) -> torch.Tensor:
        c = self.config
        b, t, _ = x.shape
        q = self._matmul(x, w["attn_q"], "attn_q").view(b, t, c.q_heads, c.key_size)
        k = self._matmul(x, w["attn_k"], "attn_k").view(b, t, c.kv_heads, c.key_size)
        v = self._matmul(x, w["attn_v"], "attn_v").view(b, t, c.kv_heads, c.key_size)
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
        return self._matmul(out.reshape(b, t, c.q_dim), w["attn_o"], "attn_o")

    def _moe(self, x: torch.Tensor, w: dict[str, Any]) -> torch.Tensor:
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
            gate = self._matmul(xe, w["moe_gate"][e], "moe_gate")
            up = self._matmul(xe, w["moe_up"][e], "moe_up")
            he = gated_gelu(gate, up)
            ye = self._matmul(he, w["moe_down"][e], "moe_down").float() * gates[token, slot, None]
            out.index_add_(0, token, ye)
        return out.to(x.dtype).view_as(x)


@torch.inference_mode()
def stream_logits(reader: CheckpointReader, tokens: np.ndarray, *, dtype: str = "float32",
                  device: str = "cpu", batch: int = 4, quiet: bool = True
                  ) -> Iterator[np.ndarray]:
    """Logits float32 [positions, vocab] of every position of `tokens` [B, T] in order, a few
    positions at a time: each layer is read once and runs on `batch` sequences at a time, and
    no more than about HEAD_ENTRIES logits are held. Unless `quiet`, a progress bar counts
    layers on a terminal."""
    model = StreamedGrok1(reader, dtype=dtype, device=device)
    tokens = np.asarray(tokens)
    valid = torch.from_numpy(tokens != model.config.pad_token).to(model.device)
    hidden = model.embed(tokens)
    with step_bar(model.config.layers + 1, "logits", "layer", quiet=quiet) as bar:
        for layer in range(model.config.layers):
            weights = model.load_layer(layer)
            for rows in range(0, len(tokens), batch):
                part = slice(rows, rows + batch)
                hidden[part] = model.layer(weights, hidden[part], valid[part]).hidden
            del weights
            bar.update()
        flat = hidden.reshape(-1, hidden.shape[-1])
        step = max(1, HEAD_ENTRIES // model.config.vocab)
        for start in range(0, flat.shape[0], step):
            yield model.head(flat[start:start + step])
        bar.update()


def torch_logits(reader: CheckpointReader, tokens: np.ndarray, *, dtype: str = "float32",
                 device: str = "cpu") -> np.ndarray:
    """Logits [batch, seq, vocab] as float32, streaming one layer at a time (all of them in
    memory: for small runs; `stream_logits` holds a few positions at a time)."""
    tokens = np.asarray(tokens)
    chunks = list(stream_logits(reader, tokens, dtype=dtype, device=device))
    return np.concatenate(chunks).reshape(*tokens.shape, -1)
