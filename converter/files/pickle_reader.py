"""Read one leaf of the original checkpoint without executing any pickle code.

The release pickles each leaf with protocol 4: either a numpy array or a
`__main__.QuantizedWeight8bit` holding an int8 `weight` and a bfloat16 `scales` array. This module
walks the opcode stream itself, evaluating only the handful of opcodes such a file contains, and
resolves globals from an exact allow-list into inert markers: nothing is imported or called. Array
payloads are returned as zero-copy views of a read-only memory map of the file.
"""

from __future__ import annotations

import dataclasses
import math
import mmap
import struct
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import MalformedFileError, UnsafePickleError
from converter.tensors import QuantizedWeight8bit

__all__ = ["ALLOWED_GLOBALS", "ArrayRef", "load_leaf", "parse_leaf"]

# (module, name) -> marker. Nothing else may appear in a GLOBAL / STACK_GLOBAL opcode.
ALLOWED_GLOBALS: dict[tuple[str, str], str] = {
    ("numpy.core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy._core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
    ("ml_dtypes", "bfloat16"): "bfloat16",
    ("__main__", "QuantizedWeight8bit"): "QuantizedWeight8bit",
}
_DTYPES = {"f4": np.dtype("<f4"), "i1": np.dtype("i1"), "bfloat16": np.dtype("<u2")}
# A release leaf is about 70 opcodes with strings of at most a few dozen bytes. These bounds keep
# the walker's memory and time small whatever a hostile file holds.
_MAX_OPS = 4096
_MAX_TEXT = 1024


@dataclasses.dataclass(frozen=True)
class _Global:
    marker: str


@dataclasses.dataclass(frozen=True)
class _Bytes:
    offset: int
    length: int


@dataclasses.dataclass(frozen=True)
class _Dtype:
    name: str


class _Mark:
    pass


@dataclasses.dataclass
class _QuantizedStub:
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ArrayRef:
    """An array found in the file: dtype name (`f4`, `i1`, `bfloat16`), shape and payload place."""

    dtype: str = ""
    shape: tuple[int, ...] = ()
    fortran: bool = False
    offset: int = -1
    nbytes: int = 0

    @property
    def built(self) -> bool:
        """Whether BUILD gave this array its dtype, shape and payload."""
        return self.offset >= 0 and self.dtype in _DTYPES

    def view(self, buffer: Any) -> np.ndarray:
        """Zero-copy numpy view of this array in `buffer` (bf16 comes back as uint16 bits)."""
        dtype = _DTYPES[self.dtype]
        count = math.prod(self.shape)
        flat = np.frombuffer(buffer, dtype=dtype, count=count, offset=self.offset)
        return flat.reshape(self.shape, order="F" if self.fortran else "C")


Leaf = ArrayRef | dict[str, ArrayRef]


class _Walker:
    """Evaluates the subset of pickle opcodes a release leaf uses, symbolically."""

    def __init__(self, data: Any, path: Path) -> None:
        self.data = data
        self.path = path
        self.pos = 0
        self.stack: list[Any] = []
        self.marks: list[list[Any]] = []
        self.memo: dict[int, Any] = {}

    def fail(self, message: str, unsafe: bool = False) -> None:
        cls = UnsafePickleError if unsafe else MalformedFileError
        raise cls(f"{self.path}: {message}")

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            self.fail(f"truncated: needs {end} bytes, file has {len(self.data)}")
        chunk = bytes(self.data[self.pos:end])
        self.pos = end
        return chunk

    def skip_payload(self, n: int) -> _Bytes:
        offset = self.pos
        if offset + n > len(self.data):
            self.fail(f"truncated: a {n}-byte payload at offset {offset} runs past the end "
                      f"of the file ({len(self.data)} bytes)")
        self.pos += n
        return _Bytes(offset, n)

    def pop_mark(self) -> list[Any]:
        if not self.marks:
            self.fail(f"malformed pickle: no MARK before offset {self.pos}")
        items, self.stack = self.stack, self.marks.pop()
        return items

    def pop(self) -> Any:
        if not self.stack:
            self.fail(f"malformed pickle: stack underflow at offset {self.pos}")
        return self.stack.pop()

    def run(self) -> Any:
        ops = _OPS
        for _ in range(_MAX_OPS):
            if self.pos >= len(self.data):
                self.fail("truncated: no STOP opcode before the end of the file")
            code = self.data[self.pos]
            self.pos += 1
            handler = ops.get(code)
            if handler is None:
                self.fail(f"unsupported pickle opcode {bytes([code])!r} at offset {self.pos - 1}",
                          unsafe=True)
            if handler(self):
                return self.pop()
        self.fail(f"malformed pickle: more than {_MAX_OPS} opcodes (a release leaf has about "
                  "70)")

    def global_(self, module: str, name: str) -> None:
        marker = ALLOWED_GLOBALS.get((module, name))
        if marker is None:
            self.fail(f"refuses pickle global {module}.{name}: only "
                      f"{sorted('.'.join(k) for k in ALLOWED_GLOBALS)} are allowed", unsafe=True)
        self.stack.append(_Global(marker))

    def reduce(self) -> None:
        args = self.pop()
        func = self.pop()
        if func == _Global("reconstruct"):
            if not (isinstance(args, tuple) and args[:1] == (_Global("ndarray"),)):
                self.fail("malformed pickle: _reconstruct of something other than an ndarray")
            self.stack.append(ArrayRef())
        elif func == _Global("dtype"):
            kind = args[0] if isinstance(args, tuple) and args else None
            name = kind.marker if isinstance(kind, _Global) else kind
            if name not in _DTYPES:
                self.fail(f"unsupported array dtype {name!r} (expected f4, i1 or bfloat16)")
            self.stack.append(_Dtype(name))
        else:
            self.fail(f"refuses to call {func!r} at offset {self.pos - 1}", unsafe=True)

    def newobj(self) -> None:
        self.pop()
        cls = self.pop()
        if cls != _Global("QuantizedWeight8bit"):
            self.fail(f"refuses to construct {cls!r}", unsafe=True)
        self.stack.append(_QuantizedStub())

    def build(self) -> None:
        state = self.pop()
        obj = self.stack[-1] if self.stack else None
        if isinstance(obj, ArrayRef):
            if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], _Dtype)
                    and isinstance(state[4], _Bytes)):
                self.fail("malformed ndarray state")
            _, shape, dtype, fortran, payload = state
            if not (isinstance(shape, tuple) and len(shape) <= 8 and all(
                    isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
                self.fail(f"malformed ndarray shape {shape!r}")
            obj.dtype, obj.shape, obj.fortran = dtype.name, shape, bool(fortran)
            obj.offset, obj.nbytes = payload.offset, payload.length
            expected = math.prod(obj.shape) * _DTYPES[obj.dtype].itemsize
            if expected != payload.length:
                self.fail(f"array of shape {obj.shape} {obj.dtype} needs {expected} bytes, "
                          f"payload has {payload.length}")
        elif isinstance(obj, _Dtype):
            if not (isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", "|", "=")):
                self.fail("unsupported dtype state (big-endian or exotic)")
        elif isinstance(obj, _QuantizedStub):
            if not isinstance(state, dict):
                self.fail("malformed QuantizedWeight8bit state")
            obj.fields.update(state)
        else:
            self.fail(f"refuses BUILD on {type(obj).__name__}", unsafe=True)


def _u(fmt: str):
    size = struct.calcsize(fmt)
    return lambda w: struct.unpack(fmt, w.take(size))[0]


_u1, _u2, _u4, _i4, _u8 = _u("<B"), _u("<H"), _u("<I"), _u("<i"), _u("<Q")


def _push(w: _Walker, value: Any) -> None:
    w.stack.append(value)


def _tuple(n: int):
    def op(w: _Walker) -> None:
        items = [w.pop() for _ in range(n)][::-1]
        w.stack.append(tuple(items))
    return op


def _mark(w: _Walker) -> None:
    w.marks.append(w.stack)
    w.stack = []


def _setitems(w: _Walker) -> None:
    items = w.pop_mark()
    target = w.stack[-1] if w.stack else None
    if not isinstance(target, dict) or len(items) % 2 or not all(
            isinstance(k, str) for k in items[::2]):
        w.fail("malformed SETITEMS")
    for key, value in zip(items[::2], items[1::2], strict=True):
        target[key] = value


def _setitem(w: _Walker) -> None:
    value, key = w.pop(), w.pop()
    target = w.stack[-1] if w.stack else None
    if not isinstance(target, dict) or not isinstance(key, str):
        w.fail("malformed SETITEM")
    target[key] = value


def _memo_get(w: _Walker, index: int) -> None:
    if index not in w.memo:
        w.fail(f"malformed pickle: memo {index} read before it was written")
    w.stack.append(w.memo[index])


def _memo_put(w: _Walker, index: int) -> None:
    if not w.stack:
        w.fail("malformed pickle: memoize on an empty stack")
    w.memo[index] = w.stack[-1]


def _stack_global(w: _Walker) -> None:
    name, module = w.pop(), w.pop()
    if not (isinstance(module, str) and isinstance(name, str)):
        w.fail("malformed STACK_GLOBAL operands", unsafe=True)
    w.global_(module, name)


def _global(w: _Walker) -> None:
    end = bytes(w.data[w.pos:w.pos + 512]).split(b"\n", 2)
    if len(end) < 3:
        w.fail("malformed GLOBAL opcode")
    module, name = end[0].decode("ascii", "replace"), end[1].decode("ascii", "replace")
    w.pos += len(end[0]) + len(end[1]) + 2
    w.global_(module, name)


def _text(w: _Walker, n: int) -> None:
    if n > _MAX_TEXT:
        w.fail(f"malformed pickle: a {n}-byte string (a release leaf holds only short names)")
    try:
        w.stack.append(w.take(n).decode("utf-8"))
    except UnicodeDecodeError:
        w.fail("malformed pickle: invalid UTF-8 string")


_OPS: dict[int, Any] = {
    0x80: lambda w: (_u1(w), None)[1],                       # PROTO
    0x95: lambda w: (_u8(w), None)[1],                       # FRAME (frames are transparent)
    0x8C: lambda w: _text(w, _u1(w)),                        # SHORT_BINUNICODE
    ord("X"): lambda w: _text(w, _u4(w)),                    # BINUNICODE
    0x94: lambda w: _memo_put(w, len(w.memo)),               # MEMOIZE
    ord("q"): lambda w: _memo_put(w, _u1(w)),                # BINPUT
    ord("r"): lambda w: _memo_put(w, _u4(w)),                # LONG_BINPUT
    ord("h"): lambda w: _memo_get(w, _u1(w)),                # BINGET
    ord("j"): lambda w: _memo_get(w, _u4(w)),                # LONG_BINGET
    0x93: _stack_global,                                     # STACK_GLOBAL
    ord("c"): _global,                                       # GLOBAL
    ord("K"): lambda w: _push(w, _u1(w)),                    # BININT1
    ord("M"): lambda w: _push(w, _u2(w)),                    # BININT2
    ord("J"): lambda w: _push(w, _i4(w)),                    # BININT
    ord("N"): lambda w: _push(w, None),                      # NONE
    0x88: lambda w: _push(w, True),                          # NEWTRUE
    0x89: lambda w: _push(w, False),                         # NEWFALSE
    ord(")"): lambda w: _push(w, ()),                        # EMPTY_TUPLE
    0x85: _tuple(1),
    0x86: _tuple(2),
    0x87: _tuple(3),
    ord("("): _mark,                                         # MARK
    ord("t"): lambda w: _push(w, tuple(w.pop_mark())),       # TUPLE
    ord("}"): lambda w: _push(w, {}),                        # EMPTY_DICT
    ord("u"): _setitems,
    ord("s"): _setitem,
    ord("R"): lambda w: w.reduce(),
    0x81: lambda w: w.newobj(),                              # NEWOBJ
    ord("b"): lambda w: w.build(),
    ord("C"): lambda w: _push(w, w.skip_payload(_u1(w))),    # SHORT_BINBYTES
    ord("B"): lambda w: _push(w, w.skip_payload(_u4(w))),    # BINBYTES
    0x8E: lambda w: _push(w, w.skip_payload(_u8(w))),        # BINBYTES8
    ord("."): lambda w: True,                                # STOP
}


def parse_leaf(data: Any, path: Path) -> Leaf:
    """Walk the pickle in `data` (bytes or mmap); return where its array(s) live."""
    walker = _Walker(data, Path(path))
    try:
        result = walker.run()
    except MalformedFileError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, OverflowError, AttributeError,
            struct.error) as exc:  # a structure no release leaf has, whatever it is
        raise MalformedFileError(f"{path}: malformed pickle near offset {walker.pos} "
                                 f"({type(exc).__name__})") from None
    if walker.pos != len(data):
        walker.fail(f"{len(data) - walker.pos} trailing bytes after the pickle's STOP")
    if isinstance(result, ArrayRef):
        if not result.built:
            walker.fail("malformed pickle: an array that was never given its data")
        return result
    if isinstance(result, _QuantizedStub):
        fields = result.fields
        if set(fields) != {"weight", "scales"} or not all(
                isinstance(v, ArrayRef) and v.built for v in fields.values()):
            walker.fail(f"QuantizedWeight8bit with fields {sorted(map(str, fields))}, "
                        "expected weight and scales arrays")
        if fields["weight"].dtype != "i1" or fields["scales"].dtype != "bfloat16":
            walker.fail(f"QuantizedWeight8bit with weight {fields['weight'].dtype} and scales "
                        f"{fields['scales'].dtype}, expected int8 and bfloat16")
        return dict(fields)
    walker.fail(f"pickle holds a {type(result).__name__}, expected an array or "
                "QuantizedWeight8bit")
    raise AssertionError("unreachable")


def load_leaf(path: Path) -> np.ndarray | QuantizedWeight8bit:
    """Memory-map one release file and return its value as zero-copy arrays."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise MalformedFileError(f"{path}: not a regular file")
    try:
        with open(path, "rb") as f:
            if f.seek(0, 2) == 0:
                raise MalformedFileError(f"{path}: empty file")
            buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        from converter.errors import CheckpointNotFoundError
        raise CheckpointNotFoundError(f"{path}: missing") from None
    leaf = parse_leaf(buffer, path)
    if isinstance(leaf, ArrayRef):
        return leaf.view(buffer)
    return QuantizedWeight8bit(weight=leaf["weight"].view(buffer),
                               scales=leaf["scales"].view(buffer))
