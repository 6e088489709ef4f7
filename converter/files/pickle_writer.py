"""Write one leaf of the original checkpoint, byte for byte as the release's pickler did.

The release files are `pickle.dump(leaf, f, protocol=4)` of a numpy array (numpy 1.x) or of a
`__main__.QuantizedWeight8bit`. This module emits the same opcode stream itself, including the
C pickler's framing (frames committed at 64 KiB opcode boundaries, payloads of 64 KiB or more
written outside frames) and memo numbering, so nothing needs numpy 1.x, ml_dtypes or the class.

`encode_leaf` returns the file as a list of parts: `bytes` for pickle structure and `PayloadSlot`
markers where an array's raw bytes go, so a writer can stream payloads of any size.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Hashable

__all__ = ["NUMPY1_RECONSTRUCT", "ArrayMeta", "PayloadSlot", "encode_leaf"]

NUMPY1_RECONSTRUCT = "numpy.core.multiarray"
_FRAME_TARGET = 64 * 1024
_FRAME_MIN = 4

# numpy dtype name -> (dtype constructor argument, byteorder char, elsize, alignment, flags) as
# numpy's dtype.__reduce__ reports them.
_DTYPE_STATE = {
    "f4": ("f4", "<", -1, -1, 0),
    "i1": ("i1", "|", -1, -1, 0),
    "bfloat16": (("ml_dtypes", "bfloat16"), "<", 2, 2, 64),
}
_ITEMSIZE = {"f4": 4, "i1": 1, "bfloat16": 2}


@dataclasses.dataclass(frozen=True)
class ArrayMeta:
    """An array to pickle: dtype name (`f4`, `i1`, `bfloat16`) and shape; C order."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Payload size in bytes."""
        n = _ITEMSIZE[self.dtype]
        for d in self.shape:
            n *= d
        return n


@dataclasses.dataclass(frozen=True)
class PayloadSlot:
    """Where the raw bytes of array `index` (0 = weight or the array, 1 = scales) go."""

    index: int
    nbytes: int


Part = bytes | PayloadSlot


class _Emitter:
    def __init__(self) -> None:
        self.parts: list[Part] = []
        self.frame: list[Part] | None = None
        self.frame_len = 0
        self.framing = True
        self.memo: dict[Hashable, int] = {}
        self.memo_count = 0

    # framing -------------------------------------------------------------------------------
    def write(self, part: Part, length: int | None = None) -> None:
        if not self.framing:
            self.parts.append(part)
            return
        if self.frame is None:
            self.frame, self.frame_len = [], 0
        self.frame.append(part)
        self.frame_len += len(part) if length is None else length

    def commit_frame(self) -> None:
        if self.frame is None:
            return
        if self.frame_len >= _FRAME_MIN:
            self.parts.append(b"\x95" + struct.pack("<Q", self.frame_len))
        self.parts.extend(self.frame)
        self.frame = None

    def boundary(self) -> None:
        if self.frame is not None and self.frame_len >= _FRAME_TARGET:
            self.commit_frame()

    # memo ------------------------------------------------------------------------------------
    def memoize(self, key: Hashable | None) -> None:
        if key is not None:
            self.memo[key] = self.memo_count
        self.memo_count += 1
        self.write(b"\x94")

    def from_memo(self, key: Hashable) -> bool:
        index = self.memo.get(key)
        if index is None:
            return False
        self.write(b"h" + bytes([index]) if index < 256 else b"j" + struct.pack("<I", index))
        return True

    # values ----------------------------------------------------------------------------------
    def save_str(self, text: str) -> None:
        self.boundary()
        if self.from_memo(("str", text)):
            return
        raw = text.encode("utf-8")
        head = b"\x8c" + bytes([len(raw)]) if len(raw) < 256 else b"X" + struct.pack("<I", len(raw))
        self.write(head + raw)
        self.memoize(("str", text))

    def save_int(self, value: int) -> None:
        self.boundary()
        if 0 <= value < 256:
            self.write(b"K" + bytes([value]))
        elif 0 <= value < 65536:
            self.write(b"M" + struct.pack("<H", value))
        elif -(2**31) <= value < 2**31:
            self.write(b"J" + struct.pack("<i", value))
        else:
            raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
            self.write(b"\x8a" + bytes([len(raw)]) + raw)

    def save_const(self, opcode: bytes) -> None:
        self.boundary()
        self.write(opcode)

    def save_global(self, module: str, name: str) -> None:
        self.boundary()
        if self.from_memo(("global", module, name)):
            return
        self.save_str(module)
        self.save_str(name)
        self.write(b"\x93")
        self.memoize(("global", module, name))

    def save_bytes(self, nbytes: int, payload: Part, key: Hashable | None = None) -> None:
        self.boundary()
        if key is not None and self.from_memo(key):
            return
        if nbytes < 256:
            head = b"C" + bytes([nbytes])
        elif nbytes <= 0xFFFFFFFF:
            head = b"B" + struct.pack("<I", nbytes)
        else:
            head = b"\x8e" + struct.pack("<Q", nbytes)
        if nbytes >= _FRAME_TARGET:
            self.commit_frame()
            self.framing = False
            self.write(head)
            self.write(payload)
            self.framing = True
        else:
            self.write(head)
            self.write(payload, nbytes)
        self.memoize(key)

    def save_tuple(self, savers: list) -> None:
        self.boundary()
        if not savers:
            self.write(b")")
            return
        if len(savers) <= 3:
            for save in savers:
                save()
            self.write(bytes([0x84 + len(savers)]))
        else:
            self.write(b"(")
            for save in savers:
                save()
            self.write(b"t")
        self.memoize(None)

    # numpy and the release's container ---------------------------------------------------------
    def save_dtype(self, dtype: str) -> None:
        self.boundary()
        arg, byteorder, elsize, alignment, flags = _DTYPE_STATE[dtype]
        self.save_global("numpy", "dtype")
        first = (lambda: self.save_global(*arg)) if isinstance(arg, tuple) else (
            lambda: self.save_str(arg))
        self.save_tuple([first, lambda: self.save_const(b"\x89"), lambda: self.save_const(b"\x88")])
        self.write(b"R")
        self.memoize(None)
        self.save_tuple([
            lambda: self.save_int(3), lambda: self.save_str(byteorder),
            lambda: self.save_const(b"N"), lambda: self.save_const(b"N"),
            lambda: self.save_const(b"N"), lambda: self.save_int(elsize),
            lambda: self.save_int(alignment), lambda: self.save_int(flags),
        ])
        self.write(b"b")

    def save_array(self, meta: ArrayMeta, slot: PayloadSlot, reconstruct_module: str) -> None:
        self.boundary()
        self.save_global(reconstruct_module, "_reconstruct")
        self.save_tuple([
            lambda: self.save_global("numpy", "ndarray"),
            lambda: self.save_tuple([lambda: self.save_int(0)]),
            lambda: self.save_bytes(1, b"b", key=("bytes", b"b")),
        ])
        self.write(b"R")
        self.memoize(None)
        self.save_tuple([
            lambda: self.save_int(1),
            lambda: self.save_tuple([lambda d=d: self.save_int(d) for d in meta.shape]),
            lambda: self.save_dtype(meta.dtype),
            lambda: self.save_const(b"\x89"),
            lambda: self.save_bytes(meta.nbytes, slot),
        ])
        self.write(b"b")

    def save_quantized(self, weight: ArrayMeta, scales: ArrayMeta, module: str) -> None:
        self.boundary()
        self.save_global("__main__", "QuantizedWeight8bit")
        self.save_tuple([])
        self.write(b"\x81")
        self.memoize(None)
        self.boundary()
        self.write(b"}")
        self.memoize(None)
        self.write(b"(")
        self.save_str("weight")
        self.save_array(weight, PayloadSlot(0, weight.nbytes), module)
        self.save_str("scales")
        self.save_array(scales, PayloadSlot(1, scales.nbytes), module)
        self.write(b"u")
        self.write(b"b")


def encode_leaf(arrays: list[ArrayMeta], *, quantized: bool,
                reconstruct_module: str = NUMPY1_RECONSTRUCT) -> list[Part]:
    """The pickle of one leaf as parts: a plain array, or (weight, scales) when quantized."""
    emitter = _Emitter()
    emitter.parts.append(b"\x80\x04")
    if quantized:
        weight, scales = arrays
        emitter.save_quantized(weight, scales, reconstruct_module)
    else:
        (array,) = arrays
        emitter.save_array(array, PayloadSlot(0, array.nbytes), reconstruct_module)
    emitter.write(b".")
    emitter.commit_frame()
    return emitter.parts
