"""Shard files written one tensor at a time, and read back lazily.

Two containers: safetensors (header planned up front, then each tensor's bytes streamed in) and
PyTorch zip checkpoints (`torch.save` writes the skeleton with `skip_data`, then each storage is
written in place and its CRC-32 patched). Both write to `<name>.<random>.incomplete` and rename
only when complete, so memory is one tensor and a shard on disk is whole or absent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from converter.dtypes import DTYPES, DType, by_safetensors, by_torch
from converter.errors import MalformedFileError, ShapeMismatchError, UsageError
from converter.files.atomic import atomic_open
from converter.files.safe_read import parse_json

__all__ = ["Entry", "SafetensorsReader", "SafetensorsWriter", "TorchShardReader",
           "TorchShardWriter", "as_numpy", "tensor_digest"]

_MAX_HEADER = 100 << 20


def _dtype(name: str) -> DType:
    """A dtype by its safetensors name (the spelling of shard entries)."""
    found = by_safetensors(name)
    if found is None:
        raise UsageError(f"unknown safetensors dtype {name!r}")
    return found


def _numpy(name: str) -> np.dtype:
    return _dtype(name).numpy


@dataclasses.dataclass(frozen=True)
class Entry:
    """One tensor of a shard: name, safetensors dtype name and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Size of its data."""
        return math.prod(self.shape) * _numpy(self.dtype).itemsize


def tensor_digest(array: np.ndarray) -> str:
    """The sha256 of the bytes a writer stores for this array (so that threads making tensors
    can hash them, instead of the one thread writing)."""
    return hashlib.sha256(_bytes(array)).hexdigest()


def _bytes(array: np.ndarray) -> memoryview:
    return memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))


def _raw(entry: Entry, array: np.ndarray, path: Path) -> memoryview:
    array = np.asarray(array)
    if array.shape != entry.shape or array.dtype != _numpy(entry.dtype):
        raise ShapeMismatchError(f"{path}: {entry.name} is {array.dtype}{list(array.shape)}, "
                                 f"the plan says {entry.dtype}{list(entry.shape)}")
    return _bytes(array)


class _PhasedWriter:
    """Tensors must be written exactly once each, in plan order, before the context closes."""

    def __init__(self, path: Path, entries: list[Entry]) -> None:
        names = [e.name for e in entries]
        if len(set(names)) != len(names):
            raise UsageError(f"{path}: a tensor name is planned twice")
        self.path, self.entries, self.next = Path(path), entries, 0
        self.digests: dict[str, str] = {}
        self.file_sha256 = ""

    def _expect(self, name: str) -> Entry:
        if self.next >= len(self.entries) or self.entries[self.next].name != name:
            want = self.entries[self.next].name if self.next < len(self.entries) else "nothing"
            raise UsageError(f"{self.path}: wrote {name}, expected {want} (plan order)")
        self.next += 1
        return self.entries[self.next - 1]

    def _next(self, name: str, array: np.ndarray, digest: str | None) -> memoryview:
        """The raw bytes of the next planned tensor, checked and hashed (unless the caller
        hashed them already, with `tensor_digest`)."""
        raw = _raw(self._expect(name), array, self.path)
        self.digests[name] = digest or hashlib.sha256(raw).hexdigest()
        return raw

    def __exit__(self, *exc: Any) -> None:
        """Rename the file into place when every planned tensor was written; else discard it."""
        short = None
        if exc[0] is None and self.next != len(self.entries):
            short = UsageError(f"{self.path}: finished after {self.next} of "
                               f"{len(self.entries)} tensors")
            exc = (UsageError, short, None)
        if exc[0] is None:
            self.file_sha256 = self._finish()
        self._context.__exit__(*exc)
        if short is not None:
            raise short


class SafetensorsWriter(_PhasedWriter):
    """Writes one .safetensors file tensor by tensor; use as a context manager."""

    def __init__(self, path: Path, entries: list[Entry],
                 metadata: dict[str, str] | None = None) -> None:
        super().__init__(path, entries)
        header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
        offset = 0
        for e in entries:
            header[e.name] = {"dtype": e.dtype, "shape": list(e.shape),
                              "data_offsets": [offset, offset + e.nbytes]}
            offset += e.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._header = struct.pack("<Q", len(raw)) + raw

    def __enter__(self) -> SafetensorsWriter:
        self._context = atomic_open(self.path)
        self._file = self._context.__enter__()
        self._file.write(self._header)
        self._hash = hashlib.sha256(self._header)
        return self

    def write(self, name: str, array: np.ndarray, digest: str | None = None) -> None:
        """Append the next tensor's bytes (`digest`: their sha256, if already known)."""
        raw = self._next(name, array, digest)
        self._file.write(raw)
        self._hash.update(raw)

    def _finish(self) -> str:
        """The file's sha256 (hashed as it was written)."""
        return self._hash.hexdigest()


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicate = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"header names tensor {duplicate!r} twice")
    return dict(pairs)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _checked_entries(path: Path, header: dict[str, Any], data_size: int
                     ) -> dict[str, tuple[Entry, int]]:
    """Header entries as the safetensors library accepts them: known dtypes, shapes of
    non-negative integers, offsets that tile the data exactly (no gap, overlap or overrun)."""
    entries: dict[str, tuple[Entry, int]] = {}
    spans = []
    for name, info in header.items():
        if not isinstance(info, dict):
            raise MalformedFileError(f"{path}: malformed header entry {name}")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or by_safetensors(dtype) is None:
            raise MalformedFileError(f"{path}: {name} has unsupported dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape) or len(shape) > 8:
            raise MalformedFileError(f"{path}: {name} has an invalid shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(
                _is_count(o) for o in offsets) and offsets[0] <= offsets[1]):
            raise MalformedFileError(f"{path}: {name} has invalid data_offsets {offsets!r}")
        entry = Entry(name, dtype, tuple(shape))
        begin, end = offsets
        if end - begin != entry.nbytes:
            raise MalformedFileError(f"{path}: {name} is {dtype}{shape} ({entry.nbytes} bytes) "
                                     f"but data_offsets span {end - begin}")
        if end > data_size:
            raise MalformedFileError(f"{path}: {name} needs bytes {begin}..{end} (file has "
                                     f"{data_size}; truncated?)")
        entries[name] = (entry, begin)
        spans.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise MalformedFileError(f"{path}: {name} starts at byte {begin}, expected {position}"
                                     " (tensor data overlaps or leaves a gap)")
        position = end
    if position != data_size:
        raise MalformedFileError(f"{path}: tensor data ends at byte {position} of {data_size} "
                                 "(trailing bytes or truncated)")
    return entries


class SafetensorsReader:
    """Reads the tensors of one .safetensors file with a checked header.

    Each tensor is read with `preadv` into a buffer of its own, so memory holds only the
    tensors in use, never the pages of a whole mapped shard.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            from converter.errors import CheckpointNotFoundError
            raise CheckpointNotFoundError(f"{self.path}: missing or not a regular file")
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            self._read_header()
        except BaseException:
            os.close(self._fd)
            raise

    def _read_header(self) -> None:
        size = os.fstat(self._fd).st_size
        if size < 8:
            raise MalformedFileError(f"{self.path}: truncated ({size} bytes)")
        (length,) = struct.unpack("<Q", os.pread(self._fd, 8, 0))
        if length > min(_MAX_HEADER, size - 8):
            raise MalformedFileError(f"{self.path}: header of {length} bytes does not fit a "
                                     f"{size}-byte file (truncated or not safetensors)")
        header = parse_json(os.pread(self._fd, length, 8), f"{self.path}: header",
                            object_pairs_hook=_unique_keys)
        if not isinstance(header, dict):
            raise MalformedFileError(f"{self.path}: header is not a JSON object")
        metadata = header.pop("__metadata__", {})
        if not isinstance(metadata, dict) or not all(
                isinstance(v, str) for v in metadata.values()):
            raise MalformedFileError(f"{self.path}: __metadata__ must map strings to strings")
        self._base = 8 + length
        self.entries = _checked_entries(self.path, header, size - self._base)

    @property
    def data_start(self) -> int:
        """Offset in the file of the data section (entries' offsets are relative to it)."""
        return self._base

    def get(self, name: str) -> np.ndarray:
        """One tensor (bf16 as uint16 bits), read into its own buffer."""
        entry, begin = self.entries[name]
        out = np.empty(entry.shape, _numpy(entry.dtype))
        view = memoryview(out.reshape(-1).view(np.uint8))
        done = 0
        while done < entry.nbytes:
            got = os.preadv(self._fd, [view[done:]], self._base + begin + done)
            if got <= 0:
                raise MalformedFileError(f"{self.path}: {name} ends early (file shrank?)")
            done += got
        return out

    def dtype(self, name: str) -> str:
        """The safetensors dtype name of one tensor."""
        return self.entries[name][0].dtype


def as_numpy(tensor: Any) -> np.ndarray:
    """A CPU torch tensor as numpy (bf16 as uint16 bits); its safetensors dtype name too."""
    import torch

    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.uint16)
    if tensor.dtype == torch.float8_e4m3fn:
        return tensor.view(torch.uint8).numpy()
    return tensor.numpy()


def _check_zip_crcs(path: Path) -> None:
    """Read every member of a zip archive once; zipfile raises BadZipFile on a CRC mismatch."""
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            with archive.open(info) as member:
                while member.read(8 << 20):
                    pass


class TorchShardWriter(_PhasedWriter):
    """Writes one `torch.save` zip checkpoint tensor by tensor (loadable with weights_only)."""

    def __init__(self, path: Path, entries: list[Entry]) -> None:
        super().__init__(path, entries)

    def __enter__(self) -> TorchShardWriter:
        import torch
        from torch._subclasses.fake_tensor import FakeTensorMode

        self._context = atomic_open(self.path)
        self._file = self._context.__enter__()
        with FakeTensorMode():
            skeleton = {e.name: torch.empty(e.shape, dtype=getattr(torch, _dtype(e.dtype).torch))
                        for e in self.entries}
        with torch.serialization.skip_data(materialize_fake_tensors=True):
            torch.save(skeleton, self._file)
        self._file.flush()
        with zipfile.ZipFile(self._file.name) as archive:
            infos = {i.filename: i for i in archive.infolist()}
            self._central = self._central_directory_offsets(archive)
        prefix = next(iter(infos)).split("/", 1)[0]
        self._records = []
        for key in range(len(self.entries)):
            info = infos[f"{prefix}/data/{key}"]
            self._file.seek(info.header_offset + 26)
            name_len, extra_len = struct.unpack("<HH", self._file.read(4))
            data_at = info.header_offset + 30 + name_len + extra_len
            self._records.append((info, data_at))
        return self

    @staticmethod
    def _central_directory_offsets(archive: zipfile.ZipFile) -> dict[str, int]:
        """Offset of each entry's central-directory record (to patch its CRC)."""
        offsets, fp = {}, archive.fp
        if fp is None:
            raise MalformedFileError(f"{archive.filename}: zip archive is closed")
        position = archive.start_dir
        for info in archive.infolist():
            offsets[info.filename] = position
            fp.seek(position + 28)
            n, m, k = struct.unpack("<HHH", fp.read(6))
            position += 46 + n + m + k
        return offsets

    def _finish(self) -> str:
        """The file's sha256, read back once complete (its CRCs were patched in place)."""
        self._file.flush()
        self._file.seek(0)
        digest = hashlib.sha256()
        while chunk := self._file.read(8 << 20):
            digest.update(chunk)
        return digest.hexdigest()

    def write(self, name: str, array: np.ndarray, digest: str | None = None) -> None:
        """Write the next tensor's bytes into its storage record (`digest`: their sha256,
        if already known)."""
        raw = self._next(name, array, digest)
        info, data_at = self._records[self.next - 1]
        self._file.seek(data_at)
        self._file.write(raw)
        crc = struct.pack("<I", zlib.crc32(raw) & 0xFFFFFFFF)
        self._file.seek(info.header_offset + 14)
        self._file.write(crc)
        self._file.seek(self._central[info.filename] + 16)
        self._file.write(crc)


class TorchShardReader:
    """Lazy (memory-mapped) access to a torch.save checkpoint, loaded with weights_only=True.

    Every member's CRC-32 is checked when the shard is opened (torch.load does not), so a
    flipped byte is reported instead of converted.
    """

    def __init__(self, path: Path) -> None:
        import pickle

        import torch

        self.path = Path(path)
        if not self.path.is_file():
            from converter.errors import CheckpointNotFoundError
            raise CheckpointNotFoundError(f"{self.path}: missing or not a regular file")
        try:
            _check_zip_crcs(self.path)
            self._tensors = torch.load(self.path, map_location="cpu", weights_only=True,
                                       mmap=True)
        except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError,
                TypeError, KeyError, AttributeError, IndexError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise MalformedFileError(f"{self.path}: not a loadable torch checkpoint "
                                     f"({message})") from None
        if not isinstance(self._tensors, dict):
            raise MalformedFileError(f"{self.path}: holds a {type(self._tensors).__name__}, "
                                     "expected a state dict")
        self.entries = {}
        for name, tensor in self._tensors.items():
            dtype = by_torch(str(getattr(tensor, "dtype", "")).removeprefix("torch."))
            if not isinstance(tensor, torch.Tensor) or dtype is None:
                what = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise MalformedFileError(f"{self.path}: {name!r} holds {what}, expected a tensor "
                                         f"of {', '.join(d.torch for d in DTYPES.values())}")
            self.entries[name] = Entry(str(name), dtype.safetensors, tuple(tensor.shape))

    def get(self, name: str) -> np.ndarray:
        """One tensor as numpy (bf16 as uint16 bits)."""
        return as_numpy(self._tensors[name])

    def dtype(self, name: str) -> str:
        """The safetensors dtype name of one tensor."""
        return self.entries[name].dtype
