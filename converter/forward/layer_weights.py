"""The weights of one layer at a time, from any checkpoint reader: the layer's values by role,
experts read one at a time when used, and the next layer asked of the disk ahead of time."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import mmap
import os
import sys
import threading
from typing import Any

import numpy as np

from converter.model.spec import TensorSpec
from converter.model.stream import CheckpointReader
from converter.tensors import dense

__all__ = ["LayerWeights", "LazyExperts", "dense", "drop_pages", "global_weights",
           "layer_specs", "load_layer", "mapped_embedding", "prefetch_layer"]

LayerWeights = dict[str, Any]


@dataclasses.dataclass(frozen=True, eq=False)
class LazyExperts:
    """A stacked expert tensor whose experts are read only when indexed (one at a time): an
    expert that receives no token is never read, and no more than one is held."""

    reader: CheckpointReader
    spec: TensorSpec

    def __getitem__(self, expert: int) -> Any:
        return self.reader.read_expert(self.spec, expert)

    def __len__(self) -> int:
        return self.spec.shape[0]

    def dequantize(self) -> np.ndarray:
        """float32 [E, in, out] (all experts at once: for the small reference forward)."""
        return np.stack([dense(self[e]) for e in range(len(self))])


def layer_specs(reader: CheckpointReader, layer: int) -> dict[str, TensorSpec]:
    """The specs of one decoder layer, by role."""
    return {s.role: s for s in reader.specs if s.layer == layer}


def load_layer(reader: CheckpointReader, layer: int) -> LayerWeights:
    """The values of one layer by role (quantized values stay quantized until used; experts
    are read when indexed)."""
    return {role: (LazyExperts(reader, spec) if spec.param.linear and spec.param.expert
                   else reader.read(spec))
            for role, spec in layer_specs(reader, layer).items()}


def _advise(ranges: list[tuple[Any, int, int]]) -> None:
    for path, offset, length in ranges:
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)


def prefetch_layer(reader: CheckpointReader, layer: int) -> threading.Thread | None:
    """Ask the kernel, from a background thread, to read one layer's bytes into the page cache
    (POSIX_FADV_WILLNEED), so that the disk reads layer L+1 while layer L computes. Readers
    that cannot say where a spec's bytes are (torch shards) are not prefetched."""
    if layer >= reader.config.layers or not hasattr(reader, "byte_ranges"):
        return None
    ranges = [r for spec in layer_specs(reader, layer).values()
              for r in reader.byte_ranges(spec)]
    thread = threading.Thread(target=_advise, args=(ranges,), daemon=True)
    thread.start()
    return thread


def global_weights(reader: CheckpointReader) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings [vocab, emb], final norm scale [emb]) as float32."""
    by_role = {s.role: s for s in reader.specs if s.layer is None}
    return dense(reader.read(by_role["embed"])), dense(reader.read(by_role["final_norm"]))


def _file_backed(array: np.ndarray) -> bool:
    """True when the array's memory is a mapping of a file (a numpy memmap or a view of an
    mmap), so its pages can be dropped and read again; never anonymous memory."""
    base: Any = array
    while base is not None:
        if isinstance(base, np.memmap | mmap.mmap):
            return True
        base = getattr(base, "base", None) if isinstance(base, np.ndarray) else (
            getattr(base, "obj", None) if isinstance(base, memoryview) else None)
    return False


def mapped_embedding(reader: CheckpointReader, spec: TensorSpec) -> np.ndarray:
    """The embedding [vocab, emb] float32 as a read-only map of the checkpoint file: the
    reader's own map (the release's pickles), or the one byte range of a tensor the reader
    says is stored F32 in that orientation (safetensors, GGUF); else decoded into memory."""
    stored = reader.stored_dtype(spec) if hasattr(reader, "stored_dtype") else None
    ranges = reader.byte_ranges(spec) if stored == "F32" else []
    if len(ranges) == 1 and ranges[0][2] == spec.numel * 4 and not spec.param.matrix:
        path, offset, _ = ranges[0]
        return np.memmap(path, np.dtype("<f4"), "r", offset, tuple(spec.shape))
    return dense(reader.read(spec))


def drop_pages(array: np.ndarray) -> None:
    """Tell the kernel this process no longer needs the pages of a file-backed array (they stay
    in the page cache; touching them again maps them back): resident memory then holds one
    chunk of a 3.2 GB embedding at a time, not all of it. Anonymous memory is never touched."""
    if not sys.platform.startswith("linux") or not array.flags.c_contiguous or not (
            _file_backed(array)):
        return
    page = mmap.PAGESIZE
    start = array.ctypes.data
    first = -(-start // page) * page
    end = (start + array.nbytes) // page * page
    if end > first:
        _libc().madvise(ctypes.c_void_p(first), ctypes.c_size_t(end - first), _MADV_DONTNEED)


_MADV_DONTNEED = 4  # Linux's value


@functools.cache
def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)
