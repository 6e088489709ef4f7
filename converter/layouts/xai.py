"""The original release layout: `ckpt-0/tensor{i:05d}_000`, one safe-parsed pickle per leaf.

A checkpoint folder holds `ckpt-0/` (or the legacy `ckpt/`, or the tensor files themselves) and
optionally a `config.json` sidecar; without one the real Grok-1 config is assumed and checked.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import (
    CheckpointNotFoundError,
    ConfigMismatchError,
    Grok1Error,
    LayoutError,
    ShapeMismatchError,
    UsageError,
)
from converter.files.atomic import atomic_open
from converter.files.pickle_reader import load_leaf
from converter.files.pickle_writer import ArrayMeta, PayloadSlot, encode_leaf
from converter.layouts.base import (
    CheckpointReader,
    Layout,
    Target,
    TargetOptions,
    Unit,
    require_folder,
)
from converter.model import GROK1
from converter.model.config import Grok1Config, load_sidecar, save_sidecar
from converter.model.spec import TensorSpec, file_name
from converter.tensors import QuantizedWeight8bit, dense

__all__ = ["LAYOUT", "TENSOR_DIRS", "XaiCheckpoint", "XaiTarget", "find_tensor_dir",
           "write_leaf", "write_xai"]

TENSOR_DIRS = ("ckpt-0", "ckpt")
Value = np.ndarray | QuantizedWeight8bit
_CHUNK = 64 << 20


def find_tensor_dir(path: Path) -> Path | None:
    """The folder holding `tensor00000_000`-style files under `path`, or None."""
    path = Path(path)
    for candidate in (*(path / d for d in TENSOR_DIRS), path):
        if candidate.is_dir() and any(candidate.glob("tensor*_000")):
            return candidate
    return None


@dataclasses.dataclass
class XaiCheckpoint:
    """A checkpoint in the release layout, opened lazily."""

    layout = "xai"
    architecture = GROK1  # the layout of xAI's Grok-1 release
    root: Path
    tensor_dir: Path
    config: Grok1Config
    config_source: str
    specs: list[TensorSpec]
    _last_leaf: tuple[str, Value] | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def open(cls, path: Path) -> XaiCheckpoint:
        """Locate the tensor folder and the config; nothing is read yet."""
        path = require_folder(path)
        tensor_dir = find_tensor_dir(path)
        if tensor_dir is None:
            raise LayoutError(f"{path}: no tensor*_000 files in it or in "
                              f"{'/ or '.join(TENSOR_DIRS)}/ (not an original Grok-1 checkpoint)")
        root = tensor_dir.parent if tensor_dir != path else path
        config, source = None, "the real Grok-1 config (no config.json)"
        for folder in (root, root.parent) if tensor_dir == path else (root,):
            config = load_sidecar(folder)
            if config is not None:
                source = str(folder / "config.json")
                break
        config = config or Grok1Config()
        specs = GROK1.build_spec(config)
        found = len(list(tensor_dir.glob("tensor*_000")))
        if found > len(specs):
            raise ConfigMismatchError(
                f"{tensor_dir}: holds {found} tensor files, {source} describes {len(specs)}")
        return cls(root=root, tensor_dir=tensor_dir, config=config, config_source=source,
                   specs=specs)

    def source_files(self) -> list[Path]:
        """Every file this checkpoint is read from: the tensor files and the config sidecar."""
        files = sorted(self.tensor_dir.glob("tensor*_000"))
        sidecar = Path(self.config_source)
        return files + ([sidecar] if sidecar.is_file() else [])

    def path_of(self, spec: TensorSpec) -> Path:
        """The file holding `spec`."""
        return self.tensor_dir / spec.file_name

    def read(self, spec: TensorSpec) -> Value:
        """Load one leaf (zero-copy) and check it against the spec."""
        path = self.path_of(spec)
        if not path.is_file():
            raise CheckpointNotFoundError(f"{path}: missing ({spec.name})")
        value = load_leaf(path)
        check_value(path, spec, value, self.config_source)
        return value

    def byte_ranges(self, spec: TensorSpec) -> list[tuple[Path, int, int]]:
        """(file, offset, length) of what `read(spec)` reads: its whole leaf file."""
        path = self.path_of(spec)
        return [(path, 0, path.stat().st_size)] if path.is_file() else []

    def read_expert(self, spec: TensorSpec, expert: int) -> Value:
        """One expert's slice of a stacked leaf (still a zero-copy view). The last leaf read
        this way is kept, so its experts do not each parse the file again."""
        last = self._last_leaf
        if last is None or last[0] != spec.name:
            last = (spec.name, self.read(spec))
            self._last_leaf = last
        return last[1][expert]

    def __iter__(self) -> Iterator[tuple[TensorSpec, Value]]:
        """Every leaf in file order, one at a time."""
        for spec in self.specs:
            yield spec, self.read(spec)

    def problems(self) -> list[str]:
        """Every integrity problem, one line each, without stopping at the first."""
        found: list[str] = []
        expected = {s.file_name for s in self.specs}
        for extra in sorted(p.name for p in self.tensor_dir.glob("tensor*_000")):
            if extra not in expected:
                found.append(f"{self.tensor_dir / extra}: unexpected file, not in the spec "
                             f"of {self.config_source}")
        for spec in self.specs:
            try:
                self.read(spec)
            except Grok1Error as exc:
                found.append(str(exc))
        return found


def _describe(value: Value) -> str:
    if isinstance(value, QuantizedWeight8bit):
        return (f"QuantizedWeight8bit weight {value.weight.dtype}{list(value.weight.shape)} "
                f"scales bf16{list(value.scales.shape)}")
    return f"{value.dtype}{list(value.shape)}"


def check_value(path: Path, spec: TensorSpec, value: Value, source: str) -> None:
    """Raise `ShapeMismatchError` when `value` is not what `spec` says the file holds."""
    if spec.quantized:
        ok = (isinstance(value, QuantizedWeight8bit) and value.weight.dtype == np.int8
              and value.scales.dtype == np.uint16
              and value.weight.shape == spec.shape and value.scales.shape == spec.scales_shape)
        want = (f"QuantizedWeight8bit weight int8{list(spec.shape)} "
                f"scales bf16{list(spec.scales_shape or ())}")
    else:
        ok = (isinstance(value, np.ndarray) and value.dtype == np.float32
              and value.shape == spec.shape)
        want = f"float32{list(spec.shape)}"
    if not ok:
        raise ShapeMismatchError(f"{path}: {spec.name} holds {_describe(value)}, expected {want} "
                                 f"(from {source})")


def _chunks(array: np.ndarray) -> Iterator[memoryview]:
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    for start in range(0, flat.size, _CHUNK):
        yield memoryview(flat[start:start + _CHUNK])


def write_leaf(path: Path, spec: TensorSpec,
               payloads: list[Iterable[bytes | memoryview | np.ndarray]]) -> str:
    """Atomically write the release file for `spec` from streamed payload chunks.

    Returns the sha256 of the file.
    """
    digest = hashlib.sha256()
    if spec.quantized:
        metas = [ArrayMeta("i1", spec.shape), ArrayMeta("bfloat16", spec.scales_shape or ())]
    else:
        metas = [ArrayMeta("f4", spec.shape)]
    with atomic_open(path) as f:
        for part in encode_leaf(metas, quantized=spec.quantized):
            if isinstance(part, PayloadSlot):
                written = 0
                for chunk in payloads[part.index]:
                    raw = memoryview(chunk).cast("B") if not isinstance(chunk, np.ndarray) else (
                        memoryview(np.ascontiguousarray(chunk).reshape(-1).view(np.uint8)))
                    f.write(raw)
                    digest.update(raw)
                    written += raw.nbytes
                if written != part.nbytes:
                    raise ShapeMismatchError(f"{path}: {spec.name} payload {part.index} has "
                                             f"{written} bytes, expected {part.nbytes}")
            else:
                f.write(part)
                digest.update(part)
    return digest.hexdigest()


def value_payloads(value: Value) -> list[Iterator[memoryview]]:
    """A leaf value's arrays as streams of raw-byte chunks, in file order."""
    if isinstance(value, QuantizedWeight8bit):
        return [_chunks(value.weight), _chunks(value.scales)]
    return [_chunks(value)]


def write_xai(folder: Path, config: Grok1Config,
              tensors: Iterable[tuple[TensorSpec, Value]]) -> None:
    """Write a release-layout checkpoint (`ckpt-0/` plus the config sidecar) from a stream."""
    tensor_dir = Path(folder) / TENSOR_DIRS[0]
    tensor_dir.mkdir(parents=True, exist_ok=True)
    save_sidecar(folder, config)
    for spec, value in tensors:
        path = tensor_dir / file_name(spec.file_index)
        check_value(path, spec, value, "the value being written")
        write_leaf(path, spec, value_payloads(value))


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

    def prepare_run(self, reader: CheckpointReader, dst: Path, quiet: bool) -> None:
        """Nothing to compute before the units."""

    def final_files(self, units: list[Unit]) -> list[str]:
        """The config sidecar."""
        return ["config.json"]

    def finalize(self, reader: CheckpointReader, units: list[Unit], dst: Path,
                 records: dict[str, Any]) -> None:
        """The config sidecar, last."""
        save_sidecar(dst, reader.config)


def _inspect(path: Path) -> dict[str, Any]:
    """What `inspect` reports of a release-layout checkpoint."""
    checkpoint = XaiCheckpoint.open(path)
    tensors = [
        {"name": s.name, "file": s.file_name, "shape": list(s.shape), "dtype": s.dtype,
         "scales_shape": list(s.scales_shape) if s.scales_shape else None,
         "scale_groups": s.scale_groups if s.quantized else None, "bytes": s.payload_bytes}
        for s in checkpoint.specs
    ]
    return {"location": str(checkpoint.tensor_dir), "config_source": checkpoint.config_source,
            "config": checkpoint.config.to_dict(), "tensors": tensors,
            "parameters": sum(s.numel for s in checkpoint.specs),
            "problems": checkpoint.problems()}


def _target(reader: CheckpointReader, options: TargetOptions) -> Target:
    if options.dtype not in (None, "int8") or options.linears is not None:
        raise UsageError("--to xai keeps the release's int8 codes and scales exactly; "
                         "--dtype and quantization do not apply")
    return XaiTarget()


LAYOUT = Layout(name="xai", summary="the original release: ckpt-0/tensor*_000 pickles",
                detect=lambda path: find_tensor_dir(path) is not None,
                open=lambda path: XaiCheckpoint.open(path), describe=_inspect, target=_target,
                dtypes={"int8": "the release's own"})
