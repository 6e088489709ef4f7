"""A parameter tree as data: the roles of an architecture and the leaves they make for a config.

Each parameter has a role (what it is in the forward pass), a canonical name (the original JAX
path, e.g. `transformer/decoder_layer_7/moe/linear_1/w`), a logical shape, whether the release
stores it as int8 codes plus bf16 scales, its number of scale groups G along the input axis, and
its file index. Files follow JAX tree-flatten order: module paths sorted as strings, so layer 10
comes before layer 2.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

__all__ = ["ParamRole", "TensorSpec", "build_spec", "file_name", "linear_roles"]

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class ParamRole:
    """One kind of parameter: its canonical path template, how its shape follows the config,
    and what it is. `kind` is `linear` (a projection; the release stores it as int8 codes and
    bf16 scales), `router`, `norm` or `embed`. `expert`: stacked per expert on axis 0.
    `grouped`: the release's scales come in G groups along the input axis."""

    role: str
    module: str
    param: str
    shape: tuple[str, ...]  # the config fields that give its dimensions
    kind: str
    expert: bool = False
    grouped: bool = False

    def dims(self, config: Any) -> Shape:
        """Its shape for a config."""
        return tuple(getattr(config, name) for name in self.shape)

    @property
    def per_layer(self) -> bool:
        """Whether this parameter exists once per decoder layer."""
        return "{layer}" in self.module

    @property
    def linear(self) -> bool:
        """A Linear: quantized in the release, the target of every Linear format."""
        return self.kind == "linear"

    @property
    def matrix(self) -> bool:
        """Applied as `x @ W`: stored [in, out] canonically, [out, in] by PyTorch layouts."""
        return self.kind in ("linear", "router")


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One leaf of the parameter tree as the release stores it.

    shape is the logical [.., in, out] shape; for quantized leaves the int8 `weight` has that
    shape and the bf16 `scales` have `scales_shape` = shape with the input axis replaced by G.
    """

    name: str
    role: str
    layer: int | None
    shape: Shape
    quantized: bool
    scale_groups: int
    file_index: int
    param: ParamRole = dataclasses.field(compare=False, repr=False)  # what it is

    @property
    def file_name(self) -> str:
        """The release's file name for this leaf."""
        return file_name(self.file_index)

    @property
    def dtype(self) -> str:
        """Stored dtype of the main array: int8 codes or float32."""
        return "int8" if self.quantized else "float32"

    @property
    def scales_shape(self) -> Shape | None:
        """Shape of the bf16 scales, or None for a float leaf."""
        if not self.quantized:
            return None
        return (*self.shape[:-2], self.scale_groups, self.shape[-1])

    @property
    def out_in_shape(self) -> Shape:
        """The shape as PyTorch-style layouts store it (Hugging Face tensors, GGUF in numpy
        order): a matrix applied as `x @ W` is [.., out, in]; anything else as it is."""
        if self.param.matrix:
            return (*self.shape[:-2], self.shape[-1], self.shape[-2])
        return self.shape

    @property
    def rows_per_scale_group(self) -> int:
        """Input rows each of the release's bf16 scales covers (K / G)."""
        return self.shape[-2] // self.scale_groups

    @property
    def numel(self) -> int:
        """Number of logical parameters."""
        return math.prod(self.shape)

    @property
    def payload_bytes(self) -> int:
        """Bytes of array data in the file (int8 weight + bf16 scales, or float32)."""
        if self.quantized:
            return self.numel + 2 * math.prod(self.scales_shape or ())
        return 4 * self.numel

    @property
    def stored_as(self) -> str:
        """Human description of the stored form (as in the real-index fixture)."""
        if self.quantized:
            return "QuantizedWeight8bit(int8 weight, bf16 scales)"
        return "ndarray float32"


def file_name(index: int) -> str:
    """`tensor{index:05d}_000`, the release's file naming."""
    return f"tensor{index:05d}_000"


def _leaves(roles: tuple[ParamRole, ...], config: Any
            ) -> Iterator[tuple[str, str, ParamRole, int | None]]:
    for role in roles:
        layers = range(config.layers) if role.per_layer else [None]
        for layer in layers:
            module = role.module.format(layer=layer)
            yield module, role.param, role, layer


def build_spec(roles: tuple[ParamRole, ...], config: Any) -> list[TensorSpec]:
    """Every leaf of these roles for a config, in file order (JAX tree-flatten: module paths
    sorted as strings)."""
    ordered = sorted(_leaves(roles, config), key=lambda leaf: (leaf[0], leaf[1]))
    return [
        TensorSpec(
            name=f"{module}/{param}",
            role=role.role,
            layer=layer,
            shape=role.dims(config),
            quantized=role.linear,
            scale_groups=config.scale_groups if role.grouped else 1,
            file_index=index,
            param=role,
        )
        for index, (module, param, role, layer) in enumerate(ordered)
    ]


def linear_roles(specs: list[TensorSpec]) -> tuple[str, ...]:
    """The Linear roles of a parameter tree, each once."""
    return tuple(dict.fromkeys(s.role for s in specs if s.param.linear))
