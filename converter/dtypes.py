"""One table of tensor dtypes: each with its name in every vocabulary the toolchain speaks.

`name` is ours (and the CLI's: `--dtype bf16`), `safetensors` the safetensors header's (and our
shard entries'), `torch` the name in `torch.<dtype>` and config.json's `torch_dtype`, and
`numpy` the numpy dtype that carries the raw values (numpy has no bfloat16: bf16 travels as its
uint16 bits). Nothing else translates between these spellings.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["DTYPES", "FLOATS", "FORWARD_DTYPES", "DType", "by_safetensors", "by_torch"]


@dataclasses.dataclass(frozen=True)
class DType:
    """One dtype in every spelling."""

    name: str
    safetensors: str
    torch: str
    numpy: np.dtype
    floating: bool

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return self.numpy.itemsize


DTYPES: dict[str, DType] = {d.name: d for d in (
    DType("f32", "F32", "float32", np.dtype("<f4"), True),
    DType("bf16", "BF16", "bfloat16", np.dtype("<u2"), True),
    DType("f16", "F16", "float16", np.dtype("<f2"), True),
    DType("i64", "I64", "int64", np.dtype("<i8"), False),
    DType("i32", "I32", "int32", np.dtype("<i4"), False),
    DType("i8", "I8", "int8", np.dtype("i1"), False),
    DType("u8", "U8", "uint8", np.dtype("u1"), False),
    DType("f8_e4m3", "F8_E4M3", "float8_e4m3fn", np.dtype("u1"), False),  # carried as bits
)}
FLOATS = tuple(d.safetensors for d in DTYPES.values() if d.floating)
# what the streamed forward runs in (`logits` and `verify --dtype`), in torch's spelling
FORWARD_DTYPES = (DTYPES["f32"].torch, DTYPES["bf16"].torch)
_BY_SAFETENSORS = {d.safetensors: d for d in DTYPES.values()}
_BY_TORCH = {d.torch: d for d in DTYPES.values()}


def by_safetensors(name: str) -> DType | None:
    """A dtype by its safetensors name (`BF16`), or None when it has none here."""
    return _BY_SAFETENSORS.get(name)


def by_torch(name: str) -> DType | None:
    """A dtype by its torch name (`bfloat16`), or None when it has none here."""
    return _BY_TORCH.get(name)
