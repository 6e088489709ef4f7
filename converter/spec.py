"""The Grok-1 parameter tree, derived from a `Grok1Config`: the single source of truth.

Each parameter has a role (what it is in the forward pass), a canonical name (the original JAX
path, e.g. `transformer/decoder_layer_7/moe/linear_1/w`), a logical shape, whether the release
stores it as int8 codes plus bf16 scales, its number of scale groups G along the input axis, and
its file index. Files follow JAX tree-flatten order: module paths sorted as strings, so layer 10
comes before layer 2.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator

from converter.config import Grok1Config

__all__ = ["EXPERT_ROLES", "LINEAR_ROLES", "ROLE", "ROLES", "ParamRole",
           "TensorSpec", "build_spec", "file_name"]

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
    shape: Callable[[Grok1Config], Shape]
    kind: str
    expert: bool = False
    grouped: bool = False

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


_LAYER = "transformer/decoder_layer_{layer}"

ROLES: tuple[ParamRole, ...] = (
    ParamRole("embed", "language_model/in_out_embed", "embeddings", lambda c: (c.vocab, c.emb),
              "embed"),
    ParamRole("final_norm", "language_model/rms_norm", "scale", lambda c: (c.emb,), "norm"),
    ParamRole("moe_gate", f"{_LAYER}/moe/linear", "w",
              lambda c: (c.experts, c.emb, c.ffn_size), "linear", expert=True),
    ParamRole("moe_down", f"{_LAYER}/moe/linear_1", "w",
              lambda c: (c.experts, c.ffn_size, c.emb), "linear", expert=True, grouped=True),
    ParamRole("moe_up", f"{_LAYER}/moe/linear_v", "w",
              lambda c: (c.experts, c.emb, c.ffn_size), "linear", expert=True),
    ParamRole("attn_k", f"{_LAYER}/multi_head_attention/key", "w",
              lambda c: (c.emb, c.kv_dim), "linear"),
    ParamRole("attn_o", f"{_LAYER}/multi_head_attention/linear", "w",
              lambda c: (c.q_dim, c.emb), "linear", grouped=True),
    ParamRole("attn_q", f"{_LAYER}/multi_head_attention/query", "w",
              lambda c: (c.emb, c.q_dim), "linear"),
    ParamRole("attn_v", f"{_LAYER}/multi_head_attention/value", "w",
              lambda c: (c.emb, c.kv_dim), "linear"),
    ParamRole("pre_attn_norm", f"{_LAYER}/rms_norm", "scale", lambda c: (c.emb,), "norm"),
    ParamRole("post_attn_norm", f"{_LAYER}/rms_norm_1", "scale", lambda c: (c.emb,), "norm"),
    ParamRole("pre_moe_norm", f"{_LAYER}/rms_norm_2", "scale", lambda c: (c.emb,), "norm"),
    ParamRole("post_moe_norm", f"{_LAYER}/rms_norm_3", "scale", lambda c: (c.emb,), "norm"),
    ParamRole("router", f"{_LAYER}/router", "w", lambda c: (c.emb, c.experts), "router"),
)
ROLE: dict[str, ParamRole] = {r.role: r for r in ROLES}
# In a fixed, readable order (attention, then the experts), used wherever roles are listed.
LINEAR_ROLES = ("attn_q", "attn_k", "attn_v", "attn_o", "moe_gate", "moe_up", "moe_down")
EXPERT_ROLES = tuple(r for r in LINEAR_ROLES if ROLE[r].expert)


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


def _leaves(config: Grok1Config) -> Iterator[tuple[str, str, ParamRole, int | None]]:
    for role in ROLES:
        layers = range(config.layers) if role.per_layer else [None]
        for layer in layers:
            module = role.module.format(layer=layer)
            yield module, role.param, role, layer


def build_spec(config: Grok1Config) -> list[TensorSpec]:
    """Every leaf in file order (JAX tree-flatten: module paths sorted as strings)."""
    ordered = sorted(_leaves(config), key=lambda leaf: (leaf[0], leaf[1]))
    return [
        TensorSpec(
            name=f"{module}/{param}",
            role=role.role,
            layer=layer,
            shape=role.shape(config),
            quantized=role.linear,
            scale_groups=config.scale_groups if role.grouped else 1,
            file_index=index,
        )
        for index, (module, param, role, layer) in enumerate(ordered)
    ]
