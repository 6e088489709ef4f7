"""Hugging Face-style layouts: sharded safetensors (vLLM / SGLang) or sharded torch.save files.

A checkpoint is a folder with `config.json`, shards and an index. Tensors are named by a
`NameScheme`, matrices are PyTorch-oriented `[out, in]`, experts are one tensor each, norms,
router and embeddings are float32, and Linears are either dense (f32 / bf16) or compressed-tensors
`pack-quantized`. The reader maps every tensor back to the canonical stream and refuses any
checkpoint whose names do not map totally.
"""

from __future__ import annotations

import dataclasses
import json
import math
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from converter.compressed import PackedLinear, StackedExperts
from converter.config import Grok1Config
from converter.containers import (
    Entry,
    SafetensorsReader,
    SafetensorsWriter,
    TorchShardReader,
    TorchShardWriter,
)
from converter.errors import LayoutError, MalformedFileError, MappingError, ShapeMismatchError
from converter.names import EXPERT_ROLES, LINEAR_ROLES, SCHEMES, NameScheme, OutputName
from converter.spec import TensorSpec, build_spec
from converter.tensors import QuantizedWeight8bit, bf16_bits_to_f32, transposed

__all__ = ["CONTAINERS", "Container", "HfCheckpoint", "LinearFormat", "OutTensor",
           "config_from_hf", "hf_config", "lossless_group_size", "plan_outputs"]


@dataclasses.dataclass(frozen=True)
class Container:
    """A shard file format and its file names."""

    name: str
    shard_name: str
    single_name: str
    index_name: str
    writer: type
    reader: type


CONTAINERS = {
    "hf": Container("hf", "model-{index:05d}-of-{count:05d}.safetensors", "model.safetensors",
                    "model.safetensors.index.json", SafetensorsWriter, SafetensorsReader),
    "torch": Container("torch", "pytorch_model-{index:05d}-of-{count:05d}.bin",
                       "pytorch_model.bin", "pytorch_model.bin.index.json", TorchShardWriter,
                       TorchShardReader),
}


@dataclasses.dataclass(frozen=True)
class LinearFormat:
    """How Linear weights are stored: dense (F32 / BF16) or pack-quantized."""

    kind: str                  # "dense" or "packed"
    dtype: str = "BF16"        # dense dtype, or the scale dtype of packed weights
    bits: int = 8
    group_size: int | None = None  # None: one group per output channel (strategy channel)
    symmetric: bool = True

    def parts(self) -> tuple[str, ...]:
        """Tensor name suffixes of one Linear in this format."""
        if self.kind == "dense":
            return ("weight",)
        return ("weight_packed", "weight_scale", "weight_shape") + (
            () if self.symmetric else ("weight_zero_point",))

    def groups(self, in_features: int) -> int:
        """Number of scale groups along the input dimension."""
        return 1 if self.group_size is None else math.ceil(in_features / self.group_size)


def lossless_group_size(spec: TensorSpec) -> int:
    """Group size that holds the release's scales exactly: gcd(128, rows per scale block)."""
    return math.gcd(128, spec.shape[-2] // spec.scale_groups)


@dataclasses.dataclass(frozen=True)
class OutTensor:
    """One tensor of the output: its name and origin, safetensors dtype and shape."""

    origin: OutputName
    dtype: str
    shape: tuple[int, ...]

    @property
    def entry(self) -> Entry:
        """As a shard entry."""
        return Entry(self.origin.name, self.dtype, self.shape)


def _linear_shape(spec: TensorSpec) -> tuple[int, int]:
    """[out, in] of one (expert's) matrix."""
    return spec.shape[-1], spec.shape[-2]


def _part_layout(spec: TensorSpec, part: str, fmt: LinearFormat) -> tuple[str, tuple[int, ...]]:
    out, cols = _linear_shape(spec)
    if part == "weight":
        return fmt.dtype, (out, cols)
    if part == "weight_packed":
        return "I32", (out, math.ceil(cols * fmt.bits / 32))
    if part == "weight_scale":
        return fmt.dtype, (out, fmt.groups(cols))
    if part == "weight_shape":
        return "I64", (2,)
    if part == "weight_zero_point":
        return "I32", (math.ceil(out * fmt.bits / 32), fmt.groups(cols))
    raise MappingError(f"unknown Linear part {part!r}")


def plan_outputs(specs: list[TensorSpec], scheme: NameScheme,
                 formats: dict[str, LinearFormat]) -> list[OutTensor]:
    """Every output tensor in write order: globals, then layer by layer in numeric order."""
    ordered = sorted(specs, key=lambda s: (-1 if s.layer is None else s.layer, s.role))
    outputs = []
    for spec in ordered:
        if spec.role in LINEAR_ROLES:
            fmt = formats[spec.role]
            for origin in scheme.names_for(spec, fmt.parts()):
                dtype, shape = _part_layout(spec, origin.part, fmt)
                outputs.append(OutTensor(origin, dtype, shape))
            continue
        part = scheme.plain_part(spec.role)
        shape = spec.shape[::-1] if spec.role == "router" else spec.shape
        for origin in scheme.names_for(spec, (part,)):
            outputs.append(OutTensor(origin, "F32", shape))
        if spec.role == "embed" and scheme.tied_lm_head:
            origin = OutputName(scheme.tied_lm_head, "embed", None, None, "lm_head")
            outputs.append(OutTensor(origin, "F32", spec.shape))
    return outputs


def hf_config(config: Grok1Config, scheme: NameScheme, torch_dtype: str,
              quantization: dict[str, Any] | None = None) -> dict[str, Any]:
    """config.json for vLLM / SGLang, plus the exact Grok-1 config under `grok1`."""
    data: dict[str, Any] = {
        "architectures": ["Grok1ModelForCausalLM"],
        "model_type": "grok-1",
        "vocab_size": config.vocab,
        "hidden_size": config.emb,
        "intermediate_size": config.ffn_size,
        "num_hidden_layers": config.layers,
        "num_attention_heads": config.q_heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.key_size,
        "num_experts": config.experts,
        "num_local_experts": config.experts,
        "num_experts_per_tok": config.topk,
        "attn_output_multiplier": config.attn_mult,
        "max_attn_value": config.attn_softcap,
        "embedding_multiplier_scale": config.emb_mult,
        "output_multiplier_scale": config.out_mult,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_base,
        "max_position_embeddings": config.max_seq_len,
        "tie_word_embeddings": scheme.tied_lm_head is None,
        "torch_dtype": torch_dtype,
        "pad_token_id": config.pad_token,
        "bos_token_id": config.bos_token,
        "eos_token_id": config.eos_token,
        "grok1": config.to_dict(),
        "grok1_names": scheme.name,
    }
    if scheme.name == "sglang":
        data["load_presharded_moe"] = False
    if quantization:
        data["quantization_config"] = quantization
    return data


def config_from_hf(data: dict[str, Any], source: str) -> Grok1Config:
    """The Grok-1 config of an HF config.json (exact when written by this tool)."""
    if isinstance(data.get("grok1"), dict):
        return Grok1Config.from_dict(data["grok1"], source=source)
    try:
        return Grok1Config(
            layers=data["num_hidden_layers"], emb=data["hidden_size"],
            q_heads=data["num_attention_heads"], kv_heads=data["num_key_value_heads"],
            key_size=data.get("head_dim", data["hidden_size"] // data["num_attention_heads"]),
            vocab=data["vocab_size"], experts=data.get("num_local_experts", data.get(
                "num_experts", 8)), topk=data.get("num_experts_per_tok", 2),
            ffn_size=data["intermediate_size"],
            emb_mult=data.get("embedding_multiplier_scale", Grok1Config.emb_mult),
            out_mult=data.get("output_multiplier_scale", Grok1Config.out_mult),
            attn_mult=data.get("attn_output_multiplier", Grok1Config.attn_mult),
            attn_softcap=data.get("max_attn_value", 30.0),
            rope_base=data.get("rope_theta", 10000.0), rms_norm_eps=data.get("rms_norm_eps", 1e-5),
            max_seq_len=data.get("max_position_embeddings", 8192))
    except KeyError as exc:
        raise MalformedFileError(f"{source}: missing key {exc.args[0]!r}") from None


def formats_from_quantization(quantization: dict[str, Any] | None, scheme: NameScheme,
                              dense_dtype: str) -> dict[str, LinearFormat]:
    """Each Linear role's format, from a config.json `quantization_config`."""
    if not quantization:
        return {role: LinearFormat("dense", dense_dtype) for role in LINEAR_ROLES}
    formats: dict[str, LinearFormat] = {}
    for group in quantization.get("config_groups", {}).values():
        weights = group["weights"]
        fmt = LinearFormat("packed", "BF16", weights["num_bits"],
                           weights.get("group_size") if weights.get("strategy") == "group"
                           else None, weights.get("symmetric", True))
        for role in LINEAR_ROLES:
            if group["targets"] == ["Linear"] or scheme.module_pattern(role) in group["targets"]:
                formats[role] = fmt
    missing = [r for r in LINEAR_ROLES if r not in formats]
    if missing:
        raise MalformedFileError(f"quantization_config covers no config group for {missing}")
    return formats


class HfCheckpoint:
    """A Hugging Face-style checkpoint (safetensors or torch shards), read lazily."""

    def __init__(self, root: Path, container: Container) -> None:
        self.root = Path(root)
        self.container = container
        self.layout = container.name
        config_path = self.root / "config.json"
        try:
            data = json.loads(config_path.read_text())
        except FileNotFoundError:
            raise LayoutError(f"{config_path}: missing (not a Hugging Face checkpoint)") from None
        except json.JSONDecodeError as exc:
            raise MalformedFileError(f"{config_path}: not valid JSON ({exc})") from None
        self.hf = data
        self.config = config_from_hf(data, str(config_path))
        self.specs = build_spec(self.config)
        self.weight_map = self._weight_map()
        self.scheme = self._detect_scheme()
        dense = "F32" if data.get("torch_dtype") == "float32" else "BF16"
        self.formats = formats_from_quantization(data.get("quantization_config"), self.scheme,
                                                 dense)
        parts = {r: (self.formats[r].parts() if r in LINEAR_ROLES else
                     (self.scheme.plain_part(r),)) for r in (s.role for s in self.specs)}
        self.names = self.scheme.expected(self.specs, parts)
        self._check_total()
        self._shards: dict[str, Any] = {}

    def _weight_map(self) -> dict[str, str]:
        index = self.root / self.container.index_name
        if index.is_file():
            try:
                return dict(json.loads(index.read_text())["weight_map"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise MalformedFileError(f"{index}: not a valid index ({exc})") from None
        single = self.root / self.container.single_name
        if single.is_file():
            return dict.fromkeys(self.container.reader(single).entries, single.name)
        raise LayoutError(f"{self.root}: no {self.container.index_name} or "
                          f"{self.container.single_name}")

    def _detect_scheme(self) -> NameScheme:
        """The naming scheme: as recorded by this tool, else the one whose layer-0 query
        projection is present."""
        named = self.hf.get("grok1_names")
        if named in SCHEMES:
            return SCHEMES[named]
        for candidate in SCHEMES.values():
            prefix = candidate.module("attn_q", layer=0) + "."
            if any(name.startswith(prefix) for name in self.weight_map):
                return candidate
        return SCHEMES["hpcai"]

    def _check_total(self) -> None:
        unmapped = sorted(set(self.weight_map) - set(self.names))
        missing = sorted(set(self.names) - set(self.weight_map))
        if unmapped or missing:
            def show(items: list[str]) -> str:
                return ", ".join(items[:8]) + (f" and {len(items) - 8} more" if len(items) > 8
                                               else "")
            problems = []
            if unmapped:
                problems.append(f"{len(unmapped)} unmapped tensors: {show(unmapped)}")
            if missing:
                problems.append(f"{len(missing)} missing tensors: {show(missing)}")
            raise MappingError(f"{self.root} ({self.scheme.name} names): " + "; ".join(problems))

    def source_files(self) -> list[Path]:
        """Every file this checkpoint is read from: config, index and shards."""
        index = self.root / self.container.index_name
        return ([self.root / "config.json"] + ([index] if index.is_file() else [])
                + [self.root / f for f in sorted(set(self.weight_map.values()))])

    def shard(self, file: str) -> Any:
        """The reader of one shard file (opened once)."""
        if file not in self._shards:
            self._shards[file] = self.container.reader(self.root / file)
        return self._shards[file]

    def _tensor(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """One stored tensor, checked against the shape the spec implies."""
        file = self.weight_map[name]
        shard = self.shard(file)
        if name not in shard.entries:
            raise MalformedFileError(f"{self.root / file}: lacks {name} (the index says it "
                                     "is there)")
        array = shard.get(name)
        if shape is not None and array.shape != shape:
            raise ShapeMismatchError(f"{self.root / file}: {name} has shape "
                                     f"{list(array.shape)}, the config implies {list(shape)}")
        return array

    def _float(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        array = self._tensor(name, shape)
        dtype = self.shard(self.weight_map[name]).dtype(name)
        if dtype == "BF16":
            return bf16_bits_to_f32(array)
        if dtype not in ("F32", "F16"):
            raise ShapeMismatchError(f"{self.root / self.weight_map[name]}: {name} is {dtype}, "
                                     "expected a float tensor")
        return np.asarray(array, dtype=np.float32)

    @cached_property
    def _by_origin(self) -> dict[tuple[str, int | None, int | None, str], str]:
        return {(o.role, o.layer, o.expert, o.part): n for n, o in self.names.items()}

    def _linear(self, spec: TensorSpec, expert: int | None) -> Any:
        fmt = self.formats[spec.role]

        def name(part: str) -> str:
            return self._by_origin[(spec.role, spec.layer, expert, part)]

        out, cols = _linear_shape(spec)
        if fmt.kind == "dense":
            return np.ascontiguousarray(self._float(name("weight"), (out, cols)).T)
        shape = tuple(int(x) for x in self._tensor(name("weight_shape"), (2,)))
        if shape != (out, cols):
            raise MalformedFileError(f"{name('weight_shape')} is {list(shape)}, expected "
                                     f"{[out, cols]}")
        groups = fmt.groups(cols)
        scale = self._tensor(name("weight_scale"), (out, groups))
        packed = PackedLinear(
            packed=self._tensor(name("weight_packed"), (out, math.ceil(cols * fmt.bits / 32))),
            scale=scale, shape=(out, cols), bits=fmt.bits, group_size=fmt.group_size or cols,
            zero_point=None if fmt.symmetric else self._tensor(
                name("weight_zero_point"), (math.ceil(out * fmt.bits / 32), groups)))
        return _as_release_int8(packed, spec) or packed

    def read_expert(self, spec: TensorSpec, expert: int) -> Any:
        """One expert's canonical value ([in, out])."""
        return self._linear(spec, expert)

    def read(self, spec: TensorSpec) -> Any:
        """The canonical value of one spec (stacked experts, [in, out] matrices)."""
        if spec.role in EXPERT_ROLES:
            experts = [self._linear(spec, e) for e in range(spec.shape[0])]
            if all(isinstance(e, QuantizedWeight8bit) for e in experts):
                return QuantizedWeight8bit(np.stack([e.weight for e in experts]),
                                           np.stack([e.scales for e in experts]))
            return StackedExperts(experts)
        if spec.role in LINEAR_ROLES:
            return self._linear(spec, None)
        name = self._by_origin[(spec.role, spec.layer, None, self.scheme.plain_part(spec.role))]
        if spec.role == "router":
            return np.ascontiguousarray(self._float(name, spec.shape[::-1]).T)
        return self._float(name, spec.shape)


def _as_release_int8(packed: PackedLinear, spec: TensorSpec) -> QuantizedWeight8bit | None:
    """The release's (codes, G scales) when an 8-bit packed Linear repeats them exactly."""
    if packed.bits != 8 or packed.zero_point is not None or packed.scale.dtype != np.uint16:
        return None
    cols = packed.shape[1]
    block = cols // spec.scale_groups
    if block % packed.group_size or cols % spec.scale_groups:
        return None
    per_block = block // packed.group_size
    scales = np.ascontiguousarray(packed.scale[:, ::per_block].T)
    if not np.array_equal(np.repeat(scales.T, per_block, axis=1), packed.scale):
        return None
    return QuantizedWeight8bit(transposed(packed.codes()), scales)
