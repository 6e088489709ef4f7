"""Dense Linears: one `weight` [out, in] in float32 or bf16."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

from converter.dtypes import FLOATS
from converter.formats.base import LinearFormat, Part, StoredParts
from converter.model.spec import TensorSpec

__all__ = ["Dense"]


@dataclasses.dataclass(frozen=True)
class Dense(LinearFormat):
    """Plain float weights (`dtype` is the safetensors dtype they are written in)."""

    dtype: str = "BF16"

    name: ClassVar[str] = "dense"
    quantized: ClassVar[bool] = False

    def part_table(self) -> dict[str, Part]:
        """`weight` [out, in]."""
        return {"weight": Part(self.dtype, FLOATS, lambda out, cols: (out, cols))}

    def read(self, stored: StoredParts, spec: TensorSpec) -> Any:
        """float32 [in, out]."""
        return np.ascontiguousarray(stored.floats("weight").T)

    def label(self) -> str:
        """The dtype ("bf16", "f32")."""
        return self.dtype.lower()

    @property
    def compute_dtype(self) -> str:
        """The weights' own dtype."""
        return self.dtype
