"""The Hub from the client side: pinned, verified downloads and uploads with a model card.

Uses huggingface_hub 2.x: `snapshot_download` (files already present are skipped), then every
LFS file's sha256 is checked against the Hub's metadata (`list_repo_tree`), hashed in parallel;
a mismatch removes the file and names it. The revision is resolved once to a commit and recorded
in `grok1-download.json`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib
import json
import os
import re
import shlex
import sys
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from converter import __version__
from converter.engine.hashes import git_sha1
from converter.engine.output import (
    DOWNLOAD_RECORD,
    MANIFEST_NAME,
    MODEL_CARD,
    QUANT_PLOT,
    VERIFY_PLOT,
    VERIFY_REPORT_MD,
    file_sha256,
    origin_of,
)
from converter.errors import (
    Grok1Error,
    HubError,
    MalformedFileError,
    UsageError,
)
from converter.files.atomic import INCOMPLETE_SUFFIX, atomic_open, check_free_space
from converter.files.safe_read import read_record
from converter.formats import formats_from_quantization
from converter.model import GROK1
from converter.report.inspect import inspect_checkpoint
from converter.report.serving import how_to_serve, kind_of, library_name

__all__ = ["DOWNLOAD_RECORD", "check_repo_id", "download", "invocation", "model_card",
           "upload", "upload_files"]

DEFAULT_PATTERNS = ("ckpt-0/*", "config.json")
LEGACY_PATTERNS = ("ckpt/*", "config.json")


def _hub_error(exc: Exception, repo: str, revision: str | None) -> HubError:
    """One line for what went wrong talking to the Hub (with what to set, when the Hub speaks
    LFS only and huggingface_hub asked it for Xet storage)."""
    error = _plain_hub_error(exc, repo, revision)
    if "xet" in str(exc).lower() and "HF_HUB_DISABLE_XET" not in str(error):
        return HubError(f"{error}; this Hub does not speak Xet (a `grok1 serve` mirror speaks "
                        "LFS only): set HF_HUB_DISABLE_XET=1")
    return error


def _plain_hub_error(exc: Exception, repo: str, revision: str | None) -> HubError:
    from huggingface_hub import errors

    if isinstance(exc, errors.RevisionNotFoundError):
        return HubError(f"{repo}: revision {revision!r} not found (404)")
    if isinstance(exc, errors.GatedRepoError):
        return HubError(f"{repo}: gated repo; accept its terms on the Hub and pass a token "
                        "(HF_TOKEN or `hf auth login`)")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return HubError(f"{repo}: repository not found (404), or private and no valid token "
                        "was given (HF_TOKEN)")
    if isinstance(exc, errors.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            return HubError(f"{repo}: access denied ({status}); set HF_TOKEN to a token that "
                            "can read it")
        return HubError(f"{repo}: Hub error {status}: {str(exc).splitlines()[0]}")
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return HubError(f"{repo}: HF_HUB_OFFLINE is set, so the Hub cannot be reached")
    return HubError(f"{repo}: network error talking to the Hub "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")


def check_repo_id(repo: str, option: str = "--repo") -> str:
    """A repo id the Hub accepts (`namespace/name`), or a one-line error naming `option`."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as exc:
        raise UsageError(f"{option} {repo!r}: {_one_line(str(exc))}") from None
    if "/" not in repo:
        raise UsageError(f"{option} {repo!r}: expected NAMESPACE/NAME")
    return repo


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _network_errors() -> tuple[type[Exception], ...]:
    from huggingface_hub import errors

    transport: list[type[Exception]] = [errors.HfHubHTTPError, errors.OfflineModeIsEnabled,
                                        ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx"):  # huggingface_hub 2.4 ships on httpx2
        try:
            transport.append(importlib.import_module(module).HTTPError)  # redirect loops too
        except ImportError:
            continue
    return tuple(transport)


@contextlib.contextmanager
def _talking_to_hub(repo: str, revision: str | None) -> Iterator[None]:
    """Every failure of a Hub exchange as one HubError: the network, the HTTP status, and an
    answer that is not what the API promises (bad JSON, missing fields, deep nesting)."""
    try:
        yield
    except Grok1Error:
        raise
    except _network_errors() as exc:
        raise _hub_error(exc, repo, revision) from None
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise HubError(f"{repo}: the Hub's answer is malformed ({type(exc).__name__}: "
                       f"{_one_line(str(exc))[:160]})") from None


def _remote_files(api: Any, repo: str, sha: str, patterns: tuple[str, ...]) -> list[Any]:
    from huggingface_hub.hf_api import RepoFile

    return [f for f in api.list_repo_tree(repo, revision=sha, recursive=True)
            if isinstance(f, RepoFile) and any(fnmatch(f.path, p) for p in patterns)]


def download(repo: str, local_dir: Path, *, revision: str | None = None,
             include: tuple[str, ...] = (), workers: int = 8, dry_run: bool = False,
             verify: bool = True, quiet: bool = False, endpoint: str | None = None
             ) -> dict[str, Any]:
    """Download (or plan) a pinned, verified snapshot; returns a summary."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.utils import disable_progress_bars

    check_repo_id(repo)
    if quiet or not sys.stderr.isatty():
        disable_progress_bars()
    api = HfApi(endpoint=endpoint)
    local_dir = Path(local_dir)
    if local_dir.exists() and not local_dir.is_dir():
        raise UsageError(f"{local_dir}: exists and is not a folder")
    with _talking_to_hub(repo, revision):
        sha = api.repo_info(repo, revision=revision).sha
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{40}", sha):
            raise HubError(f"{repo}: the Hub answered revision {revision or 'main'!r} with "
                           f"commit {str(sha)[:60]!r}, not a 40-hex id")
        patterns = tuple(include) or DEFAULT_PATTERNS
        files = _remote_files(api, repo, sha, patterns)
        if not any(f.path.startswith("ckpt-0/") for f in files) and not include:
            patterns = LEGACY_PATTERNS
            files = _remote_files(api, repo, sha, patterns)
        for f in files:
            if not (isinstance(f.path, str) and isinstance(f.size, int) and f.size >= 0):
                raise HubError(f"{repo}@{sha[:12]}: the Hub lists an entry without a path and "
                               "size")
    if not files:
        raise HubError(f"{repo}@{sha[:12]}: no files match {list(patterns)}")
    for f in files:
        if Path(f.path).is_absolute() or ".." in Path(f.path).parts:
            raise HubError(f"{repo}@{sha[:12]}: the Hub lists an unsafe path {f.path!r}")
    present = [f for f in files if (local_dir / f.path).is_file()
               and (local_dir / f.path).stat().st_size == f.size]
    summary: dict[str, Any] = {
        "repo": repo, "revision": revision or "main", "commit": sha,
        "files": len(files), "bytes": sum(f.size for f in files),
        "present": len(present), "present_bytes": sum(f.size for f in present)}
    if dry_run:
        summary["plan"] = [{"path": f.path, "bytes": f.size,
                            "present": f in present} for f in files]
        return summary
    check_free_space(local_dir, summary["bytes"] - summary["present_bytes"])
    before = {f.path: _stamp(local_dir / f.path) for f in files}
    with _talking_to_hub(repo, revision):
        snapshot_download(repo, revision=sha, local_dir=local_dir,
                          allow_patterns=list(patterns), max_workers=workers, endpoint=endpoint)
    if verify:
        _verify_hashes(local_dir, files, workers)
    record = {**summary, "patterns": list(patterns), "tool": f"grok1-toolchain {__version__}",
              "sha256": {f.path: f.lfs.sha256 for f in files if f.lfs is not None},
              "git_sha1": {f.path: f.blob_id for f in files if f.lfs is None}}
    with atomic_open(local_dir / DOWNLOAD_RECORD) as f:
        f.write(json.dumps(record, indent=2).encode())
    summary["downloaded"] = sum(before[f.path] != _stamp(local_dir / f.path) for f in files)
    return summary


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is (re)written: inode, size, modification time."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _verify_hashes(local_dir: Path, files: list[Any], workers: int) -> None:
    """Check every file in parallel: LFS files by sha256, the others (config.json decides how
    the whole model is read) by their git blob id; remove and name any that does not match."""
    def matches(f: Any) -> bool:
        path = local_dir / f.path
        if f.lfs is not None:
            return file_sha256(path) == f.lfs.sha256
        return git_sha1(path) == f.blob_id

    with concurrent.futures.ThreadPoolExecutor(max(workers, 1)) as pool:
        results = list(pool.map(matches, files))
    bad = [f for f, good in zip(files, results, strict=True) if not good]
    for f in bad:
        (local_dir / f.path).unlink()
    if bad:
        names = ", ".join(f.path for f in bad[:5]) + (f" and {len(bad) - 5} more"
                                                      if len(bad) > 5 else "")
        raise MalformedFileError(f"{local_dir}: sha256 mismatch in {len(bad)} file(s): {names}; "
                                 "removed them, rerun to download again")


def _gguf_scheme(folder: Path) -> tuple[str, list[str], bool] | None:
    """The card's format line for a GGUF folder, with how to run it in llama.cpp."""
    files = sorted(p.name for p in folder.glob("*.gguf"))
    if not files:
        return None
    report = read_record(folder / "gguf_report.json")
    dtype = str(report.get("dtype", "unknown"))
    return (f"GGUF for llama.cpp (arch grok), {dtype}, {len(files)} file(s) (llama.cpp finds "
            "the other split files from the first; a base model, no chat template)",
            ["grok-1", "gguf", dtype], dtype in ("q8_0", "q4_0"))


def _scheme(config: dict[str, Any], source: Path) -> tuple[str, list[str], bool]:
    """(format description, tags, quantized) from a config.json's quantization_config."""
    gguf = _gguf_scheme(source.parent)
    if gguf is not None:
        return gguf
    quant = config.get("quantization_config")
    if not quant:
        return f"dense {config.get('torch_dtype', 'unknown')} weights", ["grok-1"], False
    names = GROK1.name_schemes.get(str(config.get("grok1_names")), GROK1.scheme())
    experts = formats_from_quantization(quant, names, "BF16", str(source))["moe_gate"]
    description, tags = experts.card()
    return description, ["grok-1", *tags], True


def invocation(argv: list[str]) -> str:
    """The command line as `grok1 ...`, with no local path: the executable becomes `grok1` and
    any argument naming a file or folder here keeps only its last name."""
    def public(arg: str) -> str:
        option, equals, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        local = value and (Path(value).is_absolute() or Path(value).exists())
        return option + equals + (Path(value).name if local else value)
    return shlex.join(["grok1", *(public(a) for a in argv[1:])])


def model_card(folder: Path, repo: str, *, command: list[str] | None = None) -> str:
    """README.md for an output folder: YAML front matter, provenance, scheme, verification."""
    folder = Path(folder)
    config = read_record(folder / "config.json")
    scheme, tags, quantized = _scheme(config, folder / "config.json")
    source, made_by = _provenance(folder)
    front = ["---", "base_model: xai-org/grok-1"]
    if quantized:
        front.append("base_model_relation: quantized")
    library = library_name(kind_of(folder))
    front += ["license: apache-2.0", f"library_name: {library}", "tags:",
              *[f"  - {tag}" for tag in tags], "---", ""]
    lines = [
        f"# {repo}", "",
        "Grok-1 (xai-org/grok-1, 314B mixture-of-experts) converted by grok1-toolchain.", "",
        f"- Source: {source}",
        f"- Format: {scheme}",
        f"- Tokenizer: {_tokenizer_line(folder)}",
        f"- Tool: grok1-toolchain {__version__}",
        f"- Command: `{made_by or invocation(command or sys.argv)}`", "",
    ]
    lines += how_to_serve(folder, repo)
    report = folder / VERIFY_REPORT_MD
    if report.is_file():
        lines += [report.read_text().strip(), ""]
    else:
        lines += ["No verification report was found in the uploaded folder.", ""]
    for name, alt in ((VERIFY_PLOT, "Per-layer relative error against the reference"),
                      (QUANT_PLOT, "Quantization error of each expert Linear")):
        if (folder / name).is_file():
            lines += [f"![{alt}]({name})", ""]
    return "\n".join(front + lines)


def _tokenizer_line(folder: Path) -> str:
    """What the card says of the folder's tokenizer files."""
    from converter.tokenizer import GROK1_MODEL, TOKENIZER_FILES

    if any(folder.glob("*.gguf")):
        return "inside the GGUF (llama.cpp's SentencePiece vocabulary; no BOS is added)"
    if not all((folder / name).is_file() for name in TOKENIZER_FILES):
        return "none included (load one separately)"
    same = file_sha256(folder / "tokenizer.model") == file_sha256(GROK1_MODEL)
    which = "Grok-1's SentencePiece tokenizer" if same else "a SentencePiece tokenizer"
    return (f"{which} (`tokenizer.model`) with Hugging Face files (`tokenizer.json`) that give "
            "its exact ids; no BOS is added, as the original runners encode")


def _provenance(folder: Path) -> tuple[str, str | None]:
    """The card's source line, and the command that made the folder (None when unknown)."""
    origin = origin_of(folder)
    manifest = read_record(folder / MANIFEST_NAME)
    command = str(manifest["command"])[:300] if manifest.get("command") else None
    if origin.get("repo"):
        source = f"`{origin['repo']}` at commit `{origin.get('commit') or 'unknown'}`"
    else:
        source = f"a local checkpoint (`{origin.get('local')}`)"
    earlier = [step for step in origin["steps"] if step != command]
    if earlier:
        source += ", through " + " then ".join(f"`{step}`" for step in earlier)
    return source, command


_NOT_UPLOADED = (".cache", MANIFEST_NAME, MODEL_CARD)


def upload_files(folder: Path) -> list[Path]:
    """The files `upload` publishes: everything in the folder but caches, temporaries, the
    manifest and an old card. A symbolic link is refused: it could publish a file from
    outside the folder."""
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if relative.parts[0] in _NOT_UPLOADED or path.name.endswith(INCOMPLETE_SUFFIX):
            continue
        if path.is_symlink():
            raise UsageError(f"{path}: is a symbolic link; upload publishes only the folder's "
                             "own files (copy the file in instead)")
        if path.is_file():
            files.append(relative)
        elif not path.is_dir():
            raise UsageError(f"{path}: not a regular file")
    return files


def check_publishable(folder: Path) -> None:
    """A folder `upload` publishes without being told otherwise: a finished output of this
    toolchain (a complete manifest) in which `grok1 inspect` finds no problem."""
    if not read_record(folder / MANIFEST_NAME).get("complete"):
        raise UsageError(f"{folder}: not a finished output of grok1-toolchain (no complete "
                         f"{MANIFEST_NAME}); pass --any-folder to publish it anyway")
    problems = inspect_checkpoint(folder)["problems"]
    if problems:
        raise UsageError(f"{folder}: `grok1 inspect` finds {len(problems)} problem(s), first: "
                         f"{problems[0]}; pass --any-folder to publish it anyway")


def upload(folder: Path, repo: str, *, revision: str | None = None, private: bool = False,
           create_pr: bool = False, endpoint: str | None = None,
           command: list[str] | None = None, any_folder: bool = False) -> dict[str, Any]:
    """Create the repo if needed and commit the folder with a generated model card (rerun to
    resume: files already on the Hub are not sent again). The card is written into the folder
    only once the upload succeeded. Unless `any_folder`, only a checked output of this
    toolchain is published (`check_publishable`)."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.utils import disable_progress_bars

    check_repo_id(repo)
    if not sys.stderr.isatty():
        disable_progress_bars()
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder}: not a folder")
    if not any_folder:
        check_publishable(folder)
    card = model_card(folder, repo, command=command).encode()
    operations = [CommitOperationAdd(path.as_posix(), folder / path)
                  for path in upload_files(folder)]
    operations.append(CommitOperationAdd(MODEL_CARD, card))
    api = HfApi(endpoint=endpoint)
    with _talking_to_hub(repo, revision):
        api.create_repo(repo, private=private, exist_ok=True)
        info = api.create_commit(repo, operations, commit_message="Upload with grok1-toolchain",
                                 revision=revision, create_pr=create_pr)
    with atomic_open(folder / MODEL_CARD) as f:
        f.write(card)
    warning = (None if (folder / VERIFY_REPORT_MD).is_file() else
               f"warning: {folder} has no verification report; the card says so (run "
               "`grok1 verify REFERENCE FOLDER --markdown FOLDER/verification_report.md`)")
    return {"repo": repo, "commit": info.oid, "url": str(info.commit_url),
            "pr_url": info.pr_url, "files": len(operations), "warning": warning,
            "endpoint": endpoint or os.environ.get("HF_ENDPOINT", "https://huggingface.co")}
