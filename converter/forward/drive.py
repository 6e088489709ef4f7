"""Drive a checkpoint's streamed forward over token batches, one layer in memory: for logits
(`stream_logits`, `torch_logits`: verification) or for hooks alone (`observe`: calibration)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from converter.engine.progress import step_bar
from converter.forward import forward_class
from converter.forward.base import DTYPES, HEAD_ENTRIES, NO_HOOKS, ForwardHooks, StreamedForward
from converter.model.stream import CheckpointReader

__all__ = ["observe", "stream_logits", "torch_logits"]


def _run_layers(model: StreamedForward, tokens: np.ndarray, batch: int, bar: Any,
                first: int = 0, hidden: torch.Tensor | None = None) -> torch.Tensor:
    """Every decoder layer from `first` on over all of `tokens` [B, T], `batch` sequences at a
    time, one layer in memory, starting from `hidden` (the hidden states before layer `first`;
    None: the embeddings); the final hidden states [B, T, emb]."""
    valid = torch.from_numpy(tokens != model.config.pad_token).to(model.device)
    hidden = model.embed(tokens) if hidden is None else hidden
    for layer in range(first, model.config.layers):
        weights = model.load_layer(layer)
        for rows in range(0, len(tokens), batch):
            part = slice(rows, rows + batch)
            hidden[part] = model.layer(weights, hidden[part], valid[part], index=layer).hidden
        del weights
        if model.hooks.layer_end is not None:
            model.hooks.layer_end(layer, hidden)
        bar.update()
    return hidden


@torch.inference_mode()
def stream_logits(reader: CheckpointReader, tokens: np.ndarray, *, dtype: str = "float32",
                  device: str = "cpu", batch: int = 4, quiet: bool = True,
                  hooks: ForwardHooks = NO_HOOKS) -> Iterator[np.ndarray]:
    """Logits float32 [positions, vocab] of every position of `tokens` [B, T] in order, a few
    positions at a time: each layer is read once and runs on `batch` sequences at a time, and
    no more than about HEAD_ENTRIES logits are held. Unless `quiet`, a progress bar counts
    layers on a terminal."""
    model = forward_class(reader)(reader, dtype=dtype, device=device, hooks=hooks)
    tokens = np.asarray(tokens)
    with step_bar(model.config.layers + 1, "logits", "layer", quiet=quiet) as bar:
        flat = _run_layers(model, tokens, batch, bar).reshape(-1, model.config.emb)
        step = max(1, HEAD_ENTRIES // model.config.vocab)
        for start in range(0, flat.shape[0], step):
            yield model.head(flat[start:start + step])
        bar.update()


@torch.inference_mode()
def observe(reader: CheckpointReader, tokens: np.ndarray, hooks: ForwardHooks, *,
            dtype: str = "float32", device: str = "cpu", batch: int = 4,
            quiet: bool = True, first: int = 0, hidden: np.ndarray | None = None) -> None:
    """Drive the decoder layers over `tokens` [B, T] for `hooks` alone (a calibration pass):
    the same traversal as `stream_logits`, one layer in memory, without the head. A pass cut
    short resumes at layer `first` from `hidden`, the hidden states [B, T, emb] that
    `hooks.layer_end` saw after the layer before it."""
    model = forward_class(reader)(reader, dtype=dtype, device=device, hooks=hooks)
    start = None if hidden is None else torch.from_numpy(hidden).to(
        device=model.device, dtype=DTYPES[dtype])
    with step_bar(model.config.layers, "calibrate", "layer", quiet=quiet) as bar:
        bar.update(first)
        _run_layers(model, np.asarray(tokens), batch, bar, first, start)


def torch_logits(reader: CheckpointReader, tokens: np.ndarray, *, dtype: str = "float32",
                 device: str = "cpu") -> np.ndarray:
    """Logits [batch, seq, vocab] as float32, streaming one layer at a time (all of them in
    memory: for small runs; `stream_logits` holds a few positions at a time)."""
    tokens = np.asarray(tokens)
    chunks = list(stream_logits(reader, tokens, dtype=dtype, device=device))
    return np.concatenate(chunks).reshape(*tokens.shape, -1)
