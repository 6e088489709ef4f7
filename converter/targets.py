"""Output layouts for the engine: Hugging Face / PyTorch shards, and the original release."""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import json
import shutil
from pathlib import Path
from typing import Any

from converter.atomic import atomic_open
from converter.compressed import quantization_config
from converter.config import save_sidecar
from converter.engine import Unit
from converter.errors import UsageError
from converter.layouts import CheckpointReader
from converter.layouts.hf import (
    CONTAINERS,
    LinearFormat,
    OutTensor,
    hf_config,
    lossless_group_size,
    plan_outputs,
)
from converter.layouts.xai import TENSOR_DIRS, check_value, value_payloads, write_leaf
from converter.names import LINEAR_ROLES, NameScheme
from converter.produce import Producer
from converter.spec import TensorSpec
from converter.tensors import QuantizedWeight8bit, dense

__all__ = ["DTYPE_FORMATS", "ShardedTarget", "XaiTarget", "convert_formats", "lossless_formats",
           "parse_size"]

_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30, "B": 1}


def parse_size(text: str) -> int:
    """'5GB' -> 5_000_000_000; a positive, finite number of bytes."""
    raw = text.strip().upper()
    number, unit = raw, 1
    for suffix in sorted(_UNITS, key=len, reverse=True):
        if raw.endswith(suffix):
            number, unit = raw[: -len(suffix)], _UNITS[suffix]
            break
    try:
        value = float(number) * unit
    except ValueError:
        value = float("nan")
    if not 1 <= value < 2**63:
        raise UsageError(f"cannot use size {text!r}; write a positive size such as 5GB or 500MB")
    return int(value)


DTYPE_FORMATS = {"f32": LinearFormat("dense", "F32"), "bf16": LinearFormat("dense", "BF16")}
TORCH_DTYPE_NAMES = {"F32": "float32", "BF16": "bfloat16"}


def lossless_formats(specs: list[TensorSpec]) -> dict[str, LinearFormat]:
    """int8 pack-quantized formats that hold the release's codes and scales exactly."""
    sizes: dict[str, set[int]] = {}
    for spec in specs:
        if spec.role in LINEAR_ROLES:
            sizes.setdefault(spec.role, set()).add(lossless_group_size(spec))
    return {role: LinearFormat("packed", "BF16", 8, min(found)) for role, found in sizes.items()}


def convert_formats(dtype: str, specs: list[TensorSpec]) -> dict[str, LinearFormat]:
    """Linear formats of `grok1 convert --dtype`: dense f32 / bf16, or lossless int8."""
    if dtype == "int8":
        return lossless_formats(specs)
    if dtype not in DTYPE_FORMATS:
        raise UsageError(f"unknown dtype {dtype!r}; known: {', '.join([*DTYPE_FORMATS, 'int8'])}")
    return dict.fromkeys(LINEAR_ROLES, DTYPE_FORMATS[dtype])


def config_groups(scheme: NameScheme, formats: dict[str, LinearFormat]) -> list[dict[str, Any]]:
    """compressed-tensors config groups: one per distinct format, targeting its roles."""
    by_format: dict[LinearFormat, list[str]] = {}
    for role in LINEAR_ROLES:
        by_format.setdefault(formats[role], []).append(role)
    single = len(by_format) == 1
    return [{"targets": ["Linear"] if single else [scheme.module_pattern(r) for r in roles],
             "num_bits": fmt.bits, "symmetric": fmt.symmetric,
             "strategy": "group" if fmt.group_size else "channel",
             "group_size": fmt.group_size} for fmt, roles in by_format.items()]


def ignored_modules(scheme: NameScheme) -> list[str]:
    """Modules that stay unquantized: router, embeddings, lm_head."""
    return [scheme.module_pattern("router"), scheme.module("embed"), "lm_head"]


@dataclasses.dataclass
class ShardedTarget:
    """HF safetensors or torch.save shards with an index, config.json and friends."""

    container: str
    scheme: NameScheme
    formats: dict[str, LinearFormat]
    shard_size: int
    label: str
    tokenizer: Path | None = None
    extra_files: dict[str, str] = dataclasses.field(default_factory=dict)
    threads: int = 1

    def settings(self) -> dict[str, Any]:
        """What identifies this output for --resume."""
        return {"to": self.container, "names": self.scheme.name, "dtype": self.label,
                "shard_size": self.shard_size}

    def outputs(self, reader: CheckpointReader) -> list[OutTensor]:
        """Every output tensor in order."""
        return plan_outputs(reader.specs, self.scheme, self.formats)

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
        container = CONTAINERS[self.container]
        names = ([container.single_name] if len(shards) == 1 else
                 [container.shard_name.format(index=i + 1, count=len(shards))
                  for i in range(len(shards))])
        return [Unit(name, sum(o.entry.nbytes for o in shard), tuple(shard))
                for name, shard in zip(names, shards, strict=True)]

    def make_producer(self, reader: CheckpointReader) -> Producer:
        """What computes each output tensor."""
        return Producer(reader, {s.name: s for s in reader.specs}, self.formats)

    def write(self, reader: CheckpointReader, unit: Unit, dst: Path) -> dict[str, Any]:
        """Write one shard, tensor by tensor; returns each tensor's sha256 (and the
        producer's summary)."""
        produce = self.make_producer(reader)
        writer_cls = CONTAINERS[self.container].writer
        with writer_cls(dst / unit.path, [o.entry for o in unit.items]) as writer:
            for out, array in ordered_map(produce, unit.items, self.threads):
                writer.write(out.origin.name, array)
        return {"sha256": writer.file_sha256, "tensors": writer.digests, **produce.summary()}

    def final_files(self, units: list[Unit]) -> list[str]:
        """The files `finalize` writes, known before any unit is."""
        names = ["config.json", "generation_config.json"]
        if self.tokenizer is not None:
            names += ["tokenizer.model", "tokenizer_config.json"]
        names += sorted(self.extra_files) + self.report_files()
        if len(units) > 1:
            names.append(CONTAINERS[self.container].index_name)
        return names

    def report_files(self) -> list[str]:
        """Reports a subclass writes beside the shards."""
        return []

    def finalize(self, reader: CheckpointReader, units: list[Unit], dst: Path,
                 records: dict[str, Any]) -> None:
        """config.json, generation_config.json, tokenizer, extras; the index last."""
        packed = any(f.kind == "packed" for f in self.formats.values())
        dense_dtype = next(iter(self.formats.values())).dtype
        quant = quantization_config(config_groups(self.scheme, self.formats),
                                    ignored_modules(self.scheme)) if packed else None
        config = hf_config(reader.config, self.scheme, TORCH_DTYPE_NAMES[dense_dtype], quant)
        _write_json(dst / "config.json", config)
        c = reader.config
        _write_json(dst / "generation_config.json", {
            "bos_token_id": c.bos_token, "eos_token_id": c.eos_token,
            "pad_token_id": c.pad_token, "_from_model_config": True})
        if self.tokenizer is not None:
            shutil.copyfile(self.tokenizer, dst / "tokenizer.model")
            _write_json(dst / "tokenizer_config.json", {
                "tokenizer_class": "LlamaTokenizer", "model_max_length": c.max_seq_len,
                "add_bos_token": False, "add_eos_token": False})
        for name, text in self.extra_files.items():
            with atomic_open(dst / name) as f:
                f.write(text.encode())
        if len(units) > 1:
            weight_map = {o.origin.name: u.path for u in units for o in u.items}
            _write_json(dst / CONTAINERS[self.container].index_name, {
                "metadata": {"total_size": sum(u.nbytes for u in units)},
                "weight_map": weight_map})


def ordered_map(function: Any, items: Any, threads: int) -> Any:
    """Yield (item, function(item)) in order, computing up to `threads` items ahead."""
    if threads <= 1:
        for item in items:
            yield item, function(item)
        return
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        iterator = iter(items)
        pending = collections.deque((item, pool.submit(function, item))
                                    for item in itertools.islice(iterator, threads))
        while pending:
            item, future = pending.popleft()
            result = future.result()
            following = next(iterator, None)
            if following is not None:
                pending.append((following, pool.submit(function, following)))
            yield item, result


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_open(path) as f:
        f.write((json.dumps(data, indent=2) + "\n").encode())


@dataclasses.dataclass
class XaiTarget:
    """The original release layout: one pickle per leaf, byte-identical to the release."""

    threads: int = 1

    def settings(self) -> dict[str, Any]:
        """What identifies this output for --resume."""
        return {"to": "xai"}

    def plan(self, reader: CheckpointReader) -> list[Unit]:
        """One unit per release file."""
        return [Unit(f"{TENSOR_DIRS[0]}/{s.file_name}", s.payload_bytes, (s,))
                for s in reader.specs]

    def write(self, reader: CheckpointReader, unit: Unit, dst: Path) -> dict[str, Any]:
        """Write one release file from the canonical value; returns its sha256."""
        (spec,) = unit.items
        value = reader.read(spec)
        if spec.quantized and not isinstance(value, QuantizedWeight8bit):
            raise UsageError(f"{spec.name}: the original layout needs the release's int8 codes "
                             f"and scales, but the source holds {type(value).__name__} "
                             "weights (convert from an int8 checkpoint)")
        if not spec.quantized:
            value = dense(value)
        path = dst / unit.path
        path.parent.mkdir(parents=True, exist_ok=True)
        check_value(path, spec, value, "the source")
        digest = write_leaf(path, spec, value_payloads(value))
        return {"sha256": digest, "tensors": {spec.name: digest}}

    def final_files(self, units: list[Unit]) -> list[str]:
        """The config sidecar."""
        return ["config.json"]

    def finalize(self, reader: CheckpointReader, units: list[Unit], dst: Path,
                 records: dict[str, Any]) -> None:
        """The config sidecar, last."""
        save_sidecar(dst, reader.config)
