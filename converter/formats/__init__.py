"""How a Linear is stored: the registered formats, and config.json's `quantization_config` in
both directions.

Each format is one module with one class (`base.LinearFormat`): its parts, how it reads a value
back, and its config: a compressed-tensors config group (`FORMATS`, by compressed-tensors format
name), or a whole quantization_config of its own method (`METHODS`, by `quant_method`: every
Linear of the model then has that format). A new format is one module and one row of either
table; nothing else branches on which format a Linear has.
"""

from __future__ import annotations

from typing import Any

from converter.errors import MalformedFileError
from converter.formats.base import (
    LinearFormat,
    Part,
    StackedExperts,
    StoredParts,
    linear_shape,
    lossless_group_size,
)
from converter.formats.channel_int8 import ChannelInt8, ChannelInt8Linear
from converter.formats.dense import Dense
from converter.formats.float_quantized import (
    E4M3_MAX,
    FloatQuantized,
    FP8Linear,
    e4m3_to_f32,
    expand_scale,
)
from converter.formats.mxfp4 import MXFP4Linear, MXFP4PackQuantized
from converter.formats.nvfp4 import NVFP4Linear, NVFP4PackQuantized
from converter.formats.pack_quantized import (
    PackedLinear,
    PackQuantized,
    pack_codes,
    pack_zero_points,
    unpack_codes,
)
from converter.model.names import NameScheme

__all__ = ["E4M3_MAX", "FORMATS", "METHODS", "ChannelInt8", "ChannelInt8Linear", "Dense",
           "FP8Linear", "FloatQuantized", "LinearFormat", "MXFP4Linear", "MXFP4PackQuantized",
           "NVFP4Linear", "NVFP4PackQuantized", "PackQuantized", "PackedLinear", "Part",
           "StackedExperts", "StoredParts", "config_groups", "e4m3_to_f32", "expand_scale",
           "formats_from_quantization", "ignored_modules", "linear_shape", "lossless_group_size",
           "model_quantization", "pack_codes", "pack_zero_points", "quantization_config",
           "unpack_codes"]

FORMATS: dict[str, type[LinearFormat]] = {
    cls.name: cls for cls in (PackQuantized, NVFP4PackQuantized, MXFP4PackQuantized,
                              FloatQuantized)
}
"""The compressed-tensors formats, by compressed-tensors format name (an unnamed config group
is the first that recognises it: the FP4 formats before float-quantized's any-float rule)."""

METHODS: dict[str, type[ChannelInt8]] = {ChannelInt8.name: ChannelInt8}
"""The formats that are a quantization method of their own, by config.json `quant_method`."""


def model_quantization(scheme: NameScheme, formats: dict[str, LinearFormat]
                       ) -> dict[str, Any] | None:
    """config.json's `quantization_config` for these Linear formats (None: all dense)."""
    if not any(f.quantized for f in formats.values()):
        return None
    own = {f for f in formats.values() if f.name in METHODS}
    if own:
        if len(set(formats.values())) > 1:
            raise ValueError(f"{next(iter(own)).name} holds every Linear of a model; it cannot "
                             "be mixed with other formats")
        return next(iter(own)).model_config()
    return quantization_config(config_groups(scheme, formats), ignored_modules(scheme))


def config_groups(scheme: NameScheme, formats: dict[str, LinearFormat]) -> list[dict[str, Any]]:
    """compressed-tensors config groups: one per distinct format. The experts' group targets
    the class `Linear` (vLLM's fused MoE looks its scheme up by class, never by a module
    regex); any other group names its roles by regex, which takes precedence over a class
    target in compressed-tensors and vLLM alike."""
    by_format: dict[LinearFormat, list[str]] = {}
    for role in scheme.linear_roles:
        by_format.setdefault(formats[role], []).append(role)
    experts = {formats[r] for r in scheme.expert_roles}
    by_class = next(iter(experts)) if len(experts) == 1 else None
    return [{"targets": ["Linear"] if fmt == by_class else
             [scheme.module_pattern(r) for r in roles], **fmt.group()}
            for fmt, roles in by_format.items()]


def ignored_modules(scheme: NameScheme) -> list[str]:
    """Modules that stay unquantized: router, embeddings, lm_head."""
    return [scheme.module_pattern("router"), scheme.module("embed"), "lm_head"]


def quantization_config(groups: list[dict[str, Any]], ignore: list[str]) -> dict[str, Any]:
    """config.json `quantization_config` from `config_groups`' groups."""
    config_groups = {f"group_{index}": group for index, group in enumerate(groups)}
    return {
        "quant_method": "compressed-tensors",
        "format": groups[0]["format"],
        "quantization_status": "compressed",
        "config_groups": config_groups,
        "ignore": ignore,
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
        "sparsity_config": {},
    }


def _group_format(name: str, group: Any, source: str) -> tuple[list[str], LinearFormat]:
    """The targets and Linear format of one compressed-tensors config group, checked."""
    weights = group.get("weights") if isinstance(group, dict) else None
    targets = group.get("targets") if isinstance(group, dict) else None
    if not isinstance(weights, dict) or not (
            isinstance(targets, list) and all(isinstance(x, str) for x in targets)):
        raise MalformedFileError(f"{source}: quantization config group {name!r} needs "
                                 "`targets` (a list of names) and `weights`")
    for cls in FORMATS.values():
        if cls.recognises(group):
            return targets, cls.from_config_group(name, group, source)
    raise MalformedFileError(f"{source}: quantization config group {name!r} is in no supported "
                             f"format (format {group.get('format')!r}, weights type "
                             f"{weights.get('type')!r}; supported: {', '.join(FORMATS)})")


def formats_from_quantization(quantization: Any, scheme: NameScheme, dense_dtype: str,
                              source: str = "config.json") -> dict[str, LinearFormat]:
    """Each Linear role's format, from a config.json `quantization_config` (the inverse of
    `quantization_config(config_groups(...))`)."""
    if not quantization:
        return {role: Dense(dense_dtype) for role in scheme.linear_roles}
    method = quantization.get("quant_method") if isinstance(quantization, dict) else None
    if method in METHODS:
        fmt = METHODS[method].from_model_config(quantization, source)
        return dict.fromkeys(scheme.linear_roles, fmt)
    groups = quantization.get("config_groups") if isinstance(quantization, dict) else None
    if not isinstance(groups, dict):
        raise MalformedFileError(f"{source}: quantization_config has no config_groups object")
    if quantization.get("format", "pack-quantized") not in FORMATS:
        raise MalformedFileError(f"{source}: quantization format {quantization.get('format')!r}"
                                 f" is not supported ({' and '.join(FORMATS)} are)")
    formats: dict[str, LinearFormat] = {}
    named: set[str] = set()  # roles a regex names: a class target does not override them
    for name, group in groups.items():
        targets, fmt = _group_format(name, group, source)
        for role in scheme.linear_roles:
            if scheme.module_pattern(role) in targets:
                formats[role] = fmt
                named.add(role)
            elif "Linear" in targets and role not in named:
                formats[role] = fmt
    missing = [r for r in scheme.linear_roles if r not in formats]
    if missing:
        raise MalformedFileError(f"{source}: quantization_config covers no config group for "
                                 f"{missing}")
    return formats
