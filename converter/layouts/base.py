"""What a layout is: a reader over the canonical stream, a target that writes units of work, and
the registry entry that ties them to a name, detection and `inspect`.

Every reader is a `converter.model.stream.CheckpointReader`: its architecture, the config, the
canonical parameter tree in file order, and `read(spec)`, which yields one `StreamValue`. Every
target plans units (one output file each), may compute what its units need once the output
folder is ready (`prepare_run`: a calibration), writes one unit, names the files it writes after
them, and writes those last.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from converter.errors import CheckpointNotFoundError, LayoutError
from converter.model.stream import CheckpointReader

__all__ = ["CheckpointReader", "Layout", "Target", "TargetOptions", "Unit", "require_folder"]


@dataclasses.dataclass(frozen=True)
class Unit:
    """One output file and what goes into it."""

    path: str
    nbytes: int
    items: tuple[Any, ...]


class Target(Protocol):
    """An output layout (a dataclass with a `threads` field): plans units, writes one, and
    writes the final files. Few units are written one after another with `threads` computing
    tensors ahead; many units are spread over worker processes."""

    threads: int

    def settings(self) -> dict[str, Any]: ...

    def plan(self, reader: CheckpointReader) -> list[Unit]: ...

    def write(self, reader: CheckpointReader, unit: Unit, dst: Path) -> dict[str, Any]: ...

    def final_files(self, units: list[Unit]) -> list[str]: ...

    def prepare_run(self, reader: CheckpointReader, dst: Path, quiet: bool) -> None: ...

    def finalize(self, reader: CheckpointReader, units: list[Unit], dst: Path,
                 records: dict[str, Any]) -> None: ...


@dataclasses.dataclass(frozen=True)
class TargetOptions:
    """What a user chose for an output: tensor names, the dtype of Linears (or a maker of
    Linears from `quant`), shard size and tokenizer (None: Grok-1's when the vocabulary is
    Grok-1's; `none`; or a SentencePiece model). Each layout takes what applies to it."""

    names: str | None = None  # None: the layout's own default (hpcai for hf and torch)
    dtype: str | None = None
    linears: Any = None
    shard_size: int = 5 * 10**9
    tokenizer: str | None = None


@dataclasses.dataclass(frozen=True)
class Layout:
    """One registered layout: how to recognise it, read it, describe it and write it."""

    name: str
    summary: str
    detect: Callable[[Path], bool]
    open: Callable[[Path], CheckpointReader]
    describe: Callable[[Path], dict[str, Any]]
    target: Callable[[CheckpointReader, TargetOptions], Target]
    takes_names: bool = False  # --names: the architecture's Hugging Face name schemes
    # the --dtype values it takes, the default first, each with a few words for --help
    dtypes: dict[str, str] = dataclasses.field(default_factory=dict)


def require_folder(path: Path) -> Path:
    """`path` as a Path, if it is an existing folder; a one-line error otherwise."""
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise LayoutError(f"{path}: not a checkpoint folder")
    return path
