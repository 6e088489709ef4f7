"""Turn a reader's canonical values into the arrays of one output tensor (layout math only).

Matrices go to PyTorch orientation [out, in]; norms and embeddings stay as they are, float32.
Linears are made by the output's `Linears`, all parts of one Linear at once and once only, even
when several threads ask for its parts together; a Linear's parts are dropped as soon as each
has been handed out, so memory holds only the Linears being written.
"""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any

import numpy as np

from converter.layouts.linears import Linears, dense_transposed
from converter.model.names import NameScheme, OutputName
from converter.model.spec import TensorSpec
from converter.model.stream import CheckpointReader
from converter.tensors import dense

__all__ = ["Producer"]


class Producer:
    """Computes output tensors from a reader; collects the statistics its Linears report."""

    def __init__(self, reader: CheckpointReader, linears: Linears, names: NameScheme) -> None:
        self.reader, self.linears, self.names = reader, linears, names
        self.stats: dict[str, dict[str, Any]] = {}
        self._pending: dict[tuple[str, int | None], tuple[concurrent.futures.Future, set]] = {}
        self._lock = threading.Lock()

    def source(self, spec: TensorSpec, expert: int | None) -> Any:
        """The canonical value (or one expert's slice) of `spec`."""
        if expert is not None:
            return self.reader.read_expert(spec, expert)
        return self.reader.read(spec)

    def summary(self) -> dict[str, Any]:
        """What to record in the manifest beside the tensors' hashes."""
        return {"stats": dict(self.stats)} if self.stats else {}

    def __call__(self, spec: TensorSpec, origin: OutputName) -> np.ndarray:
        """The array of the output tensor `origin`, made from the canonical tensor `spec`."""
        role = spec.param
        if role.linear:
            return self._linear_part(spec, origin)
        value = self.source(spec, None)
        array = dense_transposed(value) if role.matrix else dense(value)
        self.linears.check_kept(spec, array)
        return array

    def _linear_part(self, spec: TensorSpec, origin: OutputName) -> np.ndarray:
        """One part of a Linear; the first thread to ask makes all its parts, the others wait."""
        expert = origin.expert if spec.param.expert else None
        key = (spec.name, expert)
        with self._lock:
            entry = self._pending.get(key)
            first = entry is None
            if first:
                entry = (concurrent.futures.Future(),
                         set(self.linears.formats[spec.role].parts()))
                self._pending[key] = entry
        future, waiting = entry
        if first:
            try:
                parts, stats = self.linears.make(spec, expert, self.source(spec, expert))
            except BaseException as exc:
                future.set_exception(exc)
                with self._lock:
                    self._pending.pop(key, None)
                raise
            if stats is not None:
                with self._lock:
                    self.stats[self.names.module_of(origin)] = stats
            future.set_result(parts)
        parts = future.result()
        with self._lock:
            waiting.discard(origin.part)
            if not waiting:
                self._pending.pop(key, None)
        return parts[origin.part]
