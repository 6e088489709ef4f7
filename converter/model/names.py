"""How Hugging Face-style layouts name tensors: a `NameScheme` is a table of module templates
keyed by parameter role (each architecture declares its schemes, `converter.model.grok1`).

Templates take `{layer}` and `{expert}`. A Linear's name is its module name (no suffix): the
layout appends `.weight`, or the compressed-tensors parts `.weight_packed`, `.weight_scale`,
`.weight_shape`, `.weight_zero_point`. Nothing else in the project builds or edits tensor names.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator

from converter.model.spec import ParamRole, TensorSpec

__all__ = ["LayerModules", "NameScheme", "OutputName"]


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
    """One naming convention of an architecture: a module template per role and the suffix
    of plain tensors; `roles` and `linear_roles` are the architecture's."""

    name: str
    modules: dict[str, str]
    roles: dict[str, ParamRole]
    linear_roles: tuple[str, ...]
    norm_suffix: str
    tied_lm_head: str | None = None  # an explicit copy of the embeddings under this name
    presharded_moe: bool | None = None  # config.json `load_presharded_moe`, when the loader
    # reads it (SGLang: experts are one tensor each, not pre-split per tensor-parallel rank)
    layer_modules: LayerModules | None = None

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
        return self.norm_suffix if self.roles[role].kind == "norm" else "weight"

    def names_for(self, spec: TensorSpec, parts: tuple[str, ...]) -> Iterator[OutputName]:
        """Output names of one canonical tensor, split per expert, for the given parts."""
        experts = range(spec.shape[0]) if spec.param.expert else [None]
        for expert in experts:
            for part in parts:
                yield OutputName(self.tensor(spec.role, spec.layer, expert, part), spec.role,
                                 spec.layer, expert, part)

    @property
    def expert_roles(self) -> tuple[str, ...]:
        """The Linears stacked per expert, in `linear_roles` order."""
        return tuple(r for r in self.linear_roles if self.roles[r].expert)

    def _regex(self, role: str, layer: str, expert: str) -> str:
        """The module template of a role as a regex, `{layer}` and `{expert}` replaced."""
        template = self.modules[role]
        literal = re.escape(template.replace("{layer}", "\0L").replace("{expert}", "\0E"))
        return literal.replace("\0L", layer).replace("\0E", expert)

    def module_pattern(self, role: str) -> str:
        """A compressed-tensors target regex matching every module of a role."""
        return "re:" + self._regex(role, r"\d+", r"\d+") + "$"

    def locate(self, module: str, roles: tuple[str, ...]) -> tuple[str, int, int] | None:
        """(role, layer, expert) of an expert module name among `roles` (the inverse of
        `module`), or None when it is none of them."""
        for role in roles:
            found = re.fullmatch(self._regex(role, r"(?P<layer>\d+)", r"(?P<expert>\d+)"),
                                 module)
            if found:
                return role, int(found["layer"]), int(found["expert"])
        return None

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


@dataclasses.dataclass(frozen=True)
class LayerModules:
    """The module names inside one decoder layer: what a model class names its attributes.
    config.json carries them (`grok1_modules`), so the shipped transformers model builds the
    same tree."""

    attention: str
    moe: str
    gate: str
    up: str
    down: str
    norm: str
