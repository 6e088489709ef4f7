"""What every streamed forward shares: the run's dtypes, the hooks that observe it, and a
layer's result."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch

from converter.dtypes import FORWARD_DTYPES

__all__ = ["DTYPES", "HEAD_ENTRIES", "NO_HOOKS", "ForwardHooks", "LayerOutput", "StreamedForward"]

DTYPES = {name: getattr(torch, name) for name in FORWARD_DTYPES}
# Logits (positions x vocabulary) made at a time: with Grok-1's vocabulary, 64 positions (each
# pass of the head reads the whole 3.2 GB embedding, so fewer, larger passes are cheaper).
HEAD_ENTRIES = 1 << 23


@dataclasses.dataclass(frozen=True)
class ForwardHooks:
    """Observers of the streamed forward (each optional; they must not modify what they see).

    linear_input(layer, role, expert, x, real): before each Linear's product, its input
    x [rows, in] in the run's dtype and which rows are real tokens (bool [rows]; the others
    are padding, which the forward computes too); `expert` is the expert index for the MoE's
    Linears (x holds only the positions routed to it), None for attention's.
    layer_end(layer, hidden): after every sequence has been through a layer, its output hidden
    states [B, T, emb].
    """

    linear_input: Callable[[int, str, int | None, torch.Tensor, torch.Tensor], None] | None = None
    layer_end: Callable[[int, torch.Tensor], None] | None = None


NO_HOOKS = ForwardHooks()


@dataclasses.dataclass
class LayerOutput:
    """A decoder layer's result and its two sub-block outputs (after their post-norms)."""

    hidden: torch.Tensor
    attention: torch.Tensor
    moe: torch.Tensor


class StreamedForward(Protocol):
    """What an architecture's streamed forward offers the drivers (`drive.py`, verification):
    made from a reader, it embeds tokens, loads one layer's weights, runs one layer on some
    sequences, and turns final hidden states into logits."""

    config: Any
    device: torch.device
    hooks: ForwardHooks

    def embed(self, tokens: np.ndarray) -> torch.Tensor: ...

    def load_layer(self, layer: int) -> dict[str, Any]: ...

    def layer(self, weights: dict[str, Any], hidden: torch.Tensor, valid: torch.Tensor, *,
              index: int) -> LayerOutput: ...

    def head(self, hidden: torch.Tensor) -> np.ndarray: ...
