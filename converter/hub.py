"""The Hub from the client side: pinned, verified downloads and uploads with a model card.

Uses huggingface_hub 2.x: `snapshot_download` (files already present are skipped), then every
LFS file's sha256 is checked against the Hub's metadata (`list_repo_tree`), hashed in parallel;
a mismatch removes the file and names it. The revision is resolved once to a commit and recorded
in `grok1-download.json`.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import importlib
import json
import os
import shlex
import sys
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from converter import __version__
from converter.atomic import atomic_open
from converter.errors import HubError, MalformedFileError

__all__ = ["DOWNLOAD_RECORD", "download", "model_card", "upload"]

DOWNLOAD_RECORD = "grok1-download.json"
DEFAULT_PATTERNS = ("ckpt-0/*", "config.json")
LEGACY_PATTERNS = ("ckpt/*", "config.json")


def _hub_error(exc: Exception, repo: str, revision: str | None) -> HubError:
    """One line for what went wrong talking to the Hub."""
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


def _network_errors() -> tuple[type[Exception], ...]:
    from huggingface_hub import errors

    transport: list[type[Exception]] = [errors.HfHubHTTPError, errors.OfflineModeIsEnabled,
                                        ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx"):  # huggingface_hub 2.4 ships on httpx2
        try:
            transport.append(importlib.import_module(module).TransportError)
        except ImportError:
            continue
    return tuple(transport)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


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

    if quiet or not sys.stderr.isatty():
        disable_progress_bars()
    api = HfApi(endpoint=endpoint)
    local_dir = Path(local_dir)
    try:
        sha = api.repo_info(repo, revision=revision).sha
        patterns = tuple(include) or DEFAULT_PATTERNS
        files = _remote_files(api, repo, sha, patterns)
        if not any(f.path.startswith("ckpt-0/") for f in files) and not include:
            patterns = LEGACY_PATTERNS
            files = _remote_files(api, repo, sha, patterns)
    except _network_errors() as exc:
        raise _hub_error(exc, repo, revision) from None
    if not files:
        raise HubError(f"{repo}@{sha[:12]}: no files match {list(patterns)}")
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
    try:
        snapshot_download(repo, revision=sha, local_dir=local_dir,
                          allow_patterns=list(patterns), max_workers=workers, endpoint=endpoint)
    except _network_errors() as exc:
        raise _hub_error(exc, repo, revision) from None
    if verify:
        _verify_sha256(local_dir, files, workers)
    record = {**summary, "patterns": list(patterns), "tool": f"grok1-toolchain {__version__}",
              "sha256": {f.path: f.lfs.sha256 for f in files if f.lfs is not None}}
    with atomic_open(local_dir / DOWNLOAD_RECORD) as f:
        f.write(json.dumps(record, indent=2).encode())
    summary["downloaded"] = len(files) - len(present)
    return summary


def _verify_sha256(local_dir: Path, files: list[Any], workers: int) -> None:
    """Hash every LFS file in parallel; remove and name any that does not match."""
    checked = [f for f in files if f.lfs is not None]
    with concurrent.futures.ThreadPoolExecutor(max(workers, 1)) as pool:
        digests = list(pool.map(lambda f: _sha256(local_dir / f.path), checked))
    bad = [f for f, digest in zip(checked, digests, strict=True) if digest != f.lfs.sha256]
    for f in bad:
        (local_dir / f.path).unlink()
    if bad:
        names = ", ".join(f.path for f in bad[:5]) + (f" and {len(bad) - 5} more"
                                                      if len(bad) > 5 else "")
        raise MalformedFileError(f"{local_dir}: sha256 mismatch in {len(bad)} file(s): {names}; "
                                 "removed them, rerun to download again")


def model_card(folder: Path, repo: str, *, command: list[str] | None = None) -> str:
    """README.md for an output folder: YAML front matter, provenance, scheme, verification."""
    folder = Path(folder)
    config = _json(folder / "config.json")
    quant = config.get("quantization_config")
    source = _provenance(folder)
    if quant:
        group = next(iter(quant["config_groups"].values()))["weights"]
        scheme = (f"compressed-tensors {quant['format']}, int{group['num_bits']} "
                  f"{group['strategy']}" + (f" (group size {group['group_size']})"
                                            if group.get("group_size") else "")
                  + (", symmetric" if group["symmetric"] else ", asymmetric"))
        tags = ["grok-1", "compressed-tensors", f"int{group['num_bits']}"]
    else:
        scheme = f"dense {config.get('torch_dtype', 'unknown')} weights"
        tags = ["grok-1"]
    front = ["---", "base_model: xai-org/grok-1"]
    if quant:
        front.append("base_model_relation: quantized")
    front += ["license: apache-2.0", "library_name: vllm", "tags:",
              *[f"  - {tag}" for tag in tags], "---", ""]
    invoked = shlex.join(command or sys.argv)
    lines = [
        f"# {repo}", "",
        "Grok-1 (xai-org/grok-1, 314B mixture-of-experts) converted by grok1-toolchain.", "",
        f"- Source: `{source.get('repo', 'unknown')}` at commit "
        f"`{source.get('commit', 'unknown')}`",
        f"- Format: {scheme}",
        f"- Tool: grok1-toolchain {__version__}",
        f"- Command: `{invoked}`", "",
    ]
    report = folder / "verification_report.md"
    if report.is_file():
        lines += [report.read_text().strip(), ""]
    else:
        lines += ["No verification report was found in the uploaded folder.", ""]
    return "\n".join(front + lines)


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _provenance(folder: Path) -> dict[str, str]:
    """Where a folder's weights came from: the pipeline or download record, if any."""
    for name in ("grok1-provenance.json", DOWNLOAD_RECORD):
        data = _json(folder / name)
        if data:
            return {"repo": data.get("repo", ""), "commit": data.get("commit", "")}
    return {}


def upload(folder: Path, repo: str, *, revision: str | None = None, private: bool = False,
           create_pr: bool = False, endpoint: str | None = None,
           command: list[str] | None = None) -> dict[str, Any]:
    """Create the repo if needed, write README.md, upload the folder (rerun to resume)."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import disable_progress_bars

    if not sys.stderr.isatty():
        disable_progress_bars()
    folder = Path(folder)
    if not folder.is_dir():
        raise MalformedFileError(f"{folder}: not a folder")
    with atomic_open(folder / "README.md") as f:
        f.write(model_card(folder, repo, command=command).encode())
    api = HfApi(endpoint=endpoint)
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo, folder_path=folder, revision=revision,
                                 create_pr=create_pr, commit_message="Upload with grok1-toolchain",
                                 ignore_patterns=[".cache/**", "*.incomplete",
                                                  "grok1-manifest.json"])
    except _network_errors() as exc:
        raise _hub_error(exc, repo, revision) from None
    return {"repo": repo, "commit": info.oid, "url": str(info.commit_url),
            "pr_url": info.pr_url, "files": sum(1 for p in folder.rglob("*") if p.is_file()
                                                and ".cache" not in p.parts),
            "endpoint": endpoint or os.environ.get("HF_ENDPOINT", "https://huggingface.co")}
