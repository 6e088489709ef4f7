"""Hash records: whether a folder's files still hash to what was recorded when they were
made, by `grok1 download` (its `grok1-download.json`) or by a conversion (its manifest)."""

from __future__ import annotations

import concurrent.futures
import hashlib
from pathlib import Path

from converter.engine.output import DOWNLOAD_RECORD, MANIFEST_NAME, file_sha256
from converter.errors import CheckpointNotFoundError, MalformedFileError
from converter.files.safe_read import read_json, read_record

__all__ = ["git_sha1", "recorded_hash_problems"]


def git_sha1(path: Path) -> str:
    """The git blob id of a file (what the Hub lists for a file not in LFS)."""
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _manifest_hashes(folder: Path) -> list[tuple[str, str, str]] | None:
    """(file, "sha256", digest) of every weight file a conversion's manifest recorded; None
    when the folder has no manifest of this toolchain."""
    manifest = read_record(Path(folder) / MANIFEST_NAME)
    units = manifest.get("units")
    if not isinstance(units, dict):
        return None
    return [(str(name), "sha256", str(unit.get("sha256"))) for name, unit in units.items()
            if isinstance(unit, dict) and unit.get("sha256")]


def recorded_hash_problems(folder: Path, workers: int = 4) -> list[str]:
    """Files whose bytes no longer hash to what was recorded when they were made: by
    `grok1-download.json` (sha256 for LFS files, the git blob id for the others), or by a
    conversion's manifest (every weight file's sha256); one line each."""
    record_path = Path(folder) / DOWNLOAD_RECORD
    from_manifest = _manifest_hashes(folder)
    if from_manifest is not None and not record_path.is_file():
        return _hash_problems(folder, from_manifest, workers)
    try:
        record = read_json(record_path, "download record")
        expected = [(p, "sha256", h) for p, h in record.get("sha256", {}).items()]
        expected += [(p, "git_sha1", h) for p, h in record.get("git_sha1", {}).items()]
    except CheckpointNotFoundError:
        return [f"{record_path}: missing (only a folder made by `grok1 download`, `convert` "
                "or `quantize` has hashes to check)"]
    except MalformedFileError as exc:
        return [str(exc)]
    except AttributeError:
        return [f"{record_path}: not a download record"]
    return _hash_problems(folder, expected, workers)


def _hash_problems(folder: Path, expected: list[tuple[str, str, str]],
                   workers: int) -> list[str]:
    def problem(item: tuple[str, str, str]) -> str | None:
        relative, kind, digest = item
        path = Path(folder) / relative
        if Path(relative).is_absolute() or ".." in Path(relative).parts or not path.is_file():
            return f"{path}: missing"
        found = file_sha256(path) if kind == "sha256" else git_sha1(path)
        return None if found == digest else f"{path}: {kind} {found} differs from the " \
                                                 f"recorded {digest}"

    with concurrent.futures.ThreadPoolExecutor(max(workers, 1)) as pool:
        return [p for p in pool.map(problem, sorted(expected)) if p]
