"""Reading the small files beside a model (config.json, indexes, manifests, text) as hostile
input: only regular files (a FIFO would hang, a link to /dev/zero would fill memory), at most
a stated size, and JSON whose nesting or numbers cannot crash the parser. Every refusal is one
`MalformedFileError` naming the file."""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from converter.errors import CheckpointNotFoundError, MalformedFileError

__all__ = ["MAX_JSON_BYTES", "open_regular", "parse_json", "read_capped", "read_json",
           "read_record"]

MAX_JSON_BYTES = 64 << 20  # the largest index of the real model is about 100 KB


@contextlib.contextmanager
def open_regular(path: Path, what: str = "file") -> Iterator[BinaryIO]:
    """Open `path` for reading if it is a regular file (after links); never blocks on a FIFO."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise MalformedFileError(f"{path}: a folder, not a {what}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):  # Linux opens a folder read-only without complaint
            raise MalformedFileError(f"{path}: a folder, not a {what}")
        raise MalformedFileError(f"{path}: not a regular file (a device, FIFO or socket); "
                                 f"expected a {what}")
    with os.fdopen(fd, "rb") as f:
        yield f


def read_capped(path: Path, limit: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most `limit` bytes."""
    with open_regular(path, what) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise MalformedFileError(f"{path}: larger than {limit:,} bytes; not a {what}")
    return data


def parse_json(raw: bytes | str, where: str,
               object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None) -> Any:
    """JSON from `raw`, with every way the parser can fail (syntax, encoding, nesting deeper
    than Python's recursion limit, integers over 4,300 digits) as one error naming `where`."""
    try:
        return json.loads(raw, object_pairs_hook=object_pairs_hook)
    except RecursionError:
        raise MalformedFileError(f"{where}: JSON nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise MalformedFileError(f"{where}: not UTF-8 ({exc.reason} at byte {exc.start})"
                                 ) from None
    except json.JSONDecodeError as exc:
        raise MalformedFileError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno} "
                                 f"column {exc.colno})") from None
    except ValueError as exc:  # e.g. an integer beyond int_max_str_digits
        raise MalformedFileError(f"{where}: unreadable JSON ({str(exc)[:120]})") from None


def read_json(path: Path, what: str = "JSON file", limit: int = MAX_JSON_BYTES) -> Any:
    """The JSON value in the regular file `path` (at most `limit` bytes)."""
    return parse_json(read_capped(path, limit, what), str(path))


def read_record(path: Path) -> dict[str, Any]:
    """A JSON object this toolchain may have written beside a checkpoint (a manifest, a
    provenance or download record, a report), or {} when there is none or it is not one:
    for what only informs (cards, serving advice, profiles), never for what must be right."""
    try:
        data = read_json(path)
    except (CheckpointNotFoundError, MalformedFileError):
        return {}
    return data if isinstance(data, dict) else {}
