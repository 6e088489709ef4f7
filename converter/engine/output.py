"""An output folder and the rules for touching it: nothing a run did not write is ever removed.

Every run records what it writes in `grok1-manifest.json`: its units (with each file's and each
tensor's sha256), the final files written after them, and the identity of its source. From that:

- `--overwrite` replaces a previous output of this toolchain and nothing else: it deletes the
  files that output's manifest lists (and our own temporaries of them), and refuses a folder that
  holds anything more, or that is, contains or lies inside the source;
- `--resume` keeps only the units whose files still hash to what the manifest recorded, refuses a
  source that changed since, and sweeps only the temporaries of files it plans to write;
- while a run writes, it holds an exclusive lock on the folder (inherited by its worker
  processes), so a second run cannot race it or the workers of a killed one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from converter.errors import MalformedFileError, UsageError
from converter.files.atomic import INCOMPLETE_SUFFIX, atomic_open, check_free_space
from converter.files.safe_read import read_json, read_record

__all__ = ["DOWNLOAD_RECORD", "MANIFEST_NAME", "MODEL_CARD", "OWN_FILES", "PROVENANCE_NAME",
           "QUANT_PLOT", "VERIFY_PLOT", "VERIFY_REPORT_JSON", "VERIFY_REPORT_MD", "OutputFolder",
           "file_sha256", "fingerprint", "origin_of", "refuse_overlap"]

MANIFEST_NAME = "grok1-manifest.json"
MODEL_CARD = "README.md"
PROVENANCE_NAME = "grok1-provenance.json"
DOWNLOAD_RECORD = "grok1-download.json"
VERIFY_REPORT_MD = "verification_report.md"
VERIFY_REPORT_JSON = "verification_report.json"
VERIFY_PLOT = "verification_layers.png"
QUANT_PLOT = "quantization_errors.png"  # written by quantize beside quantization_report.json
# Files this toolchain's other commands add to an output folder (reports, the model card, the
# pipeline's provenance): ours to replace as well.
OWN_FILES = frozenset({MANIFEST_NAME, MODEL_CARD, PROVENANCE_NAME, VERIFY_REPORT_MD,
                       VERIFY_REPORT_JSON, VERIFY_PLOT})
_TEMPORARY = re.compile(r"^(?P<base>.+)\.[0-9a-f]{8}" + re.escape(INCOMPLETE_SUFFIX) + "$")


def _text(value: Any) -> str:
    return str(value)[:300] if value is not None else ""


def origin_of(source: Path) -> dict[str, Any]:
    """Where a checkpoint came from, as its own records say: the Hub repo and commit of a
    download (or of the download an output was made from), and the toolchain commands that
    made it, oldest first. A folder with no records is a local checkpoint of that name."""
    folder = Path(source)
    for name in (PROVENANCE_NAME, DOWNLOAD_RECORD):
        data = read_record(folder / name)
        if data.get("repo"):
            return {"repo": _text(data["repo"]), "commit": _text(data.get("commit")),
                    "steps": []}
    manifest = read_record(folder / MANIFEST_NAME)
    origin = manifest.get("origin") if isinstance(manifest.get("origin"), dict) else {}
    steps = origin.get("steps") if isinstance(origin.get("steps"), list) else []
    steps = [_text(s) for s in steps[:64]]
    if manifest.get("command"):
        steps.append(_text(manifest["command"]))
    if origin.get("repo"):
        return {"repo": _text(origin["repo"]), "commit": _text(origin.get("commit")),
                "steps": steps}
    return {"local": _text(origin.get("local") or folder.name), "steps": steps}


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(files: Iterable[Path], root: Path) -> dict[str, Any]:
    """The identity of a source: every file's relative path, size and modification time."""
    digest = hashlib.sha256()
    count = size = 0
    for path in sorted(files):
        stat = Path(path).stat()
        relative = os.path.relpath(path, root)
        digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        count, size = count + 1, size + stat.st_size
    return {"files": count, "bytes": size, "sha256": digest.hexdigest()}


def refuse_overlap(source: Path, dst: Path, source_files: Iterable[Path]) -> None:
    """Refuse an output folder that is the source, contains it, or holds any of its files."""
    src, out = Path(source).resolve(), Path(dst).resolve()
    if out == src or out in src.parents:
        raise UsageError(f"{dst}: is {'the source' if out == src else 'a parent of the source'} "
                         f"{source}; choose an output folder outside it")
    for path in source_files:
        if out in Path(path).resolve().parents:
            raise UsageError(f"{dst}: holds the source file {path}; choose an output folder "
                             "outside the source")


def _relative_files(folder: Path) -> Iterator[str]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() or path.is_symlink() or not path.is_dir():
            yield path.relative_to(folder).as_posix()


class OutputFolder:
    """The destination of one run: its manifest, its lock and what it may delete."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None
        self._created = False

    @property
    def manifest_path(self) -> Path:
        """Where the manifest lives."""
        return self.path / MANIFEST_NAME

    def check_usable(self) -> None:
        """A folder (or nothing yet), not a file, not a link."""
        if self.path.is_symlink():
            raise UsageError(f"{self.path}: is a symbolic link; give the folder itself")
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"{self.path}: exists and is not a folder")

    def is_empty(self) -> bool:
        """True when the folder does not exist or holds nothing."""
        return not self.path.exists() or not any(self.path.iterdir())

    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest of a previous run, or None when there is none."""
        if not self.manifest_path.is_file():
            return None
        try:
            manifest = read_json(self.manifest_path, "manifest")
        except MalformedFileError as exc:
            raise MalformedFileError(f"{exc}; pass --overwrite to start again") from None
        if not (isinstance(manifest, dict) and isinstance(manifest.get("units"), dict)
                and isinstance(manifest.get("files", []), list)
                and all(isinstance(v, dict) for v in manifest["units"].values())):
            raise MalformedFileError(f"{self.manifest_path}: not a manifest of this toolchain; "
                                     "pass --overwrite to start again")
        return manifest

    def save_manifest(self, manifest: dict[str, Any]) -> None:
        """Rewrite the manifest atomically."""
        with atomic_open(self.manifest_path) as f:
            f.write(json.dumps(manifest, indent=1, sort_keys=True).encode())

    def owned(self, manifest: dict[str, Any] | None, planned: Iterable[str] = ()) -> set[str]:
        """Relative paths this toolchain wrote or is about to write here."""
        names = {MANIFEST_NAME, *planned}
        if manifest is not None:
            names |= OWN_FILES | set(manifest["units"]) | {str(f) for f in manifest.get("files",
                                                                                         [])}
        return names

    def foreign(self, owned: set[str]) -> list[str]:
        """Files in the folder that are neither owned nor temporaries of owned files."""
        found = []
        for name in _relative_files(self.path):
            match = _TEMPORARY.match(name)
            if name not in owned and not (match and match.group("base") in owned):
                found.append(name)
        return found

    def remove(self, owned: set[str]) -> None:
        """Delete owned files and their temporaries (nothing else), then the subfolders that
        held them once they are empty."""
        emptied: set[Path] = set()
        for name in _relative_files(self.path):
            match = _TEMPORARY.match(name)
            if name in owned or (match and match.group("base") in owned):
                (self.path / name).unlink()
                emptied.update(p for p in (self.path / name).parents if self.path in p.parents)
        for folder in sorted(emptied, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()

    def sweep_temporaries(self, owned: set[str]) -> None:
        """Delete the temporaries of owned files (a killed run's leftovers), nothing else."""
        for name in _relative_files(self.path):
            match = _TEMPORARY.match(name)
            if match and match.group("base") in owned:
                with contextlib.suppress(FileNotFoundError):
                    (self.path / name).unlink()

    def prepare(self, *, resume: bool, overwrite: bool, planned: list[str]
                ) -> dict[str, Any] | None:
        """Make the folder ready; returns the previous run's manifest when resuming."""
        if resume and overwrite:
            raise UsageError("--resume and --overwrite contradict each other")
        self.check_usable()
        if self.is_empty():
            return None
        if overwrite:
            self.remove(self.replaceable(planned))
            return None
        manifest = self.read_manifest()
        owned = self.owned(manifest, planned)
        strangers = self.foreign(owned)
        if manifest is None and not strangers:
            self.sweep_temporaries(owned)  # killed before its first manifest: start afresh
            return None
        if not resume:
            raise UsageError(f"{self.path}: exists and is not empty; pass --resume to continue "
                             "an interrupted run or --overwrite to replace it")
        if manifest is None:
            raise UsageError(f"{self.path}: not empty and holds no {MANIFEST_NAME}, so there is "
                             "nothing to resume; choose another folder")
        if strangers:
            raise UsageError(f"{self.path}: holds {strangers[0]}, which this toolchain did not "
                             "write; remove it or choose another folder")
        self.sweep_temporaries(owned)
        return manifest

    def replaceable(self, planned: list[str] | tuple[str, ...] = ()) -> set[str]:
        """What --overwrite may delete: the files of a previous grok1 output, if the folder
        holds nothing else; otherwise a one-line refusal naming the first stranger."""
        manifest = self.read_manifest()
        owned = self.owned(manifest, planned)
        strangers = self.foreign(owned)
        if manifest is None or strangers:
            what = strangers[0] if strangers else "files"
            raise UsageError(f"{self.path}: holds {what}, which this toolchain did not write "
                             "(--overwrite replaces only a previous grok1 output); remove it "
                             "yourself or choose another folder")
        return owned

    def finished_units(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Units of a previous run whose files are still exactly what was recorded."""
        done = {}
        for path, info in manifest.get("units", {}).items():
            file = self.path / path
            if (file.is_file() and file.stat().st_size == info.get("bytes")
                    and info.get("sha256") == file_sha256(file)):
                done[path] = info
        return done

    def make(self, needed: int) -> None:
        """Check free disk for `needed` bytes; a folder `lock` created is removed again by
        `unlock` when this fails."""
        check_free_space(self.path, needed + max(1 << 20, needed // 200))

    def lock(self) -> None:
        """Hold an exclusive lock on the folder (created if missing) until `unlock`; worker
        processes inherit it. Taken before anything in the folder is read or deleted."""
        self.check_usable()
        if not self.path.exists():
            self.path.mkdir(parents=True)
            self._created = True
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise UsageError(f"{self.path}: another grok1 process is writing here (or its "
                                 "workers are still finishing); wait for it to end") from None
            raise
        self._lock_fd = fd

    def unlock(self) -> None:
        """Release the lock; remove the folder if `lock` created it and nothing was written."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._created:
            with contextlib.suppress(OSError):
                self.path.rmdir()
            self._created = False

    def replace_with(self, staged: Path) -> None:
        """Move a fully written folder `staged` into place (after `prepare` cleared the way)."""
        if self.path.exists():
            self.path.rmdir()  # prepare() left it empty
        os.replace(staged, self.path)


def discard_folder(path: Path) -> None:
    """Remove a staging folder this run created, with everything in it."""
    shutil.rmtree(path, ignore_errors=True)
