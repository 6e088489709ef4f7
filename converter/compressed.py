"""How a Linear is stored: dense, or compressed-tensors `pack-quantized`. One module that the
writers and the readers share: the Linear formats, the table of their parts (names, dtypes,
shapes), packing and unpacking, packed Linears, and the config.json `quantization_config` in
both directions.

Checked against the compressed-tensors 0.20.0 package: codes are offset by 2^(bits-1) and packed
low bits first along the input dimension into int32 words (int4: column 8j+k of word j at bits
4k..4k+3), zero points likewise but along the output dimension. These are pure functions; the
quantization math that chooses codes and scales lives in `quant/`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from converter.dtypes import FLOATS
from converter.errors import MalformedFileError
from converter.names import NameScheme
from converter.spec import EXPERT_ROLES, LINEAR_ROLES, TensorSpec
from converter.tensors import bf16_bits_to_f32, dense

__all__ = [
    "PARTS",
    "FP8Linear",
    "LinearFormat",
    "PackedLinear",
    "Part",
    "StackedExperts",
    "config_groups",
    "e4m3_to_f32",
    "formats_from_quantization",
    "ignored_modules",
    "linear_shape",
    "lossless_group_size",
    "pack_codes",
    "quantization_config",
    "unpack_codes",
]


@dataclasses.dataclass(frozen=True)
class LinearFormat:
    """How Linear weights are stored: dense (F32 / BF16) or pack-quantized."""

    kind: str                  # "dense", "packed" (pack-quantized) or "fp8" (float-quantized)
    dtype: str = "BF16"        # dense dtype, or the scale dtype of quantized weights
    bits: int = 8
    group_size: int | None = None  # None: one group per output channel (strategy channel)
    symmetric: bool = True
    block: tuple[int, int] | None = None  # fp8 block strategy: [out, in] per scale

    def parts(self) -> tuple[str, ...]:
        """Tensor name suffixes of one Linear in this format."""
        if self.kind == "dense":
            return ("weight",)
        if self.kind == "fp8":
            return ("weight", "weight_scale")
        return ("weight_packed", "weight_scale", "weight_shape") + (
            () if self.symmetric else ("weight_zero_point",))

    def groups(self, in_features: int) -> int:
        """Number of scale groups along the input dimension."""
        return 1 if self.group_size is None else math.ceil(in_features / self.group_size)

    def scale_shape(self, out: int, cols: int) -> tuple[int, int]:
        """Shape of `weight_scale`: [out, groups], or the block grid of fp8 blocks."""
        if self.block is not None:
            return math.ceil(out / self.block[0]), math.ceil(cols / self.block[1])
        return out, self.groups(cols)

    def accepted(self, name: str) -> tuple[str, ...]:
        """The stored dtypes a reader takes for part `name`: an fp8 weight only as F8_E4M3
        (a BF16 tensor there would be decoded as fp8 bytes), a dense one as any float."""
        if name == "weight":
            return ("F8_E4M3",) if self.kind == "fp8" else FLOATS
        return PARTS[name].accepted

    def check_block(self, spec: TensorSpec, source: str) -> None:
        """An fp8 block no larger than the Linear it tiles (checked before any scale is
        expanded: a block_structure of [1, 4194304] must not allocate gigabytes)."""
        out, cols = linear_shape(spec)
        if self.block is not None and (self.block[0] > out or self.block[1] > cols):
            raise MalformedFileError(f"{source}: fp8 block_structure {list(self.block)} is "
                                     f"larger than the [out, in] = [{out}, {cols}] Linear "
                                     f"{spec.role} it tiles")

    def part(self, name: str, spec: TensorSpec) -> tuple[str, tuple[int, ...]]:
        """(safetensors dtype, shape) of one part of one (expert's) Linear of `spec`."""
        if name not in PARTS:
            raise MalformedFileError(f"unknown Linear part {name!r}")
        part = PARTS[name]
        out, cols = linear_shape(spec)
        dtype = "F8_E4M3" if self.kind == "fp8" and name == "weight" else part.dtype
        return dtype or self.dtype, part.shape(out, cols, self)


@dataclasses.dataclass(frozen=True)
class Part:
    """One stored tensor of a Linear: its dtype (None: the format's), the dtypes a reader
    accepts, and its shape from [out, in] and the format."""

    dtype: str | None
    accepted: tuple[str, ...]
    shape: Callable[[int, int, LinearFormat], tuple[int, ...]]


PARTS: dict[str, Part] = {
    "weight": Part(None, FLOATS, lambda out, cols, f: (out, cols)),
    "weight_packed": Part("I32", ("I32",), lambda out, cols, f: (out, -(-cols * f.bits // 32))),
    "weight_scale": Part(None, FLOATS, lambda out, cols, f: f.scale_shape(out, cols)),
    "weight_shape": Part("I64", ("I64", "I32"), lambda out, cols, f: (2,)),
    "weight_zero_point": Part("I32", ("I32",),
                              lambda out, cols, f: (-(-out * f.bits // 32), f.groups(cols))),
}


def linear_shape(spec: TensorSpec) -> tuple[int, int]:
    """[out, in] of one (expert's) matrix of a canonical [.., in, out] spec."""
    return spec.shape[-1], spec.shape[-2]


def lossless_group_size(spec: TensorSpec) -> int:
    """Group size that holds the release's scales exactly: gcd(128, rows per scale block)."""
    return math.gcd(128, spec.shape[-2] // spec.scale_groups)


def _check_bits(bits: int) -> None:
    if bits not in (4, 8):
        raise ValueError(f"pack-quantized supports 4 and 8 bits, not {bits}")


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Signed codes [rows, cols] (int8) -> int32 words [rows, ceil(cols * bits / 32)].

    Little-endian words packed low bits first are just the offset codes' bytes (8-bit) or
    nibble pairs (4-bit) in order, so packing is a byte-level operation.
    """
    _check_bits(bits)
    rows, cols = codes.shape
    per_word = 32 // bits
    words = -(-cols // per_word)
    offset = np.zeros((rows, words * per_word), np.uint8)
    np.add(np.ascontiguousarray(codes).view(np.uint8), np.uint8(1 << (bits - 1)),
           out=offset[:, :cols])
    if bits == 4:  # byte pairs as little-endian uint16 a | b << 8 -> the byte a | b << 4
        pairs = offset.view("<u2")
        offset = (pairs | (pairs >> 4)).astype(np.uint8)
    return offset.view("<i4")


def unpack_codes(packed: np.ndarray, bits: int, cols: int) -> np.ndarray:
    """int32 words [rows, words] -> signed codes [rows, cols] (int8)."""
    _check_bits(bits)
    raw = np.ascontiguousarray(packed).view(np.uint8)
    if bits == 8:
        return (raw[:, :cols] ^ np.uint8(0x80)).view(np.int8)
    nibbles = np.empty((raw.shape[0], raw.shape[1] * 2), np.uint8)
    nibbles[:, 0::2] = raw & np.uint8(0x0F)
    nibbles[:, 1::2] = raw >> 4
    return (nibbles[:, :cols].astype(np.int16) - 8).astype(np.int8)


@dataclasses.dataclass(frozen=True, eq=False)
class PackedLinear:
    """One Linear in pack-quantized form (PyTorch orientation, [out, in]).

    packed: int32 [out, ceil(in * bits / 32)]; scale: float32 or bf16 bits (uint16)
    [out, n_groups]; zero_point: int32 [ceil(out * bits / 32), n_groups] or None (symmetric).
    """

    packed: np.ndarray
    scale: np.ndarray
    shape: tuple[int, int]
    bits: int
    group_size: int
    zero_point: np.ndarray | None = None

    def scale_f32(self) -> np.ndarray:
        """Scales as float32 [out, n_groups]."""
        if self.scale.dtype == np.uint16:
            return bf16_bits_to_f32(self.scale)
        return self.scale.astype(np.float32)

    def codes(self) -> np.ndarray:
        """Signed codes [out, in]."""
        return unpack_codes(self.packed, self.bits, self.shape[1])

    def zero_points(self) -> np.ndarray:
        """Signed zero points [out, n_groups] (zeros when symmetric)."""
        groups = self.scale.shape[1]
        if self.zero_point is None:
            return np.zeros((self.shape[0], groups), np.int8)
        return unpack_codes(self.zero_point.T.copy(), self.bits, self.shape[0]).T

    def dequantize(self) -> np.ndarray:
        """float32 weights in the canonical [in, out] orientation."""
        group = np.arange(self.shape[1]) // self.group_size
        codes = self.codes().astype(np.float32)
        if self.zero_point is not None:
            codes -= self.zero_points().astype(np.float32)[:, group]
        return np.ascontiguousarray((codes * self.scale_f32()[:, group]).T)


def e4m3_to_f32(bits: np.ndarray) -> np.ndarray:
    """float8 e4m3fn bits (uint8) -> float32, exactly."""
    return _E4M3[np.asarray(bits, np.uint8)]


def _e4m3_table() -> np.ndarray:
    codes = np.arange(256)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exponent, mantissa = (codes >> 3) & 0xF, codes & 0x7
    value = np.where(exponent == 0, mantissa / 8 * 2.0**-6,
                     (1 + mantissa / 8) * 2.0 ** (exponent - 7))
    value[(codes & 0x7F) == 0x7F] = np.nan
    return (sign * value).astype(np.float32)


_E4M3 = _e4m3_table()


@dataclasses.dataclass(frozen=True, eq=False)
class FP8Linear:
    """One Linear in float-quantized form ([out, in]): e4m3 bits (uint8) and float32 scales,
    one per output channel [out, 1] or per block [ceil(out/b0), ceil(in/b1)]."""

    bits: np.ndarray
    scale: np.ndarray
    block: tuple[int, int] | None = None

    def dequantize(self) -> np.ndarray:
        """float32 weights in the canonical [in, out] orientation."""
        scale = expand_scale(np.asarray(self.scale, np.float32), self.bits.shape, self.block)
        return np.ascontiguousarray((e4m3_to_f32(self.bits) * scale).T)


def expand_scale(scale: np.ndarray, shape: tuple[int, int], block: tuple[int, int] | None
                 ) -> np.ndarray:
    """Per-element scales of an [out, in] matrix from per-channel [out, 1] or per-block ones."""
    if block is None:
        return np.broadcast_to(scale, shape)
    rows = np.arange(shape[0]) // block[0]
    cols = np.arange(shape[1]) // block[1]
    return scale[rows[:, None], cols[None, :]]


@dataclasses.dataclass(frozen=True, eq=False)
class StackedExperts:
    """Per-expert values of one stacked canonical tensor, read one expert at a time."""

    experts: list[Any]

    def __getitem__(self, index: int) -> Any:
        return self.experts[index]

    def __len__(self) -> int:
        return len(self.experts)

    def dequantize(self) -> np.ndarray:
        """float32 [E, in, out]."""
        return np.stack([dense(e) for e in self.experts])


def pack_zero_points(zero_points: np.ndarray, bits: int) -> np.ndarray:
    """Signed zero points [out, n_groups] -> int32 packed along the output dimension."""
    return pack_codes(np.ascontiguousarray(zero_points.T), bits).T.copy()


def config_groups(scheme: NameScheme, formats: dict[str, LinearFormat]) -> list[dict[str, Any]]:
    """compressed-tensors config groups: one per distinct format. The experts' group targets
    the class `Linear` (vLLM's fused MoE looks its scheme up by class, never by a module
    regex); any other group names its roles by regex, which takes precedence over a class
    target in compressed-tensors and vLLM alike."""
    by_format: dict[LinearFormat, list[str]] = {}
    for role in LINEAR_ROLES:
        by_format.setdefault(formats[role], []).append(role)
    experts = {formats[r] for r in EXPERT_ROLES}
    by_class = next(iter(experts)) if len(experts) == 1 else None
    return [{"targets": ["Linear"] if fmt == by_class else
             [scheme.module_pattern(r) for r in roles], **_group(fmt)}
            for fmt, roles in by_format.items()]


def _group(fmt: LinearFormat) -> dict[str, Any]:
    """A config group's quantization arguments, as compressed-tensors 0.20.0 writes them."""
    if fmt.kind == "fp8":  # the FP8_DYNAMIC and FP8_BLOCK presets
        block = fmt.block is not None
        weights: dict[str, Any] = {"num_bits": 8, "type": "float", "symmetric": True,
                                   "group_size": None, "strategy": "block" if block else "channel"}
        if block:
            weights["block_structure"] = list(fmt.block)
        weights["dynamic"] = False
        return {"weights": weights,
                "input_activations": {"num_bits": 8, "type": "float", "symmetric": True,
                                      "group_size": 128 if block else None,
                                      "strategy": "group" if block else "token",
                                      "dynamic": True},
                "output_activations": None, "format": "float-quantized"}
    return {"weights": {"num_bits": fmt.bits, "type": "int", "symmetric": fmt.symmetric,
                        "strategy": "group" if fmt.group_size else "channel",
                        "group_size": fmt.group_size, "dynamic": False, "actorder": None,
                        "block_structure": None, "observer": "minmax", "observer_kwargs": {}},
            "input_activations": None, "output_activations": None, "format": "pack-quantized"}


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
    bits, strategy = weights.get("num_bits"), weights.get("strategy")
    group_size, symmetric = weights.get("group_size"), weights.get("symmetric", True)
    if weights.get("type") == "float":
        return targets, _float_format(name, weights, source)
    problems = []
    if bits not in (4, 8) or isinstance(bits, bool):
        problems.append(f"num_bits {bits!r} (pack-quantized holds 4 or 8)")
    if weights.get("type", "int") != "int":
        problems.append(f"type {weights.get('type')!r} (expected int)")
    if strategy not in ("channel", "group"):
        problems.append(f"strategy {strategy!r} (expected channel or group)")
    if strategy == "group" and (isinstance(group_size, bool) or not isinstance(group_size, int)
                                or group_size < 1):
        problems.append(f"group_size {group_size!r}")
    if not isinstance(symmetric, bool):
        problems.append(f"symmetric {symmetric!r}")
    if problems:
        raise MalformedFileError(f"{source}: quantization config group {name!r} has an "
                                 f"unsupported " + ", ".join(problems))
    return targets, LinearFormat("packed", "BF16", bits,
                                 group_size if strategy == "group" else None, symmetric)


def _float_format(name: str, weights: dict[str, Any], source: str) -> LinearFormat:
    """The fp8 (e4m3) format of a float-quantized config group, checked."""
    strategy, block = weights.get("strategy"), weights.get("block_structure")
    valid_block = (isinstance(block, list) and len(block) == 2 and all(
        isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block))
    if weights.get("num_bits") != 8 or strategy not in ("channel", "block") or (
            strategy == "block" and not valid_block) or weights.get("symmetric") is False:
        raise MalformedFileError(f"{source}: quantization config group {name!r}: only 8-bit "
                                 "symmetric float weights by channel or block are supported")
    return LinearFormat("fp8", "F32", 8, None, True,
                        tuple(block) if strategy == "block" else None)


def formats_from_quantization(quantization: Any, scheme: NameScheme, dense_dtype: str,
                              source: str = "config.json") -> dict[str, LinearFormat]:
    """Each Linear role's format, from a config.json `quantization_config` (the inverse of
    `quantization_config(config_groups(...))`)."""
    if not quantization:
        return {role: LinearFormat("dense", dense_dtype) for role in LINEAR_ROLES}
    groups = quantization.get("config_groups") if isinstance(quantization, dict) else None
    if not isinstance(groups, dict):
        raise MalformedFileError(f"{source}: quantization_config has no config_groups object")
    if quantization.get("format", "pack-quantized") not in ("pack-quantized", "float-quantized"):
        raise MalformedFileError(f"{source}: quantization format {quantization.get('format')!r}"
                                 " is not supported (pack-quantized and float-quantized are)")
    formats: dict[str, LinearFormat] = {}
    named: set[str] = set()  # roles a regex names: a class target does not override them
    for name, group in groups.items():
        targets, fmt = _group_format(name, group, source)
        for role in LINEAR_ROLES:
            if scheme.module_pattern(role) in targets:
                formats[role] = fmt
                named.add(role)
            elif "Linear" in targets and role not in named:
                formats[role] = fmt
    missing = [r for r in LINEAR_ROLES if r not in formats]
    if missing:
        raise MalformedFileError(f"{source}: quantization_config covers no config group for "
                                 f"{missing}")
    return formats
