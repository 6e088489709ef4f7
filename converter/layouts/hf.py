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
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from converter.dtypes import FLOATS, by_safetensors, by_torch
from converter.engine.executors import ordered_map
from converter.errors import (
    CheckpointNotFoundError,
    Grok1Error,
    LayoutError,
    MalformedFileError,
    MappingError,
    ShapeMismatchError,
    UsageError,
)
from converter.files.atomic import atomic_open
from converter.files.safe_read import read_json
from converter.files.shards import (
    Entry,
    SafetensorsReader,
    SafetensorsWriter,
    TorchShardReader,
    TorchShardWriter,
    tensor_digest,
)
from converter.formats import (
    LinearFormat,
    StackedExperts,
    e4m3_to_f32,
    formats_from_quantization,
    linear_shape,
    model_quantization,
)
from converter.hf_model import AUTO_MAP, MODEL_FILES, write_model_files
from converter.layouts.base import (
    CheckpointReader,
    Layout,
    Target,
    TargetOptions,
    Unit,
    require_folder,
)
from converter.layouts.linears import CONVERT_DTYPES, Linears, convert_linears
from converter.layouts.produce import Producer
from converter.model import ARCHITECTURES, GROK1, Architecture
from converter.model.names import NameScheme, OutputName
from converter.model.spec import TensorSpec
from converter.model.stream import StreamValue
from converter.tensors import QuantizedWeight8bit, bf16_bits_to_f32
from converter.tokenizer import TOKENIZER_FILES, resolve_tokenizer, write_tokenizer

__all__ = ["CONTAINERS", "SAFETENSORS", "TORCH", "Container", "HfCheckpoint", "OutTensor",
           "ShardedTarget", "config_from_hf", "hf_config", "plan_outputs"]


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
class OutTensor:
    """One tensor of the output: its name and origin, safetensors dtype and shape, and the
    canonical spec it is made from."""

    origin: OutputName
    dtype: str
    shape: tuple[int, ...]
    spec: TensorSpec

    @property
    def entry(self) -> Entry:
        """As a shard entry."""
        return Entry(self.origin.name, self.dtype, self.shape)


def plan_outputs(specs: list[TensorSpec], scheme: NameScheme,
                 formats: dict[str, LinearFormat]) -> list[OutTensor]:
    """Every output tensor in write order: globals, then layer by layer in numeric order."""
    ordered = sorted(specs, key=lambda s: (-1 if s.layer is None else s.layer, s.role))
    outputs = []
    for spec in ordered:
        if spec.param.linear:
            fmt = formats[spec.role]
            for origin in scheme.names_for(spec, fmt.parts()):
                dtype, shape = fmt.part(origin.part, spec)
                outputs.append(OutTensor(origin, dtype, shape, spec))
            continue
        part = scheme.plain_part(spec.role)
        shape = spec.out_in_shape
        for origin in scheme.names_for(spec, (part,)):
            outputs.append(OutTensor(origin, "F32", shape, spec))
        if spec.role == "embed" and scheme.tied_lm_head:
            origin = OutputName(scheme.tied_lm_head, "embed", None, None, "lm_head")
            outputs.append(OutTensor(origin, "F32", spec.shape, spec))
    return outputs


def hf_config(architecture: Architecture, config: Any, scheme: NameScheme, torch_dtype: str,
              quantization: dict[str, Any] | None = None) -> dict[str, Any]:
    """config.json for the engines that read it (the architecture's `hf_config` table: each
    engine reads its own keys), plus the exact config under `grok1` and the name scheme."""
    data = architecture.hf_config.write(config, {
        "model_type": architecture.name, "auto_map": dict(AUTO_MAP),
        "tie_word_embeddings": scheme.tied_lm_head is None, "torch_dtype": torch_dtype})
    data.update({"grok1_modules": dataclasses.asdict(scheme.layer_modules),
                 "grok1": config.to_dict(), "grok1_names": scheme.name})
    if scheme.presharded_moe is not None:
        data["load_presharded_moe"] = scheme.presharded_moe
    if quantization:
        data["quantization_config"] = quantization
    return data


def config_from_hf(architecture: Architecture, data: dict[str, Any], source: str) -> Any:
    """The config of an HF config.json: exact when written by this tool (`grok1`), else from
    the keys engines read."""
    if isinstance(data.get("grok1"), dict):
        return architecture.config_type.from_dict(data["grok1"], source=source)
    try:
        return architecture.config_type(**architecture.hf_config.read(data))
    except KeyError as exc:
        raise MalformedFileError(f"{source}: missing key {exc.args[0]!r}") from None
    except UsageError as exc:
        raise MalformedFileError(f"{source}: {exc}") from None


def _architecture(data: dict[str, Any], source: Path) -> Architecture:
    """The architecture of a config.json's `model_type` (Grok-1's when it names none)."""
    model_type = data.get("model_type", GROK1.name)
    if not isinstance(model_type, str) or model_type not in ARCHITECTURES:
        shown = repr(model_type) if isinstance(model_type, str) else type(model_type).__name__
        raise LayoutError(f"{source}: model_type {shown[:80]} is not a supported "
                          f"architecture ({', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[model_type]


class HfCheckpoint:
    """A Hugging Face-style checkpoint (safetensors or torch shards), read lazily."""

    def __init__(self, root: Path, container: Container) -> None:
        self.root = Path(root)
        self.container = container
        self.layout = container.name
        config_path = self.root / "config.json"
        try:
            data = read_json(config_path, "config.json")
        except CheckpointNotFoundError:
            raise LayoutError(f"{config_path}: missing (not a Hugging Face checkpoint)") from None
        if not isinstance(data, dict):
            raise MalformedFileError(f"{config_path}: expected a JSON object, found "
                                     f"{type(data).__name__}")
        self.hf = data
        self.architecture = _architecture(data, config_path)
        self.config = config_from_hf(self.architecture, data, str(config_path))
        self.specs = self.architecture.build_spec(self.config)
        self._shards: dict[str, Any] = {}
        self.weight_map = self._weight_map()
        self.scheme = self._detect_scheme()
        stored = by_torch(str(data.get("torch_dtype")))
        dense = stored.safetensors if stored is not None and stored.floating else "BF16"
        self.formats = formats_from_quantization(data.get("quantization_config"), self.scheme,
                                                 dense, str(config_path))
        for spec in self.specs:
            if spec.param.linear:
                self.formats[spec.role].check(spec, str(config_path))
        parts = {s.role: (self.formats[s.role].parts() if s.param.linear else
                          (self.scheme.plain_part(s.role),)) for s in self.specs}
        self.names = self.scheme.expected(self.specs, parts)
        self._check_total()

    def _weight_map(self) -> dict[str, str]:
        index = self.root / self.container.index_name
        if index.is_file():
            data = read_json(index, "safetensors index")
            if not isinstance(data, dict) or "weight_map" not in data:
                raise MalformedFileError(f"{index}: not an index (no weight_map)")
            weight_map = data["weight_map"]
            return _checked_weight_map(weight_map, index)
        single = self.root / self.container.single_name
        if single.is_file():  # its reader is kept: opening a torch shard reads it for CRCs
            return dict.fromkeys(self.shard(single.name).entries, single.name)
        raise LayoutError(f"{self.root}: no {self.container.index_name} or "
                          f"{self.container.single_name}")

    def _detect_scheme(self) -> NameScheme:
        """The naming scheme: as recorded by this tool, else the one whose layer-0 query
        projection is present."""
        schemes = self.architecture.name_schemes
        named = self.hf.get("grok1_names")
        if named in schemes:
            return schemes[named]
        for candidate in schemes.values():
            prefix = candidate.module(self.architecture.linear_roles[0], layer=0) + "."
            if any(name.startswith(prefix) for name in self.weight_map):
                return candidate
        return self.architecture.scheme()

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

    @cached_property
    def _spec_of(self) -> dict[tuple[str, int | None], TensorSpec]:
        return {(s.role, s.layer): s for s in self.specs}

    def expected(self, name: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """The dtypes a stored tensor may have and the shape it must have."""
        origin = self.names[name]
        spec = self._spec_of[(origin.role, origin.layer)]
        if spec.param.linear:
            fmt = self.formats[origin.role]
            return fmt.accepted(origin.part), fmt.part(origin.part, spec)[1]
        return FLOATS, spec.out_in_shape

    def _entry_problem(self, name: str) -> str | None:
        """What is wrong with one stored tensor's dtype or shape (None when nothing is)."""
        file = self.weight_map[name]
        shard = self.shard(file)
        if name not in shard.entries:
            return f"{self.root / file}: lacks {name} (the index says it is there)"
        dtypes, shape = self.expected(name)
        dtype = shard.dtype(name)
        found = shard.entries[name]
        found = found[0] if isinstance(found, tuple) else found
        if dtype not in dtypes:
            return f"{self.root / file}: {name} is {dtype}, expected {' or '.join(dtypes)}"
        if found.shape != shape:
            return (f"{self.root / file}: {name} has shape {list(found.shape)}, the config "
                    f"implies {list(shape)}")
        return None

    def problems(self) -> list[str]:
        """Every problem `read` would hit, one line each: shards that do not open, tensors of
        the wrong dtype or shape, compressed Linears whose recorded shape is wrong."""
        found: list[str] = []
        for name in sorted(self.names):
            if name not in self.weight_map:
                continue
            try:
                problem = self._entry_problem(name)
                if problem is None and self.names[name].part == "weight_shape":
                    self.check_recorded_shape(name, self.expected_linear_shape(name))
            except Grok1Error as exc:
                problem = str(exc)
            if problem and problem not in found:
                found.append(problem)
        return found

    def expected_linear_shape(self, name: str) -> tuple[int, int]:
        """[out, in] of the Linear a compressed part belongs to."""
        origin = self.names[name]
        return linear_shape(self._spec_of[(origin.role, origin.layer)])

    def check_recorded_shape(self, name: str, expected: tuple[int, int]) -> None:
        """Refuse a compressed Linear whose recorded `weight_shape` is not `expected`."""
        recorded = self.stored(name)
        if recorded.tolist() != list(expected):
            raise MalformedFileError(f"{self.root / self.weight_map[name]}: {name} is "
                                     f"{recorded.tolist()}, expected {list(expected)}")

    def stored(self, name: str) -> np.ndarray:
        """One stored tensor, checked against the dtype and shape the config implies."""
        problem = self._entry_problem(name)
        if problem:
            raise ShapeMismatchError(problem)
        return self.shard(self.weight_map[name]).get(name)

    def stored_floats(self, name: str) -> np.ndarray:
        """One stored floating tensor as float32."""
        array = self.stored(name)
        dtype = by_safetensors(self.shard(self.weight_map[name]).dtype(name)).name
        if dtype == "bf16":
            return bf16_bits_to_f32(array)
        if dtype == "f8_e4m3":
            return e4m3_to_f32(array)
        return np.asarray(array, dtype=np.float32)

    @cached_property
    def by_origin(self) -> dict[tuple[str, int | None, int | None, str], str]:
        """Stored tensor name by (role, layer, expert, part)."""
        return {(o.role, o.layer, o.expert, o.part): n for n, o in self.names.items()}

    def _linear(self, spec: TensorSpec, expert: int | None) -> Any:
        return self.formats[spec.role].read(_StoredLinear(self, spec, expert), spec)

    def byte_ranges(self, spec: TensorSpec) -> list[tuple[Path, int, int]]:
        """(file, offset, length) of every stored tensor `read(spec)` reads (safetensors
        shards; none for torch shards, whose storages are not laid out by name)."""
        ranges = []
        for name, origin in self.names.items():
            if (origin.role, origin.layer) != (spec.role, spec.layer):
                continue
            shard = self.shard(self.weight_map[name])
            if isinstance(shard, SafetensorsReader):
                entry, begin = shard.entries[name]
                ranges.append((shard.path, shard.data_start + begin, entry.nbytes))
        return ranges

    def stored_dtype(self, spec: TensorSpec) -> str | None:
        """The safetensors dtype a plain (non-Linear) tensor is stored in; None for Linears
        and torch shards."""
        if spec.param.linear:
            return None
        name = self.by_origin[(spec.role, spec.layer, None, self.scheme.plain_part(spec.role))]
        shard = self.shard(self.weight_map[name])
        return shard.dtype(name) if isinstance(shard, SafetensorsReader) else None

    def read_expert(self, spec: TensorSpec, expert: int) -> StreamValue:
        """One expert's canonical value ([in, out])."""
        return self._linear(spec, expert)

    def read(self, spec: TensorSpec) -> StreamValue:
        """The canonical value of one spec (stacked experts, [in, out] matrices)."""
        if spec.param.linear and spec.param.expert:
            experts = [self._linear(spec, e) for e in range(spec.shape[0])]
            if all(isinstance(e, QuantizedWeight8bit) for e in experts):
                return QuantizedWeight8bit(np.stack([e.weight for e in experts]),
                                           np.stack([e.scales for e in experts]))
            return StackedExperts(experts)
        if spec.param.linear:
            return self._linear(spec, None)
        name = self.by_origin[(spec.role, spec.layer, None, self.scheme.plain_part(spec.role))]
        if spec.param.matrix:
            return np.ascontiguousarray(self.stored_floats(name).T)
        return self.stored_floats(name)


def _checked_weight_map(weight_map: Any, index: Path) -> dict[str, str]:
    """An index's tensor -> shard map, every shard a plain file name inside the folder."""
    if not isinstance(weight_map, dict):
        raise MalformedFileError(f"{index}: weight_map must map tensor names to shard files, "
                                 f"found {type(weight_map).__name__}")
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or shard in ("", ".", "..") or Path(shard).name != shard \
                or "\\" in shard or "\0" in shard or len(shard.encode()) > 255:
            raise MalformedFileError(f"{index}: {name[:80]} maps to {str(shard)[:80]!r}; shards "
                                     "must be plain file names (at most 255 bytes) inside the "
                                     "checkpoint folder")
        shard_path = index.parent / shard
        if shard_path.is_symlink() and index.parent.resolve() != shard_path.resolve().parent:
            raise MalformedFileError(f"{index}: shard {shard} is a link out of the checkpoint "
                                     "folder")
    return dict(weight_map)


@dataclasses.dataclass(frozen=True)
class _StoredLinear:
    """The stored parts of one (expert's) Linear of an `HfCheckpoint`, for its format."""

    checkpoint: HfCheckpoint
    spec: TensorSpec
    expert: int | None

    def _name(self, part: str) -> str:
        return self.checkpoint.by_origin[(self.spec.role, self.spec.layer, self.expert, part)]

    def tensor(self, part: str) -> np.ndarray:
        """The part as stored."""
        return self.checkpoint.stored(self._name(part))

    def floats(self, part: str) -> np.ndarray:
        """A floating part as float32."""
        return self.checkpoint.stored_floats(self._name(part))

    def check_recorded_shape(self, part: str, shape: tuple[int, int]) -> None:
        """Refuse a recorded shape other than `shape`."""
        self.checkpoint.check_recorded_shape(self._name(part), shape)

    def fused_floats(self, part: str) -> dict[str, np.ndarray]:
        """`part` of every Linear fused with this one (itself included), by tensor name."""
        names = [self.checkpoint.by_origin[(role, self.spec.layer, self.expert, part)]
                 for role in self.checkpoint.architecture.fused_with(self.spec.role)]
        return {name: self.checkpoint.stored_floats(name) for name in names}


@dataclasses.dataclass
class ShardedTarget:
    """HF safetensors or torch.save shards with an index, config.json and friends; its Linears
    are made by a composed `Linears`."""

    container: Container
    names: NameScheme
    linears: Linears
    shard_size: int
    tokenizer: Path | None = None
    threads: int = 1

    def settings(self) -> dict[str, Any]:
        """What identifies this output for --resume."""
        return {"to": self.container.name, "names": self.names.name,
                "shard_size": self.shard_size, **self.linears.settings()}

    def outputs(self, reader: CheckpointReader) -> list[OutTensor]:
        """Every output tensor in order."""
        return plan_outputs(reader.specs, self.names, self.linears.formats)

    def plan(self, reader: CheckpointReader) -> list[Unit]:
        """Greedy shards of at most shard_size bytes (a larger tensor gets its own)."""
        shards: list[list[OutTensor]] = [[]]
        size = 0
        for out in self.outputs(reader):
            nbytes = out.entry.nbytes
            if shards[-1] and size + nbytes > self.shard_size:
                shards.append([])
                size = 0
            shards[-1].append(out)
            size += nbytes
        names = ([self.container.single_name] if len(shards) == 1 else
                 [self.container.shard_name.format(index=i + 1, count=len(shards))
                  for i in range(len(shards))])
        return [Unit(name, sum(o.entry.nbytes for o in shard), tuple(shard))
                for name, shard in zip(names, shards, strict=True)]

    def write(self, reader: CheckpointReader, unit: Unit, dst: Path) -> dict[str, Any]:
        """Write one shard, tensor by tensor; returns its sha256, each tensor's, and what the
        Linears reported."""
        produce = Producer(reader, self.linears, self.names)

        def make(outs: list[OutTensor]) -> list[tuple[np.ndarray, str]]:
            return [_hashed(produce(o.spec, o.origin)) for o in outs]

        with self.container.writer(dst / unit.path, [o.entry for o in unit.items]) as writer:
            for outs, made in ordered_map(make, _made_together(unit.items), self.threads):
                for out, (array, digest) in zip(outs, made, strict=True):
                    writer.write(out.origin.name, array, digest)
        return {"sha256": writer.file_sha256, "tensors": writer.digests, **produce.summary()}

    def prepare_run(self, reader: CheckpointReader, dst: Path, quiet: bool) -> None:
        """Whatever the Linears must know before the first is made (a calibration, resumed
        from what a run cut short saved in `dst`)."""
        self.linears = self.linears.prepare_run(reader, dst, quiet)

    def final_files(self, units: list[Unit]) -> list[str]:
        """The files `finalize` writes, known before any unit is."""
        names = ["config.json", "generation_config.json", *MODEL_FILES]
        if self.tokenizer is not None:
            names += list(TOKENIZER_FILES)
        names += self.linears.report_files()
        if len(units) > 1:
            names.append(self.container.index_name)
        return names

    def finalize(self, reader: CheckpointReader, units: list[Unit], dst: Path,
                 records: dict[str, Any]) -> None:
        """config.json, generation_config.json, tokenizer, reports; the index last."""
        formats = self.linears.formats
        quantized = any(f.quantized for f in formats.values())
        quant = model_quantization(self.names, formats)
        dense = by_safetensors("BF16" if quantized else
                               next(iter(formats.values())).compute_dtype)
        _write_json(dst / "config.json", hf_config(reader.architecture, reader.config,
                                                   self.names, dense.torch, quant))
        c = reader.config
        _write_json(dst / "generation_config.json", {
            "bos_token_id": c.bos_token, "eos_token_id": c.eos_token,
            "pad_token_id": c.pad_token, "_from_model_config": True})
        write_model_files(dst)
        if self.tokenizer is not None:
            write_tokenizer(dst, self.tokenizer, max_length=c.max_seq_len)
        for name, text in self.linears.reports(records).items():  # text, or PNG bytes
            with atomic_open(dst / name) as f:
                f.write(text if isinstance(text, bytes) else text.encode())
        if len(units) > 1:
            weight_map = {o.origin.name: u.path for u in units for o in u.items}
            _write_json(dst / self.container.index_name, {
                "metadata": {"total_size": sum(u.nbytes for u in units)},
                "weight_map": weight_map})


def _made_together(items: tuple[OutTensor, ...]) -> list[list[OutTensor]]:
    """The unit's tensors in order, the consecutive parts of one Linear (one expert's) in one
    list: what one thread makes at once."""
    def linear(out: OutTensor) -> tuple[str, int | None] | None:
        role = out.spec.param
        return (out.spec.name, out.origin.expert if role.expert else None) if role.linear else None

    groups: list[list[OutTensor]] = []
    for out in items:
        key = linear(out)
        if groups and key is not None and linear(groups[-1][-1]) == key:
            groups[-1].append(out)
        else:
            groups.append([out])
    return groups


def _hashed(array: np.ndarray) -> tuple[np.ndarray, str]:
    return array, tensor_digest(array)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_open(path) as f:
        f.write((json.dumps(data, indent=2) + "\n").encode())


def _describe(path: Path, container: Container) -> dict[str, Any]:
    """What `inspect` reports of an HF-style checkpoint."""
    checkpoint = HfCheckpoint(path, container)
    problems = checkpoint.problems()
    tensors = []
    for name, file in sorted(checkpoint.weight_map.items()):
        try:
            entry = checkpoint.shard(file).entries[name]
        except (Grok1Error, KeyError):
            continue  # already among the problems
        entry = entry[0] if isinstance(entry, tuple) else entry
        tensors.append({"name": name, "file": file, "shape": list(entry.shape),
                        "dtype": entry.dtype, "scales_shape": None, "scale_groups": None,
                        "bytes": entry.nbytes})
    return {"location": str(path), "config_source": str(path / "config.json"),
            "config": checkpoint.config.to_dict(), "tensors": tensors,
            "parameters": sum(s.numel for s in checkpoint.specs), "problems": problems,
            "names": checkpoint.scheme.name,
            "quantization": (checkpoint.hf.get("quantization_config") or {}).get("format")}


def _target(container: Container) -> Any:
    def make(reader: CheckpointReader, options: TargetOptions) -> Target:
        linears = options.linears or convert_linears(options.dtype, reader.specs)
        return ShardedTarget(container, reader.architecture.scheme(options.names), linears,
                             options.shard_size,
                             resolve_tokenizer(options.tokenizer, reader.config.vocab))
    return make


def _layout(container: Container, summary: str) -> Layout:
    def detect(path: Path) -> bool:
        return (path / container.index_name).is_file() or (path / container.single_name).is_file()

    return Layout(name=container.name, summary=summary, detect=detect,
                  open=lambda path: HfCheckpoint(require_folder(path), container),
                  describe=lambda path: _describe(path, container), target=_target(container),
                  takes_names=True, dtypes=CONVERT_DTYPES)


SAFETENSORS = _layout(CONTAINERS["hf"], "sharded safetensors + config.json (vLLM, SGLang)")
TORCH = _layout(CONTAINERS["torch"], "sharded torch.save files + config.json")
