"""The layout registry: every checkpoint layout the toolchain reads and writes, by name.

A layout is one module holding its reader, its target (writer), its tensor names and its
sidecar files, and exporting a `Layout` entry; it is added to the toolchain by one row in
`LAYOUTS` below. Detection, `open_checkpoint`, `inspect`, and the CLI's `--to` choices all
come from this table.
"""

from __future__ import annotations

from pathlib import Path

from converter.errors import LayoutError, UsageError
from converter.layouts import gguf, hf, xai
from converter.layouts.base import CheckpointReader, Layout, require_folder

__all__ = ["DTYPES", "LAYOUTS", "CheckpointReader", "Layout", "detect_layout", "layout",
           "open_checkpoint", "require_folder"]

LAYOUTS: dict[str, Layout] = {entry.name: entry for entry in (
    xai.LAYOUT,
    hf.SAFETENSORS,
    hf.TORCH,
    gguf.LAYOUT,
)}


# every --dtype some layout takes, in a stable order
DTYPES: tuple[str, ...] = tuple(dict.fromkeys(d for e in LAYOUTS.values() for d in e.dtypes))


def layout(name: str) -> Layout:
    """A registered layout by name."""
    if name not in LAYOUTS:
        raise UsageError(f"unknown layout {name!r}; known: {', '.join(LAYOUTS)}")
    return LAYOUTS[name]


def detect_layout(path: Path) -> str:
    """The name of the layout of the checkpoint at `path` (the first registered that fits): a
    folder, or a .gguf file."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return "gguf"
    path = require_folder(path)
    for entry in LAYOUTS.values():
        if entry.detect(path):
            return entry.name
    raise LayoutError(f"{path}: not a checkpoint in any known layout ("
                      + "; ".join(f"{e.name}: {e.summary}" for e in LAYOUTS.values()) + ")")


def open_checkpoint(path: Path) -> CheckpointReader:
    """Open a checkpoint in whichever layout `path` holds."""
    return LAYOUTS[detect_layout(path)].open(Path(path))
