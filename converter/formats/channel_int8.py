"""SGLang's `w8a8_int8`: int8 weights [out, in] with one float32 scale per output channel
(`weight`, `weight_scale` [out, 1]), activations quantized per token at run time. Not a
compressed-tensors format: config.json says only `{"quant_method": "w8a8_int8"}` and every
Linear of the model is stored this way (read in SGLang 0.5.23,
`srt/layers/quantization/w8a8_int8.py`: `W8A8Int8LinearMethod` and `W8A8Int8MoEMethod`
create exactly these parameters, the MoE's scales per channel of w13 and w2)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

from converter.dtypes import FLOATS
from converter.formats.base import LinearFormat, Part, StoredParts
from converter.model.spec import TensorSpec
from converter.tensors import QuantizedWeight8bit, bf16_bits_to_f32, f32_to_bf16_bits, transposed

__all__ = ["ChannelInt8", "ChannelInt8Linear"]


@dataclasses.dataclass(frozen=True)
class ChannelInt8(LinearFormat):
    """int8 codes, a float32 scale per output channel."""

    name: ClassVar[str] = "w8a8_int8"

    def part_table(self) -> dict[str, Part]:
        """`weight` int8 [out, in], `weight_scale` float32 [out, 1]."""
        return {"weight": Part("I8", ("I8",), lambda out, cols: (out, cols)),
                "weight_scale": Part("F32", FLOATS, lambda out, cols: (out, 1))}

    def read(self, stored: StoredParts, spec: TensorSpec) -> Any:
        """The release's codes and scale when the Linear has one scale group and every scale
        is a bf16 value (what `quantize --scheme w8a8-int8` keeps losslessly), else a
        `ChannelInt8Linear`."""
        codes, scale = stored.tensor("weight"), stored.floats("weight_scale")
        bits = f32_to_bf16_bits(scale)
        if spec.scale_groups == 1 and np.array_equal(bf16_bits_to_f32(bits), scale):
            return QuantizedWeight8bit(transposed(codes), np.ascontiguousarray(bits.T))
        return ChannelInt8Linear(codes, scale)

    def card(self) -> tuple[str, list[str]]:
        """SGLang's int8, and where it serves."""
        return ("SGLang w8a8_int8: int8 weights with a float32 scale per output channel, "
                "dynamic per-token int8 activations; served by SGLang on NVIDIA GPUs (Turing "
                "or newer) and on Xeon CPUs with AMX", ["int8", "w8a8"])

    def label(self) -> str:
        """w8a8-int8."""
        return "w8a8-int8"

    def model_config(self) -> dict[str, Any]:
        """config.json's `quantization_config`: the method alone (nothing is skipped: SGLang
        builds Grok-1's router, embeddings and LM head without a quantization method)."""
        return {"quant_method": self.name}

    @classmethod
    def from_model_config(cls, config: dict[str, Any], source: str) -> ChannelInt8:
        """The format every Linear of a `w8a8_int8` model has."""
        return cls()


@dataclasses.dataclass(frozen=True, eq=False)
class ChannelInt8Linear:
    """One Linear in w8a8_int8 form: int8 codes [out, in], float32 scales [out, 1]."""

    codes: np.ndarray
    scale: np.ndarray

    def dequantize(self) -> np.ndarray:
        """float32 weights in the canonical [in, out] orientation."""
        return np.ascontiguousarray((self.codes.astype(np.float32) * self.scale).T)
