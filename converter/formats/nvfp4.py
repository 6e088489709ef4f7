"""compressed-tensors `nvfp4-pack-quantized`: NVIDIA's FP4. e2m1 values two per byte
(`weight_packed` U8 [out, in / 2]), one float8 e4m3 scale per 16 inputs (`weight_scale`
F8_E4M3 [out, in / 16]) and one float32 `weight_global_scale` [1] per Linear; a weight is
value * (scale / global_scale). W4A4 checkpoints also carry a float32 `input_global_scale` [1]
per Linear, from calibration (the activations' 16-value blocks are scaled at run time).

Checked against compressed-tensors 0.20.0 (`compressors/nvfp4/base.py`: the parts and their
dtypes; `lifecycle/forward.py` `_dequantize`: scale / global_scale in float32, then times the
value). The presets are its `NVFP4A16` and `NVFP4`."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

from converter.dtypes import FLOATS
from converter.errors import MalformedFileError
from converter.formats.base import LinearFormat, Part, StoredParts, linear_shape
from converter.formats.float_quantized import e4m3_to_f32
from converter.formats.fp4 import (
    check_fp4_weights,
    e2m1_values,
    is_fp4_group,
    unpack_nibbles,
)
from converter.model.spec import TensorSpec

__all__ = ["E4M3_EPS_BITS", "NVFP4_GROUP", "NVFP4Linear", "NVFP4PackQuantized"]

NVFP4_GROUP = 16
"""Inputs per e4m3 scale."""

E4M3_EPS_BITS = 0x20
"""0.125 in e4m3 (its eps): what a block scale of exactly zero becomes."""


def _args(dynamic: bool | str) -> dict[str, Any]:
    """One tensor's quantization args as compressed-tensors 0.20.0 writes its NVFP4 presets."""
    args = {"num_bits": 4, "type": "float", "symmetric": True, "group_size": NVFP4_GROUP,
            "strategy": "tensor_group", "dynamic": dynamic, "scale_dtype": "torch.float8_e4m3fn"}
    return args if dynamic is False else {**args, "observer": "static_minmax"}


@dataclasses.dataclass(frozen=True)
class NVFP4PackQuantized(LinearFormat):
    """NVFP4 weights; `activations` True for W4A4 (NVFP4 activations, a calibrated
    `input_global_scale` per Linear), False for weights only (NVFP4A16)."""

    activations: bool = False

    name: ClassVar[str] = "nvfp4-pack-quantized"

    def part_table(self) -> dict[str, Part]:
        """weight_packed, weight_scale, weight_global_scale (and input_global_scale)."""
        table = {
            "weight_packed": Part("U8", ("U8",), lambda out, cols: (out, cols // 2)),
            "weight_scale": Part("F8_E4M3", ("F8_E4M3",),
                                 lambda out, cols: (out, cols // NVFP4_GROUP)),
            "weight_global_scale": Part("F32", FLOATS, lambda out, cols: (1,)),
        }
        if self.activations:
            table["input_global_scale"] = Part("F32", FLOATS, lambda out, cols: (1,))
        return table

    def check(self, spec: TensorSpec, source: str) -> None:
        """An input width that whole groups of 16 cover."""
        cols = linear_shape(spec)[1]
        if cols % NVFP4_GROUP:
            raise MalformedFileError(f"{source}: {spec.role} has {cols} inputs; NVFP4 needs "
                                     f"a multiple of {NVFP4_GROUP}")

    def read(self, stored: StoredParts, spec: TensorSpec) -> Any:
        """An `NVFP4Linear`. Refused where the Linears engines fuse with it (q/k/v, an
        expert's gate and up) have another global scale: an engine scales the fused matrix by
        one of them (vLLM by the first, warning), which would compute the others wrong."""
        fused = stored.fused_floats("weight_global_scale")
        values = {name: value.reshape(-1) for name, value in fused.items()}
        for name, value in values.items():
            if value.shape != (1,) or not np.isfinite(value[0]) or value[0] <= 0:
                raise MalformedFileError(f"{name}: a weight_global_scale must be one positive "
                                         f"float, found {value[:4].tolist()}")
        first = next(iter(values.values()))
        if any(v[0] != first[0] for v in values.values()):
            raise MalformedFileError(f"{' and '.join(values)}: the weight_global_scale of fused "
                                     f"Linears differ ({', '.join(str(v) for v in values.values())}"
                                     "); engines fuse them and use one global scale")
        inputs = None
        if self.activations:
            inputs = stored.floats("input_global_scale").reshape(-1)
            if inputs.shape != (1,) or not np.isfinite(inputs[0]) or inputs[0] <= 0:
                raise MalformedFileError(f"{spec.name}: input_global_scale must be one positive "
                                         f"float, found {inputs[:4].tolist()}")
        return NVFP4Linear(stored.tensor("weight_packed"), stored.tensor("weight_scale"),
                           np.float32(stored.floats("weight_global_scale").reshape(-1)[0]),
                           None if inputs is None else np.float32(inputs[0]))

    def card(self) -> tuple[str, list[str]]:
        """NVFP4, and the hardware that serves it."""
        if self.activations:
            return (f"compressed-tensors {self.name} W4A4: NVFP4 weights (e2m1, an e4m3 scale "
                    "per 16 inputs, a float32 global scale per Linear) and NVFP4 activations "
                    "with calibrated global scales: needs FP4 tensor cores (NVIDIA Blackwell, "
                    "B200/GB200 or newer) to be served; below Blackwell SGLang falls back to "
                    "its weight-only Marlin MoE, which refuses Grok-1's GELU experts",
                    ["compressed-tensors", "nvfp4"])
        return (f"compressed-tensors {self.name} weights only (NVFP4A16): e2m1 values, an e4m3 "
                "scale per 16 inputs, a float32 global scale per Linear (shared by q/k/v and by "
                "each expert's gate and up); bf16 activations", ["compressed-tensors", "nvfp4"])

    def label(self) -> str:
        """nvfp4 or nvfp4-a16."""
        return "nvfp4" if self.activations else "nvfp4-a16"

    def group(self) -> dict[str, Any]:
        """The NVFP4 or NVFP4A16 preset group."""
        return {"weights": _args(False),
                "input_activations": _args("local") if self.activations
                else None, "output_activations": None, "format": self.name}

    @classmethod
    def recognises(cls, group: dict[str, Any]) -> bool:
        """Named nvfp4-pack-quantized, or (unnamed) 4-bit float weights in groups of 16."""
        return is_fp4_group(group, cls.name, NVFP4_GROUP)

    @classmethod
    def from_group(cls, name: str, weights: dict[str, Any], source: str) -> NVFP4PackQuantized:
        """4-bit symmetric float weights, one global scale, groups of 16."""
        check_fp4_weights(weights, group_size=NVFP4_GROUP, strategy="tensor_group",
                          label="NVFP4", group=name, source=source)
        return cls()

    @classmethod
    def from_config_group(cls, name: str, group: dict[str, Any],
                          source: str) -> NVFP4PackQuantized:
        """NVFP4 weights; W4A4 where the group quantizes inputs (NVFP4, by tensor group, with
        a stored global scale)."""
        cls.from_group(name, group["weights"], source)
        inputs = group.get("input_activations")
        if inputs is None:
            return cls()
        if not isinstance(inputs, dict) or inputs.get("num_bits") != 4 or inputs.get(
                "type") != "float" or inputs.get("strategy") != "tensor_group" or inputs.get(
                "group_size") != NVFP4_GROUP:
            raise MalformedFileError(f"{source}: quantization config group {name!r}: NVFP4 "
                                     "input activations are 4-bit floats, strategy "
                                     f"tensor_group, group_size {NVFP4_GROUP}")
        return cls(activations=True)


@dataclasses.dataclass(frozen=True, eq=False)
class NVFP4Linear:
    """One Linear in NVFP4 ([out, in]): packed e2m1 codes, e4m3 scale bits (uint8) and the
    float32 global scale; W4A4 also the global scale of its inputs (which the forward then
    quantizes as served)."""

    packed: np.ndarray
    scale: np.ndarray
    global_scale: np.float32
    input_global_scale: np.float32 | None = None

    def dequantize(self) -> np.ndarray:
        """float32 weights in the canonical [in, out] orientation: value * (scale / global)."""
        per = e4m3_to_f32(self.scale) / np.float32(self.global_scale)
        values = e2m1_values(unpack_nibbles(self.packed))
        values *= np.repeat(per, NVFP4_GROUP, axis=1)
        return np.ascontiguousarray(values.T)
