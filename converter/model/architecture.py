"""What a model family is, as data: an `Architecture` names its config type, its parameter
roles (the tree every layout reads and writes), the tensor names of every layout (Hugging Face
schemes and GGUF's), and the forward that runs it. Readers carry theirs (`reader.architecture`);
the code that walks a checkpoint asks it instead of importing one model's tables.

Grok-1's description is `converter.model.grok1`; the registry is `converter.model.ARCHITECTURES`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

from converter.errors import UsageError
from converter.model.names import NameScheme
from converter.model.spec import ParamRole, TensorSpec, build_spec

__all__ = ["ARCHITECTURES", "GIVEN", "Architecture", "ConfigKey", "ConfigTable", "GgufNames",
           "architecture"]


GIVEN = "<given by the writer>"  # a ConfigKey value the writer supplies (a dtype, a scheme)


@dataclasses.dataclass(frozen=True)
class ConfigKey:
    """One key of an engine's config, in write order: it carries config `field`, or a constant
    `value` (GIVEN: the writer supplies it). Read back it fills `field` (or `read_as`, for a
    constant that older writers used for a field) unless `read` is False; a `fallback` key
    counts only when no other key of its field is present, and an `empty_unset` key holding a
    false value (null, 0) counts as absent."""

    key: str
    field: str | None = None
    value: Any = None
    read_as: str | None = None
    fallback: bool = False
    read: bool = True
    empty_unset: bool = False

    @property
    def reads(self) -> str | None:
        """The config field this key gives when read, if any."""
        return (self.field or self.read_as) if self.read else None


@dataclasses.dataclass(frozen=True)
class ConfigTable:
    """A config as one engine's keys (`prefix` before each: GGUF's `grok.`), both ways from
    one table. `required` fields must be present when read; `defaults` derive a missing field
    from those read (the engine's own default); any other missing field takes the config
    type's default."""

    keys: tuple[ConfigKey, ...]
    prefix: str = ""
    required: tuple[str, ...] = ()
    defaults: dict[str, Callable[[dict[str, Any]], Any]] = dataclasses.field(
        default_factory=dict)

    def write(self, config: Any, given: dict[str, Any] | None = None) -> dict[str, Any]:
        """The engine's keys for a config, in table order; GIVEN values from `given`."""
        given = given or {}
        return {self.prefix + k.key: (getattr(config, k.field) if k.field else
                                      given[k.key] if k.value == GIVEN else k.value)
                for k in self.keys}

    def read(self, data: dict[str, Any]) -> dict[str, Any]:
        """Config fields from the engine's keys (the inverse of `write`); KeyError names the
        first key of a missing required field."""
        values: dict[str, Any] = {}
        for fallback in (False, True):
            for k in self.keys:
                name = self.prefix + k.key
                if (k.reads and k.fallback == fallback and k.reads not in values
                        and name in data and not (k.empty_unset and not data[name])):
                    values[k.reads] = data[name]
        for field in self.required:
            if field not in values:
                raise KeyError(self.prefix + next(k.key for k in self.keys if k.reads == field))
        for field, derive in self.defaults.items():
            if field not in values:
                values[field] = derive(values)
        return values


@dataclasses.dataclass(frozen=True)
class GgufNames:
    """llama.cpp's name for the architecture, for each role's tensor (`blk.{layer}.` prefixed
    per layer, `.weight` appended), and its config keys."""

    arch: str
    names: dict[str, str]
    config: ConfigTable

    def tensor(self, spec: TensorSpec) -> str:
        """llama.cpp's name of a canonical tensor."""
        base = self.names[spec.role]
        return f"{base}.weight" if spec.layer is None else f"blk.{spec.layer}.{base}.weight"


@dataclasses.dataclass(frozen=True, eq=False)
class Architecture:
    """One model family: config type, parameter roles, names in every layout, and forward.

    `linear_roles` lists the Linears in a readable order (attention, then experts), the order
    every report and table uses. `forward` names the registry entry of its streamed forward in
    `converter.forward` (the forward sits above the layouts' tier and is looked up there).
    `fused_linears` are the sets of Linears that serving engines fuse into one matrix (q/k/v,
    an expert's gate and up): formats with one scale per tensor (NVFP4's global scale) share
    it across each set.
    """

    name: str
    title: str  # as people write it (a GGUF's general.name, model cards)
    config_type: type
    roles: tuple[ParamRole, ...]
    linear_roles: tuple[str, ...]
    name_schemes: dict[str, NameScheme]
    default_scheme: str
    hf_config: ConfigTable  # config.json (transformers, SGLang, vLLM)
    gguf: GgufNames
    forward: str
    fused_linears: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        if self.name in ARCHITECTURES:
            raise ValueError(f"architecture {self.name!r} is declared twice")
        known = {r.role for r in self.roles}
        linear = {r.role for r in self.roles if r.linear}
        if set(self.linear_roles) != linear:
            raise ValueError(f"{self.name}: linear_roles {self.linear_roles} != {sorted(linear)}")
        for table in (*(s.modules for s in self.name_schemes.values()), self.gguf.names):
            if set(table) != known:
                raise ValueError(f"{self.name}: a name table covers {sorted(table)}, "
                                 f"not the roles {sorted(known)}")
        fused = [r for group in self.fused_linears for r in group]
        if not set(fused) <= linear or len(fused) != len(set(fused)) or any(
                len({self.role[r].expert for r in group}) > 1 for group in self.fused_linears):
            raise ValueError(f"{self.name}: fused_linears {self.fused_linears} must be disjoint "
                             "sets of Linear roles, each all experts or none")
        ARCHITECTURES[self.name] = self  # registered once it is known to be whole

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        """Pickled by name (readers travel to worker processes): the same object on arrival."""
        return architecture, (self.name,)

    @functools.cached_property
    def role(self) -> dict[str, ParamRole]:
        """The roles by name."""
        return {r.role: r for r in self.roles}

    @property
    def expert_roles(self) -> tuple[str, ...]:
        """The Linears stacked per expert, in `linear_roles` order."""
        return tuple(r for r in self.linear_roles if self.role[r].expert)

    def fused_with(self, role: str) -> tuple[str, ...]:
        """The Linear roles fused with `role` into one matrix by engines, itself included."""
        return next((group for group in self.fused_linears if role in group), (role,))

    def build_spec(self, config: Any) -> list[TensorSpec]:
        """Every leaf of a model of this config, in the release's file order."""
        return build_spec(self.roles, config)

    def scheme(self, name: str | None = None) -> NameScheme:
        """A Hugging Face naming scheme by name (None: the default)."""
        name = name or self.default_scheme
        if name not in self.name_schemes:
            raise UsageError(f"unknown name scheme {name!r}; known: "
                             f"{', '.join(self.name_schemes)}")
        return self.name_schemes[name]


# every declared architecture by name (each registers itself when declared)
ARCHITECTURES: dict[str, Architecture] = {}


def architecture(name: str) -> Architecture:
    """A declared architecture by name."""
    if name not in ARCHITECTURES:
        raise UsageError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]
