"""The GGUF container (version 3, as llama.cpp reads it) and its block types, written and read
here without gguf-py: a header, typed key-values, tensor infos, then each tensor's data at a
32-byte aligned offset. Writing streams one tensor (one expert of a stacked tensor) at a time
into a file whose header was planned up front; reading memory-maps the data.

Block types are pure functions over numpy arrays, each checked against gguf-py's reference
implementation in the tests: Q8_0 (32 int8 codes and one f16 scale per block), Q4_0 (32 4-bit
codes, offset 8, and one f16 scale), MXFP4 (32 e2m1 values, two per byte, and one e8m0
exponent), F16, BF16 and F32. `q8_0_from_release` builds Q8_0 blocks
from the release's own int8 codes and bf16 scales, exactly, where each block lies in one scale
group and each scale is an exact f16.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import mmap
import struct
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import MalformedFileError, UsageError
from converter.files.atomic import atomic_open
from converter.tensors import bf16_bits_to_f32, f32_to_bf16_bits

__all__ = ["GGML_TYPES", "MXFP4_VALUES", "GGUFReader", "GGUFWriter", "GgmlType", "TensorInfo",
           "decode", "encode", "mxfp4_half_scale", "q8_0_from_release"]

MAGIC = b"GGUF"
VERSION = 3
ALIGNMENT = 32
QK = 32  # elements per block of the block types here
# Metadata and tensor infos together; the real Grok-1's (its 131072-token vocabulary) take
# about 4 MB. Parsed values take up to about 13x their bytes in Python, so this bounds memory.
MAX_HEADER = 32 << 20


@dataclasses.dataclass(frozen=True)
class GgmlType:
    """A ggml tensor type: its id in the file, block size (elements) and bytes per block."""

    name: str
    id: int
    block: int
    block_bytes: int

    def nbytes(self, count: int) -> int:
        """Bytes of `count` elements (a whole number of blocks)."""
        return count // self.block * self.block_bytes


# Every float and block type of ggml's file format (ggml.h; the gguf package's
# GGML_QUANT_SIZES): id, elements per block, bytes per block. We write the first five and decode
# them ourselves; the rest (K-quants, i-quants, ...) are what llama.cpp's quantizer makes, read
# through the gguf package's reference dequantizers.
GGML_TYPES: dict[str, GgmlType] = {t.name: t for t in (
    GgmlType("F32", 0, 1, 4), GgmlType("F16", 1, 1, 2), GgmlType("Q4_0", 2, QK, 18),
    GgmlType("Q8_0", 8, QK, 34), GgmlType("BF16", 30, 1, 2),
    GgmlType("Q4_1", 3, 32, 20), GgmlType("Q5_0", 6, 32, 22), GgmlType("Q5_1", 7, 32, 24),
    GgmlType("Q8_1", 9, 32, 40), GgmlType("Q2_K", 10, 256, 84),
    GgmlType("Q3_K", 11, 256, 110), GgmlType("Q4_K", 12, 256, 144),
    GgmlType("Q5_K", 13, 256, 176), GgmlType("Q6_K", 14, 256, 210),
    GgmlType("Q8_K", 15, 256, 292), GgmlType("IQ2_XXS", 16, 256, 66),
    GgmlType("IQ2_XS", 17, 256, 74), GgmlType("IQ3_XXS", 18, 256, 98),
    GgmlType("IQ1_S", 19, 256, 50), GgmlType("IQ4_NL", 20, 32, 18),
    GgmlType("IQ3_S", 21, 256, 110), GgmlType("IQ2_S", 22, 256, 82),
    GgmlType("IQ4_XS", 23, 256, 136), GgmlType("F64", 28, 1, 8),
    GgmlType("IQ1_M", 29, 256, 56), GgmlType("TQ1_0", 34, 256, 54),
    GgmlType("TQ2_0", 35, 256, 66), GgmlType("MXFP4", 39, 32, 17),
)}
OWN_TYPES = ("F32", "F16", "Q4_0", "Q8_0", "BF16", "MXFP4")  # encoded and decoded here
# MXFP4's e2m1 values, doubled (ggml's kvalues_mxfp4), in the order of their 4-bit codes
MXFP4_VALUES = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.float32)
# halfway between neighbouring magnitudes 0, 1, 2, 3, 4, 6, 8, 12
_MXFP4_MIDPOINTS = np.array([0.5, 1.5, 2.5, 3.5, 5, 7, 10], np.float32)
_BY_ID = {t.id: t for t in GGML_TYPES.values()}

# GGUF value types
_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _FLOAT32, _BOOL, _STRING, _ARRAY = range(10)
_UINT64, _INT64, _FLOAT64 = 10, 11, 12
_SCALARS = {_UINT8: "<B", _INT8: "<b", _UINT16: "<H", _INT16: "<h", _UINT32: "<I",
            _INT32: "<i", _FLOAT32: "<f", _BOOL: "<?", _UINT64: "<Q", _INT64: "<q",
            _FLOAT64: "<d"}
_TYPE_NAMES = {_UINT8: "uint8", _INT8: "int8", _UINT16: "uint16", _INT16: "int16",
               _UINT32: "uint32", _INT32: "int32", _FLOAT32: "float32", _BOOL: "bool",
               _STRING: "string", _ARRAY: "array", _UINT64: "uint64", _INT64: "int64",
               _FLOAT64: "float64"}
# Keys whose type the readers rely on (llama.cpp's loader refuses other types for these too).
KEY_TYPES = {"general.alignment": (_UINT32,), "general.architecture": (_STRING,),
             "split.no": (_UINT16,), "split.count": (_UINT16,),
             "split.tensors.count": (_INT32, _UINT32, _UINT64, _INT64),
             "grok1.config": (_STRING,)}
_NUMPY = {_UINT8: "<u1", _INT8: "<i1", _UINT16: "<u2", _INT16: "<i2", _UINT32: "<u4",
          _INT32: "<i4", _FLOAT32: "<f4", _BOOL: "<u1", _UINT64: "<u8", _INT64: "<i8",
          _FLOAT64: "<f8"}


# ---- block types -------------------------------------------------------------------------

def _f16(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, np.float32).astype(np.float16)


def encode(values: np.ndarray, kind: str) -> np.ndarray:
    """float32 rows [..., n] (n a multiple of the block) -> the raw bytes of type `kind`, as
    ggml's reference quantizers make them (round half away from zero, f16 scales)."""
    x = np.ascontiguousarray(values, np.float32)
    if kind == "F32":
        return x.view(np.uint8).reshape(-1)
    if kind == "F16":
        return _f16(x).view(np.uint8).reshape(-1)
    if kind == "BF16":
        return f32_to_bf16_bits(x).view(np.uint8).reshape(-1)
    blocks = x.reshape(-1, QK)
    if kind == "Q8_0":
        amax = np.abs(blocks).max(axis=1, keepdims=True)
        d = amax / np.float32(127)
        inverse = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
        codes = _round_away(blocks * inverse).astype(np.int8)
        return _pack_blocks(_f16(d), codes.view(np.uint8))
    if kind == "Q4_0":
        index = np.abs(blocks).argmax(axis=1)[:, None]
        peak = np.take_along_axis(blocks, index, axis=1)
        d = peak / np.float32(-8)
        inverse = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
        q = np.minimum(np.float32(15), np.trunc(blocks * inverse + np.float32(8.5))).astype(
            np.uint8)
        return _pack_blocks(_f16(d), q[:, :16] | (q[:, 16:] << 4))
    if kind == "MXFP4":
        return _mxfp4(blocks)
    raise UsageError(f"cannot encode GGUF type {kind}")


def mxfp4_half_scale(exponent: np.ndarray) -> np.ndarray:
    """Half of 2^(e - 127) for e8m0 exponents (ggml's ggml_e8m0_to_fp32_half), as float32."""
    e = exponent.astype(np.uint32)
    bits = np.where(e < 2, np.uint32(0x00200000) << e, (e - np.uint32(1)) << np.uint32(23))
    return bits.view(np.float32)


def _mxfp4(blocks: np.ndarray) -> np.ndarray:
    """ggml's MXFP4 rule, as gguf-py's reference quantizer applies it: the shared exponent is
    floor(log2(max |x|)) - 2 (its largest value then lands at or below 6 x 2^e: this rule floors,
    where compressed-tensors' rounds a maximum with mantissa >= 1.75 up), and each value takes the
    nearest of the 16 codes, the first in code order on a tie (the smaller magnitude, and +0 for
    a negative value that rounds to zero). The reference measures all 16 distances; here |x| in
    units of half the scale is compared with the midpoints of the grid (each an exact multiple
    of a power of two), which decides the same way (each distance it compares is exact)."""
    magnitude = np.abs(blocks)
    amax = magnitude.max(axis=1)
    with np.errstate(divide="ignore"):
        exponent = np.where(amax > 0, np.floor(np.log2(amax)) - 2 + 127, 0).astype(np.uint8)
    half = mxfp4_half_scale(exponent)
    codes = np.zeros(blocks.shape, np.uint8)
    for midpoint in _MXFP4_MIDPOINTS:  # codes 0-7 count the midpoints below |x|
        codes += magnitude > (half * midpoint)[:, None]
    np.add(codes, np.uint8(8), out=codes, where=(blocks < 0) & (codes > 0))
    out = np.empty((blocks.shape[0], 17), np.uint8)
    out[:, 0] = exponent
    out[:, 1:] = codes[:, :16] | (codes[:, 16:] << 4)
    return out.reshape(-1)


def _round_away(x: np.ndarray) -> np.ndarray:
    return np.trunc(x + np.copysign(np.float32(0.5), x))


def _pack_blocks(scales: np.ndarray, payload: np.ndarray) -> np.ndarray:
    out = np.empty((payload.shape[0], 2 + payload.shape[1]), np.uint8)
    out[:, :2] = scales.reshape(-1, 1).view(np.uint8)
    out[:, 2:] = payload
    return out.reshape(-1)


def decode(raw: np.ndarray, kind: str, shape: tuple[int, ...]) -> np.ndarray:
    """The raw bytes of one tensor of type `kind` -> float32 of `shape` (rows innermost)."""
    raw = np.asarray(raw, np.uint8)
    if kind == "F32":
        return raw.view(np.float32).reshape(shape).copy()
    if kind == "F16":
        return raw.view(np.float16).astype(np.float32).reshape(shape)
    if kind == "BF16":
        return bf16_bits_to_f32(raw.view(np.uint16)).reshape(shape)
    if kind not in OWN_TYPES:
        return _decode_with_gguf(raw, kind, shape)
    block = GGML_TYPES[kind].block_bytes
    blocks = raw.reshape(-1, block)
    if kind == "MXFP4":
        q = blocks[:, 1:]
        codes = np.concatenate([q & 0x0F, q >> 4], axis=1)
        return (MXFP4_VALUES[codes] * mxfp4_half_scale(blocks[:, 0])[:, None]).reshape(shape)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    if kind == "Q8_0":
        codes = blocks[:, 2:].view(np.int8).astype(np.float32)
    else:
        q = blocks[:, 2:]
        codes = np.concatenate([q & 0x0F, q >> 4], axis=1).astype(np.float32) - 8
    return (codes * d).reshape(shape)


def _decode_with_gguf(raw: np.ndarray, kind: str, shape: tuple[int, ...]) -> np.ndarray:
    """A type llama.cpp's quantizer makes, through the gguf package's dequantizer."""
    try:
        from gguf.constants import GGMLQuantizationType
        from gguf.quants import dequantize
    except ImportError:
        raise UsageError(f"reading GGUF type {kind} needs the gguf package by the llama.cpp "
                         "authors: pip install 'grok1-toolchain[gguf]'") from None
    rows = raw.reshape(-1, GGML_TYPES[kind].nbytes(shape[-1]))
    return np.asarray(dequantize(rows, GGMLQuantizationType[kind]), np.float32).reshape(shape)


def q8_0_from_release(codes: np.ndarray, scales_bits: np.ndarray) -> np.ndarray | None:
    """Q8_0 bytes of one matrix [out, in] from the release's codes [out, in] (int8) and bf16
    scale bits [out, G]: each 32-code block keeps its codes and takes its group's scale, when
    every block lies inside one scale group and every scale is an exact f16 (else None)."""
    cols = codes.shape[1]
    groups = scales_bits.shape[1]
    if cols % QK or cols % groups or (cols // groups) % QK:
        return None
    scales = bf16_bits_to_f32(scales_bits)
    as_f16 = scales.astype(np.float16)
    if not np.array_equal(as_f16.astype(np.float32), scales):
        return None
    per_group = cols // groups // QK
    block_scales = np.repeat(as_f16, per_group, axis=1).reshape(-1)
    return _pack_blocks(block_scales, np.ascontiguousarray(codes).view(np.uint8).reshape(-1, QK))


# ---- the container -----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file: name, numpy-order shape (outermost first), ggml type."""

    name: str
    shape: tuple[int, ...]
    kind: str

    @property
    def nbytes(self) -> int:
        """Bytes of its data."""
        return GGML_TYPES[self.kind].nbytes(math.prod(self.shape))


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _value(value: Any) -> tuple[int, bytes]:
    if isinstance(value, bool):
        return _BOOL, struct.pack("<?", value)
    if isinstance(value, int):
        return (_UINT32, struct.pack("<I", value)) if 0 <= value < 2**32 else (
            _INT64, struct.pack("<q", value))
    if isinstance(value, float):
        return _FLOAT32, struct.pack("<f", value)
    if isinstance(value, str):
        return _STRING, _string(value)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], int):
        kind, scalar = value  # an explicitly typed scalar
        return kind, struct.pack(_SCALARS[kind], scalar)
    if isinstance(value, np.ndarray):
        kind = {np.dtype("<f4"): _FLOAT32, np.dtype("<i4"): _INT32}[value.dtype]
        return _ARRAY, struct.pack("<IQ", kind, value.size) + value.tobytes()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return _ARRAY, struct.pack("<IQ", _STRING, len(value)) + b"".join(map(_string, value))
    raise UsageError(f"cannot store {type(value).__name__} in GGUF metadata")


class GGUFWriter:
    """Writes one GGUF file: the header is planned from the metadata and tensor infos, then each
    tensor's bytes are streamed in plan order (a tensor may come in several pieces)."""

    def __init__(self, path: Path, metadata: dict[str, Any], tensors: list[TensorInfo]) -> None:
        self.path, self.tensors = Path(path), tensors
        head = [MAGIC, struct.pack("<IQQ", VERSION, len(tensors), len(metadata))]
        for key, value in metadata.items():
            kind, raw = _value(value)
            head += [_string(key), struct.pack("<I", kind), raw]
        offset = 0
        for info in tensors:
            dims = info.shape[::-1]
            head += [_string(info.name), struct.pack("<I", len(dims)),
                     struct.pack(f"<{len(dims)}Q", *dims),
                     struct.pack("<IQ", GGML_TYPES[info.kind].id, offset)]
            offset += info.nbytes + (-info.nbytes % ALIGNMENT)
        header = b"".join(head)
        self._header = header + b"\0" * (-len(header) % ALIGNMENT)
        self._index, self._left = 0, tensors[0].nbytes if tensors else 0
        self.digests: dict[str, str] = {}

    def __enter__(self) -> GGUFWriter:
        self._context = atomic_open(self.path)
        self._file = self._context.__enter__()
        self._file.write(self._header)
        self._hash = hashlib.sha256(self._header)
        self._tensor_hash = hashlib.sha256()
        return self

    def write(self, name: str, raw: np.ndarray) -> None:
        """The next bytes of tensor `name` (all of it, or the next piece)."""
        info = self.tensors[self._index] if self._index < len(self.tensors) else None
        data = memoryview(np.ascontiguousarray(raw).reshape(-1).view(np.uint8))
        if info is None or info.name != name or data.nbytes > self._left:
            raise UsageError(f"{self.path}: wrote {data.nbytes} bytes of {name}, the plan "
                             f"expects {info.name if info else 'nothing'} "
                             f"({self._left} bytes left)")
        self._file.write(data)
        self._hash.update(data)
        self._tensor_hash.update(data)
        self._left -= data.nbytes
        if self._left == 0:
            pad = b"\0" * (-info.nbytes % ALIGNMENT)
            self._file.write(pad)
            self._hash.update(pad)
            self.digests[name] = self._tensor_hash.hexdigest()
            self._tensor_hash = hashlib.sha256()
            self._index += 1
            self._left = self.tensors[self._index].nbytes if self._index < len(
                self.tensors) else 0

    @property
    def file_sha256(self) -> str:
        """The sha256 of the whole file (valid once every tensor is written)."""
        return self._hash.hexdigest()

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None and self._index != len(self.tensors):
            error = UsageError(f"{self.path}: finished after {self._index} of "
                               f"{len(self.tensors)} tensors")
            self._context.__exit__(UsageError, error, None)
            raise error
        self._context.__exit__(*exc)


class GGUFReader:
    """One GGUF file, parsed with bounds checks; tensor data memory-mapped."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            from converter.errors import CheckpointNotFoundError
            raise CheckpointNotFoundError(f"{self.path}: missing or not a regular file")
        with open(self.path, "rb") as f:
            size = f.seek(0, 2)
            if size < 24:
                raise MalformedFileError(f"{self.path}: truncated ({size} bytes)")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._pos = 0
        try:
            self._parse()
        except MalformedFileError:
            raise
        except (struct.error, UnicodeDecodeError, ValueError, KeyError, OverflowError,
                RecursionError) as exc:
            raise MalformedFileError(f"{self.path}: malformed GGUF near byte {self._pos} "
                                     f"({type(exc).__name__})") from None

    def _take(self, n: int) -> bytes:
        if n < 0 or self._pos + n > len(self._map):
            raise MalformedFileError(f"{self.path}: truncated GGUF (needs byte "
                                     f"{self._pos + n}, file has {len(self._map)})")
        if self._pos + n > MAX_HEADER:
            raise MalformedFileError(f"{self.path}: GGUF metadata and tensor infos larger than "
                                     f"{MAX_HEADER >> 20} MiB; refused")
        chunk = self._map[self._pos:self._pos + n]
        self._pos += n
        return chunk

    def _unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self._take(struct.calcsize(fmt)))[0]

    def _read_string(self) -> str:
        return self._take(self._unpack("<Q")).decode("utf-8")

    def _read_value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self._unpack(_SCALARS[kind])
        if kind == _STRING:
            return self._read_string()
        if kind == _ARRAY:
            item, count = self._unpack("<I"), self._unpack("<Q")
            if item == _ARRAY:
                raise MalformedFileError(f"{self.path}: an array of arrays (llama.cpp reads "
                                         "none)")
            if count > len(self._map):
                raise MalformedFileError(f"{self.path}: an array of {count} items")
            if item in _NUMPY:
                width = np.dtype(_NUMPY[item]).itemsize
                return np.frombuffer(self._take(count * width), _NUMPY[item]).copy()
            return [self._read_value(item) for _ in range(count)]
        raise MalformedFileError(f"{self.path}: unknown GGUF value type {kind}")

    def _parse(self) -> None:
        if self._take(4) != MAGIC:
            raise MalformedFileError(f"{self.path}: not a GGUF file (bad magic)")
        version = self._unpack("<I")
        if version not in (2, 3):
            raise MalformedFileError(f"{self.path}: GGUF version {version} (reads 2 and 3)")
        n_tensors, n_kv = self._unpack("<Q"), self._unpack("<Q")
        if n_tensors > 1 << 24 or n_kv > 1 << 24:
            raise MalformedFileError(f"{self.path}: {n_tensors} tensors, {n_kv} keys")
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self._read_string()
            if key in self.metadata:
                raise MalformedFileError(f"{self.path}: metadata key {key!r} appears twice")
            kind = self._unpack("<I")
            if kind in KEY_TYPES.get(key, (kind,)):
                self.metadata[key] = self._read_value(kind)
            else:
                expected = " or ".join(_TYPE_NAMES[k] for k in KEY_TYPES[key])
                raise MalformedFileError(f"{self.path}: metadata key {key!r} is of type "
                                         f"{_TYPE_NAMES.get(kind, kind)}, expected {expected}")
        alignment = self.metadata.get("general.alignment", ALIGNMENT)
        if alignment <= 0 or alignment & (alignment - 1):
            raise MalformedFileError(f"{self.path}: alignment {alignment} is not a power of 2")
        infos = []
        for _ in range(n_tensors):
            name = self._read_string()
            n_dims = self._unpack("<I")
            if n_dims > 4:
                raise MalformedFileError(f"{self.path}: {name} has {n_dims} dimensions")
            dims = struct.unpack(f"<{n_dims}Q", self._take(8 * n_dims))
            kind, offset = self._unpack("<I"), self._unpack("<Q")
            if kind not in _BY_ID:
                raise MalformedFileError(f"{self.path}: {name} has ggml type id {kind}, which "
                                         "is not a float or block type of ggml")
            infos.append((TensorInfo(name, tuple(int(d) for d in dims[::-1]),
                                     _BY_ID[kind].name), offset))
        data = self._pos + (-self._pos % alignment)
        self.tensors: dict[str, tuple[TensorInfo, int]] = {}
        expected = 0  # as llama.cpp: each tensor starts where the previous one's padding ends
        for info, offset in infos:
            ggml = GGML_TYPES[info.kind]
            if math.prod(info.shape) % ggml.block or data + offset + info.nbytes > len(
                    self._map):
                raise MalformedFileError(f"{self.path}: {info.name} ({info.kind} "
                                         f"{list(info.shape)}) does not fit the file")
            if info.name in self.tensors:
                raise MalformedFileError(f"{self.path}: tensor {info.name} appears twice")
            if offset != expected:
                raise MalformedFileError(f"{self.path}: tensor {info.name} is at data offset "
                                         f"{offset}, expected {expected} (tensors must follow "
                                         "each other, aligned, without overlap)")
            self.tensors[info.name] = (info, data + offset)
            expected = offset + info.nbytes + (-info.nbytes % alignment)

    def raw(self, name: str) -> np.ndarray:
        """The bytes of one tensor (a view of the memory map)."""
        info, start = self.tensors[name]
        return np.frombuffer(self._map, np.uint8, info.nbytes, start)

    def read(self, name: str) -> np.ndarray:
        """One tensor as float32 of its numpy-order shape."""
        info, _ = self.tensors[name]
        return decode(self.raw(name), info.kind, info.shape)
