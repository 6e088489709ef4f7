"""The streamed forward: one decoder layer in memory at a time, with hooks that observe every
Linear's input and each layer's end. Each architecture names its forward in `FORWARDS`;
verification (logits) and calibration (hooks, no head) drive the same one."""

from __future__ import annotations

from collections.abc import Callable

from converter.errors import UsageError
from converter.forward.base import StreamedForward
from converter.forward.grok1 import StreamedGrok1
from converter.model.stream import CheckpointReader

__all__ = ["FORWARDS", "forward_class"]

# an architecture's `forward` names its row
FORWARDS: dict[str, Callable[..., StreamedForward]] = {"grok-1": StreamedGrok1}


def forward_class(reader: CheckpointReader) -> Callable[..., StreamedForward]:
    """The streamed forward of the reader's architecture."""
    name = reader.architecture.forward
    if name not in FORWARDS:
        raise UsageError(f"no streamed forward for architecture {reader.architecture.name!r}")
    return FORWARDS[name]
