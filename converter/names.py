"""Tensor names of every Hugging Face-style layout, as tables keyed by parameter role.

Templates take `{layer}` and `{expert}`. A Linear's name is its module name (no suffix): the
layout appends `.weight`, or the compressed-tensors parts `.weight_packed`, `.weight_scale`,
`.weight_shape`, `.weight_zero_point`. Nothing else in the project builds or edits tensor names.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator

from converter.errors import UsageError
from converter.spec import ROLE, TensorSpec

__all__ = ["SCHEMES", "NameScheme", "OutputName", "scheme"]


@dataclasses.dataclass(frozen=True)
class OutputName:
    """Where one output tensor comes from: a canonical spec, an expert, and a part."""

    name: str
    role: str
    layer: int | None
    expert: int | None
    part: str


@dataclasses.dataclass(frozen=True)
class NameScheme:
    """One naming convention: a module template per role and the suffix of plain tensors."""

    name: str
    modules: dict[str, str]
    norm_suffix: str
    tied_lm_head: str | None = None  # an explicit copy of the embeddings under this name
    presharded_moe: bool | None = None  # config.json `load_presharded_moe`, when the loader
    # reads it (SGLang: experts are one tensor each, not pre-split per tensor-parallel rank)

    def module(self, role: str, layer: int | None = None, expert: int | None = None) -> str:
        """The module name of a role's tensor."""
        return self.modules[role].format(layer=layer, expert=expert)

    def module_of(self, out: OutputName) -> str:
        """The module an output tensor belongs to (a Linear's name, for its statistics)."""
        return self.module(out.role, out.layer, out.expert)

    def tensor(self, role: str, layer: int | None, expert: int | None, part: str) -> str:
        """Full tensor name: module plus part (`weight`, `scale`, `weight_packed`, ...)."""
        return f"{self.module(role, layer, expert)}.{part}"

    def plain_part(self, role: str) -> str:
        """The suffix of an unquantized tensor of this role."""
        return self.norm_suffix if ROLE[role].kind == "norm" else "weight"

    def names_for(self, spec: TensorSpec, parts: tuple[str, ...]) -> Iterator[OutputName]:
        """Output names of one canonical tensor, split per expert, for the given parts."""
        experts = range(spec.shape[0]) if ROLE[spec.role].expert else [None]
        for expert in experts:
            for part in parts:
                yield OutputName(self.tensor(spec.role, spec.layer, expert, part), spec.role,
                                 spec.layer, expert, part)

    def module_pattern(self, role: str) -> str:
        """A compressed-tensors target regex matching every module of a role."""
        template = self.modules[role]
        literal = re.escape(template.replace("{layer}", "\0L").replace("{expert}", "\0E"))
        return "re:" + literal.replace("\0L", r"\d+").replace("\0E", r"\d+") + "$"

    def expected(self, specs: list[TensorSpec],
                 parts_of: dict[str, tuple[str, ...]]) -> dict[str, OutputName]:
        """Every tensor name a checkpoint with these specs holds, given each role's parts."""
        table: dict[str, OutputName] = {}
        for spec in specs:
            for out in self.names_for(spec, parts_of[spec.role]):
                table[out.name] = out
        if self.tied_lm_head:
            table[self.tied_lm_head] = OutputName(self.tied_lm_head, "embed", None, None,
                                                  "lm_head")
        return table


_L = "model.layers.{layer}"
SCHEMES: dict[str, NameScheme] = {
    "hpcai": NameScheme(
        name="hpcai",
        modules={
            "embed": "model.embed_tokens", "final_norm": "model.norm",
            "attn_q": f"{_L}.attn.q_proj", "attn_k": f"{_L}.attn.k_proj",
            "attn_v": f"{_L}.attn.v_proj", "attn_o": f"{_L}.attn.o_proj",
            "router": f"{_L}.moe_block.gate",
            "moe_gate": f"{_L}.moe_block.experts.{{expert}}.linear",
            "moe_up": f"{_L}.moe_block.experts.{{expert}}.linear_v",
            "moe_down": f"{_L}.moe_block.experts.{{expert}}.linear_1",
            "pre_attn_norm": f"{_L}.pre_attn_norm", "post_attn_norm": f"{_L}.post_attn_norm",
            "pre_moe_norm": f"{_L}.pre_moe_norm", "post_moe_norm": f"{_L}.post_moe_norm",
        },
        norm_suffix="scale",
    ),
    "sglang": NameScheme(
        name="sglang",
        modules={
            "embed": "model.embed_tokens", "final_norm": "model.norm",
            "attn_q": f"{_L}.self_attn.q_proj", "attn_k": f"{_L}.self_attn.k_proj",
            "attn_v": f"{_L}.self_attn.v_proj", "attn_o": f"{_L}.self_attn.o_proj",
            "router": f"{_L}.block_sparse_moe.gate",
            "moe_gate": f"{_L}.block_sparse_moe.experts.{{expert}}.w1",
            "moe_up": f"{_L}.block_sparse_moe.experts.{{expert}}.w3",
            "moe_down": f"{_L}.block_sparse_moe.experts.{{expert}}.w2",
            "pre_attn_norm": f"{_L}.pre_attn_norm", "post_attn_norm": f"{_L}.post_attn_norm",
            "pre_moe_norm": f"{_L}.pre_moe_norm", "post_moe_norm": f"{_L}.post_moe_norm",
        },
        norm_suffix="weight",
        tied_lm_head="lm_head.weight",
        presharded_moe=False,
    ),
}


def scheme(name: str) -> NameScheme:
    """A naming scheme by name."""
    if name not in SCHEMES:
        raise UsageError(f"unknown name scheme {name!r}; known: {', '.join(SCHEMES)}")
    return SCHEMES[name]
