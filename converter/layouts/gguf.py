"""GGUF for llama.cpp (arch `grok`): llama.cpp's split files, written and read here.

A checkpoint is a folder holding `grok-1-DTYPE.gguf`, or llama.cpp's split files
`grok-1-DTYPE-0000K-of-0000N.gguf` (each with `split.no`, `split.count`, `split.tensors.count`;
llama.cpp loads the first and finds the rest). Tensors follow llama.cpp's grok names; experts
are stacked into one tensor per projection and streamed into it one expert at a time. Matrices
are stored as ggml does, rows of the input dimension ([out, in] in numpy order). Metadata
carries every Grok-1 constant from the config (llama.cpp has Grok-1 defaults, test models do
not share them), the exact config as JSON, and the tokenizer as llama.cpp's SentencePiece
("llama") vocabulary.

`--dtype q8_0` keeps the release's int8 codes and uses each code's bf16 scale as the Q8_0 block
scale (exact: every block lies in one scale group, every scale is an exact f16), so the file
dequantizes to exactly the release's weights; a Linear where that cannot hold is stored F32 (by
shape) or quantized from floats (a scale outside f16), and `gguf_report.json` says which.
Norms and the router stay F32; embeddings are F32 for f32 and q8_0 (exact), F16 / BF16 for
those types, Q8_0 for q4_0.

`--dtype mxfp4` is llama.cpp's MXFP4_MOE: the experts in MXFP4 (ggml's rule, as gguf-py's
reference quantizer: the shared exponent floors), everything else as q8_0 (the release's codes
kept where blocks allow, embeddings F32).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import (
    ConfigMismatchError,
    LayoutError,
    MalformedFileError,
    MappingError,
    ShapeMismatchError,
    UsageError,
)
from converter.files.atomic import atomic_open
from converter.files.gguf_file import (
    GGML_TYPES,
    QK,
    GGUFReader,
    GGUFWriter,
    TensorInfo,
    encode,
    q8_0_from_release,
)
from converter.files.safe_read import parse_json
from converter.layouts.base import (
    CheckpointReader,
    Layout,
    Target,
    TargetOptions,
    Unit,
    require_folder,
)
from converter.layouts.linears import dense_transposed
from converter.model import ARCHITECTURES, Architecture
from converter.model.config import Grok1Config
from converter.model.spec import TensorSpec
from converter.tensors import QuantizedWeight8bit, dense, transposed
from converter.tokenizer import read_pieces, resolve_tokenizer

__all__ = ["DTYPES", "LAYOUT", "GgufCheckpoint", "GgufTarget"]

REPORT_NAME = "gguf_report.json"
DTYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q4_0": "Q4_0",
          "mxfp4": "MXFP4"}
# what --dtype takes, the default first, with a few words for --help
DTYPE_NOTES = {"q8_0": "the release's codes, exact", "f32": "", "f16": "", "bf16": "",
               "q4_0": "", "mxfp4": "llama.cpp's MXFP4_MOE: experts MXFP4, the rest q8_0"}
# llama.cpp's general.file_type of each (llama_ftype: ALL_F32, MOSTLY_F16, MOSTLY_Q4_0,
# MOSTLY_Q8_0, MOSTLY_BF16, MOSTLY_MXFP4_MOE)
FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "bf16": 32, "mxfp4": 38}
_EMBED = {"F32": "F32", "F16": "F16", "BF16": "BF16", "Q8_0": "F32", "Q4_0": "Q8_0",
          "MXFP4": "F32"}
# MXFP4_MOE, as llama.cpp's quantizer makes it: the experts in MXFP4, the other Linears Q8_0
_NOT_EXPERTS = {"MXFP4": "Q8_0"}
_SPLIT = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
_TOKEN_TYPES = {1: 1, 2: 2, 3: 3, 5: 5, 6: 6}  # SentencePiece piece type -> llama.cpp type


def gguf_shape(spec: TensorSpec) -> tuple[int, ...]:
    """The tensor's shape in numpy order as stored: matrices [.., out, in]."""
    return spec.out_in_shape


def check_representable(config: Grok1Config) -> None:
    """llama.cpp's grok creates attn_q and attn_output as n_embd x n_embd."""
    if config.q_heads * config.key_size != config.emb:
        raise UsageError(f"llama.cpp's grok needs q_heads x head size == embedding size, here "
                         f"{config.q_heads} x {config.key_size} = {config.q_dim} != "
                         f"{config.emb}: this model cannot be written as GGUF")


@dataclasses.dataclass(frozen=True)
class GgufTensor:
    """One planned tensor: the spec it comes from, its ggml type and why that type."""

    spec: TensorSpec
    name: str
    kind: str
    note: str

    @property
    def info(self) -> TensorInfo:
        """Its GGUF tensor info."""
        return TensorInfo(self.name, gguf_shape(self.spec), self.kind)


def _plan_kind(spec: TensorSpec, linear_kind: str) -> tuple[str, str]:
    role = spec.param
    if role.kind in ("norm", "router"):
        return "F32", "kept F32 (as llama.cpp keeps it)"
    if role.linear and not role.expert:
        linear_kind = _NOT_EXPERTS.get(linear_kind, linear_kind)
    kind = _EMBED[linear_kind] if role.kind == "embed" else linear_kind
    rows = spec.shape[-1] if role.kind == "embed" else spec.shape[-2]
    if GGML_TYPES[kind].block > 1 and rows % QK:
        return "F32", f"F32 fallback: rows of {rows} are not a multiple of {QK}"
    if kind == "Q8_0" and role.linear and spec.rows_per_scale_group % QK:
        return "F32", (f"F32 fallback: 32-blocks would straddle the release's scale groups of "
                       f"{spec.rows_per_scale_group} rows")
    return kind, "release int8 codes and scales" if kind == "Q8_0" and role.linear else kind


def _vocabulary(config: Grok1Config, model: Path | None) -> dict[str, Any]:
    """llama.cpp's SentencePiece vocabulary: from a tokenizer model, or a placeholder for toy
    vocabularies so that llama.cpp loads the file."""
    if model is not None:
        pieces = read_pieces(model)
        tokens = [p.text for p in pieces]
        scores = np.array([p.score for p in pieces], np.float32)
        # user-defined pieces: only the <|...|> markers stay USER_DEFINED (llama.cpp would
        # otherwise match newline, tab, digit and space runs literally, as SentencePiece does not)
        types = np.array([4 if p.kind == 4 and p.text.startswith("<|") else
                          _TOKEN_TYPES.get(p.kind, 1) for p in pieces], np.int32)
    else:
        special = ["[PAD]", "[BOS]", "[EOS]", "[UNK]"]
        count = config.vocab - len(special)
        byte_tokens = [f"<0x{b:02X}>" for b in range(256)] if count >= 256 else []
        rest = [f"\u2581t{i}" for i in range(count - len(byte_tokens))]
        tokens = special + byte_tokens + rest
        scores = np.array([0.0] * (len(special) + len(byte_tokens)) + [-float(i) for i in range(
            len(rest))], np.float32)
        types = np.array([3, 3, 3, 2] + [6] * len(byte_tokens) + [1] * len(rest), np.int32)
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.bos_token_id": config.bos_token,
            "tokenizer.ggml.eos_token_id": config.eos_token,
            "tokenizer.ggml.unknown_token_id": 3 if config.vocab > 3 else config.pad_token,
            "tokenizer.ggml.padding_token_id": config.pad_token,
            "tokenizer.ggml.add_bos_token": False, "tokenizer.ggml.add_eos_token": False}


def metadata(architecture: Architecture, config: Any, dtype: str,
             tokenizer: Path | None) -> dict[str, Any]:
    """Every key llama.cpp reads for the architecture, from the config (none left to its
    defaults)."""
    return {
        "general.architecture": architecture.gguf.arch, "general.name": architecture.title,
        "general.file_type": FILE_TYPES[dtype],
        **architecture.gguf.config.write(config),
        "grok1.config": json.dumps(config.to_dict(), sort_keys=True),
        **_vocabulary(config, tokenizer),
    }


@dataclasses.dataclass
class GgufTarget:
    """Writes llama.cpp GGUF split files of at most shard_size bytes each."""

    dtype: str
    shard_size: int
    tokenizer: Path | None
    threads: int = 1

    def settings(self) -> dict[str, Any]:
        """What identifies this output for --resume."""
        return {"to": "gguf", "dtype": self.dtype, "shard_size": self.shard_size,
                "tokenizer": str(self.tokenizer)}

    def tensors(self, reader: CheckpointReader) -> list[GgufTensor]:
        """Every tensor in write order: globals, then layer by layer."""
        name = reader.architecture.gguf.tensor
        ordered = sorted(reader.specs, key=lambda s: (-1 if s.layer is None else s.layer,
                                                      name(s)))
        return [GgufTensor(s, name(s), *_plan_kind(s, DTYPES[self.dtype])) for s in ordered]

    def plan(self, reader: CheckpointReader) -> list[Unit]:
        """Split files of at most shard_size bytes (a larger tensor gets its own)."""
        splits: list[list[GgufTensor]] = [[]]
        size = 0
        for tensor in self.tensors(reader):
            if splits[-1] and size + tensor.info.nbytes > self.shard_size:
                splits.append([])
                size = 0
            splits[-1].append(tensor)
            size += tensor.info.nbytes
        stem = f"{reader.architecture.name}-{DTYPES[self.dtype]}"
        names = ([f"{stem}.gguf"] if len(splits) == 1 else
                 [f"{stem}-{i + 1:05d}-of-{len(splits):05d}.gguf" for i in range(len(splits))])
        return [Unit(name, sum(t.info.nbytes for t in split), tuple(split))
                for name, split in zip(names, splits, strict=True)]

    def write(self, reader: CheckpointReader, unit: Unit, dst: Path) -> dict[str, Any]:
        """Write one GGUF file, one tensor (one expert) at a time."""
        units = self.plan(reader)
        number = next(i for i, u in enumerate(units) if u.path == unit.path)
        keys = (metadata(reader.architecture, reader.config, self.dtype, self.tokenizer)
                if number == 0 else {})
        if len(units) > 1:
            keys |= {"split.no": (2, number), "split.count": (2, len(units)),
                     "split.tensors.count": (5, sum(len(u.items) for u in units))}
        made: dict[str, str] = {}
        with GGUFWriter(dst / unit.path, keys, [t.info for t in unit.items]) as writer:
            for tensor in unit.items:
                for raw, how in _pieces(reader, tensor):
                    writer.write(tensor.info.name, raw)
                    made[tensor.info.name] = how
        return {"sha256": writer.file_sha256, "tensors": writer.digests, "gguf": {
            name: {"type": t.kind, "made": made[name]} for t in unit.items
            for name in [t.info.name]}}

    def prepare_run(self, reader: CheckpointReader, dst: Path, quiet: bool) -> None:
        """Nothing to compute before the units."""

    def final_files(self, units: list[Unit]) -> list[str]:
        """The per-tensor report."""
        return [REPORT_NAME]

    def finalize(self, reader: CheckpointReader, units: list[Unit], dst: Path,
                 records: dict[str, Any]) -> None:
        """gguf_report.json: each tensor's type and how it was made."""
        made = {name: entry for record in records.values()
                for name, entry in record.get("gguf", {}).items()}
        # in plan order, each entry's keys in one order (a resumed unit's come from the manifest)
        tensors = {t.info.name: {"type": made[t.info.name]["type"],
                                 "made": made[t.info.name]["made"]}
                   for u in units for t in u.items}
        report = {"dtype": self.dtype, "files": [u.path for u in units],
                  "fallbacks": sorted(n for n, e in tensors.items() if e["made"] not in (
                      RELEASE_CODES, KEPT_BLOCKS, "kept F32 (as llama.cpp keeps it)",
                      e["type"])), "tensors": tensors}
        with atomic_open(dst / REPORT_NAME) as f:
            f.write((json.dumps(report, indent=2) + "\n").encode())


_CHUNK_BYTES = 32 << 20


def _encoded(matrix: np.ndarray, kind: str) -> Any:
    """`encode` over row chunks of about 32 MB, so the conversion's temporaries stay small."""
    rows = max(1, _CHUNK_BYTES // max(1, matrix.shape[-1] * 4))
    for start in range(0, matrix.shape[0], rows):
        yield encode(matrix[start:start + rows], kind)


RELEASE_CODES = "release int8 codes and scales"
KEPT_BLOCKS = "the source GGUF's blocks, kept"


def _pieces(reader: CheckpointReader, tensor: GgufTensor) -> Any:
    """(raw bytes, how they were made) of a planned tensor, one expert and at most about 32 MB
    of rows at a time. A GGUF source tensor already of the target type is copied as it is."""
    spec, kind = tensor.spec, tensor.kind
    role = spec.param
    if isinstance(reader, GgufCheckpoint):
        home, info = reader.tensor_info(spec)
        if info.kind == kind:
            raw = home.raw(info.name)
            for start in range(0, raw.size, _CHUNK_BYTES):
                yield raw[start:start + _CHUNK_BYTES], KEPT_BLOCKS
            return
    if not role.linear:
        value = dense(reader.read(spec))
        for raw in _encoded(value.T if role.matrix else value, kind):
            yield raw, tensor.note
        return
    experts = range(spec.shape[0]) if role.expert else [None]
    for expert in experts:
        value = reader.read_expert(spec, expert) if expert is not None else reader.read(spec)
        if kind == "Q8_0" and isinstance(value, QuantizedWeight8bit):
            raw = q8_0_from_release(transposed(np.asarray(value.weight)),
                                    np.ascontiguousarray(np.asarray(value.scales).T))
            if raw is not None:
                yield raw, RELEASE_CODES
                continue
            how = "quantized from floats (a scale is not an exact f16)"
        else:
            how = (tensor.note if kind in ("F32", "F16", "BF16") or tensor.note.startswith("F32")
                   else "quantized from floats")
        for raw in _encoded(dense_transposed(value), kind):
            yield raw, how


class GgufCheckpoint:
    """A GGUF model (one file or llama.cpp's split files), read one tensor at a time."""

    layout = "gguf"

    def __init__(self, root: Path) -> None:
        root = Path(root)
        if root.is_file() and root.suffix == ".gguf":  # a file, as llama.cpp users pass them
            self.root, self.files = root.parent, _model_files(root.parent, root)
        else:
            self.root = require_folder(root)
            self.files = _model_files(self.root)
        self.readers = [GGUFReader(f) for f in self.files]
        self.metadata = self.readers[0].metadata
        self.architecture = _architecture(self.metadata, self.files[0])
        self.config = _config(self.architecture, self.metadata, str(self.files[0]))
        self.specs = self.architecture.build_spec(self.config)
        self.where = _tensor_homes(self.readers)
        names = {self.architecture.gguf.tensor(s) for s in self.specs}
        unmapped, missing = sorted(set(self.where) - names), sorted(names - set(self.where))
        if unmapped or missing:
            raise MappingError(f"{self.root}: " + "; ".join(
                f"{len(items)} {what} tensors: {', '.join(items[:8])}"
                for what, items in (("unmapped", unmapped), ("missing", missing)) if items))

    def source_files(self) -> list[Path]:
        """The GGUF files."""
        return list(self.files)

    def tensor_info(self, spec: TensorSpec) -> tuple[GGUFReader, TensorInfo]:
        """The file holding a spec's tensor and its info, checked against the config."""
        name = self.architecture.gguf.tensor(spec)
        reader = self.where[name]
        info, _ = reader.tensors[name]
        if info.shape != gguf_shape(spec):
            raise ShapeMismatchError(f"{reader.path}: {info.name} has shape {list(info.shape)},"
                                     f" the config implies {list(gguf_shape(spec))}")
        return reader, info

    def byte_ranges(self, spec: TensorSpec) -> list[tuple[Path, int, int]]:
        """(file, offset, length) of the tensor `read(spec)` decodes."""
        reader, info = self.tensor_info(spec)
        return [(reader.path, reader.tensors[info.name][1], info.nbytes)]

    def stored_dtype(self, spec: TensorSpec) -> str | None:
        """The ggml type of a plain (non-matrix) tensor; None for matrices (stored [out, in])."""
        return None if spec.param.matrix else self.tensor_info(spec)[1].kind

    def read(self, spec: TensorSpec) -> np.ndarray:
        """The canonical float32 value of one spec ([.., in, out] matrices)."""
        reader, info = self.tensor_info(spec)
        value = reader.read(info.name)
        if not spec.param.matrix:
            return value
        return np.ascontiguousarray(np.swapaxes(value, -1, -2))

    def read_expert(self, spec: TensorSpec, expert: int) -> np.ndarray:
        """One expert's canonical [in, out] matrix, decoding only its bytes."""
        from converter.files.gguf_file import decode

        reader, info = self.tensor_info(spec)
        per_expert = info.nbytes // info.shape[0]
        raw = reader.raw(info.name)[expert * per_expert:(expert + 1) * per_expert]
        return np.ascontiguousarray(decode(raw, info.kind, info.shape[1:]).T)

    def problems(self) -> list[str]:
        """Tensors whose shape disagrees with the config."""
        found = []
        for spec in self.specs:
            try:
                self.tensor_info(spec)
            except ShapeMismatchError as exc:
                found.append(str(exc))
        return found


def _model_files(root: Path, given: Path | None = None) -> list[Path]:
    """The GGUF files of a folder: one model file, or a complete set of split files; with
    `given` (a file in it), that file, or the split set it is part of."""
    files = sorted(p for p in root.glob("*.gguf") if p.is_file())
    if given is not None:
        first = _SPLIT.match(given.name)
        if first is None:
            return [given]
        files = [p for p in files if (m := _SPLIT.match(p.name)) and (
            m.group("prefix"), m.group("count")) == (first.group("prefix"),
                                                     first.group("count"))]
    if not files:
        raise LayoutError(f"{root}: no .gguf file")
    splits = [(m, p) for p in files if (m := _SPLIT.match(p.name))]
    if not splits:
        if len(files) > 1:
            raise LayoutError(f"{root}: {len(files)} .gguf files that are not one split set")
        return files
    prefixes = {m.group("prefix") for m, _ in splits}
    counts = {int(m.group("count")) for m, _ in splits}
    if len(prefixes) > 1 or len(counts) > 1 or len(splits) != len(files):
        raise LayoutError(f"{root}: .gguf files of more than one model")
    (count,) = counts
    numbers = sorted(int(m.group("no")) for m, _ in splits)
    if numbers != list(range(1, count + 1)):
        missing = sorted(set(range(1, count + 1)) - set(numbers))
        raise LayoutError(f"{root}: split set of {count} files lacks part(s) {missing}")
    return [p for _, p in sorted(splits, key=lambda mp: mp[0].group("no"))]


def _tensor_homes(readers: list[GGUFReader]) -> dict[str, GGUFReader]:
    """Which file holds each tensor, once the files are checked to be one split set as
    llama.cpp checks it: member i says `split.no` i and every member the same `split.count`
    (the number of files), and no tensor is in two members."""
    count = len(readers)
    where: dict[str, GGUFReader] = {}
    for number, reader in enumerate(readers):
        said = (reader.metadata.get("split.no", 0), reader.metadata.get("split.count", 1))
        if said != (number, count) and not (count == 1 and said[1] in (0, 1)):
            raise MalformedFileError(f"{reader.path}: says it is split {said[0]} of {said[1]}, "
                                     f"but it is file {number} of a set of {count}")
        for name in reader.tensors:
            if name in where:
                raise MalformedFileError(f"{reader.path}: tensor {name} is also in "
                                         f"{where[name].path.name}")
            where[name] = reader
    return where


def _architecture(meta: dict[str, Any], source: Path) -> Architecture:
    """The registered architecture of a GGUF's `general.architecture`."""
    arch = meta.get("general.architecture")
    for candidate in ARCHITECTURES.values():
        if isinstance(arch, str) and candidate.gguf.arch == arch:
            return candidate
    known = ", ".join(a.gguf.arch for a in ARCHITECTURES.values())
    shown = repr(arch)[:80] if isinstance(arch, str) else f"of type {type(arch).__name__}"
    raise LayoutError(f"{source}: architecture {shown}, not {known}")


def _config(architecture: Architecture, meta: dict[str, Any], source: str) -> Any:
    """The model's config: exact from `grok1.config` (our own key), else from llama.cpp's
    keys of the architecture."""
    config_type = architecture.config_type
    if isinstance(meta.get("grok1.config"), str):
        data = parse_json(meta["grok1.config"], f"{source}: grok1.config")
        if not isinstance(data, dict):
            raise MalformedFileError(f"{source}: grok1.config is not a JSON object")
        return config_type.from_dict(data, source=source)
    try:
        values = architecture.gguf.config.read(meta)
        types = {name: type(value) for name, value in config_type().to_dict().items()}
        return config_type(vocab=len(meta["tokenizer.ggml.tokens"]),
                           **{name: types[name](value) for name, value in values.items()})
    except KeyError as exc:
        raise MalformedFileError(f"{source}: missing GGUF key {exc.args[0]!r}") from None
    except (TypeError, ValueError, OverflowError, ZeroDivisionError, UsageError) as exc:
        raise ConfigMismatchError(f"{source}: {exc}") from None


def _inspect(path: Path) -> dict[str, Any]:
    checkpoint = GgufCheckpoint(path)
    tensors = [{"name": name, "file": reader.path.name, "shape": list(info.shape),
                "dtype": info.kind, "scales_shape": None, "scale_groups": None,
                "bytes": info.nbytes}
               for reader in checkpoint.readers for name, (info, _) in reader.tensors.items()]
    return {"location": str(path), "config_source": str(checkpoint.files[0]),
            "config": checkpoint.config.to_dict(), "tensors": tensors,
            "parameters": sum(s.numel for s in checkpoint.specs),
            "problems": checkpoint.problems()}


def _target(reader: CheckpointReader, options: TargetOptions) -> Target:
    if options.linears is not None:
        raise UsageError(f"GGUF output takes --dtype ({', '.join(DTYPES)}), not a "
                         "compressed-tensors scheme")
    dtype = options.dtype or next(iter(DTYPE_NOTES))
    if dtype not in DTYPES:
        raise UsageError(f"--to gguf takes --dtype {', '.join(DTYPES)}, not {dtype}")
    check_representable(reader.config)
    return GgufTarget(dtype, options.shard_size,
                      resolve_tokenizer(options.tokenizer, reader.config.vocab))


LAYOUT = Layout(name="gguf", summary="llama.cpp GGUF (split files), arch grok",
                detect=lambda path: (path.suffix == ".gguf" and path.is_file()) or (
                    path.is_dir() and any(path.glob("*.gguf"))),
                open=lambda path: GgufCheckpoint(path), describe=_inspect, target=_target,
                dtypes=DTYPE_NOTES)
