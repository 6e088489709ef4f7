"""`grok1 pipeline`: download -> convert or quantize -> verify -> upload, resumable by step.

The run manifest `pipeline.json` in the work folder records each finished step; a rerun with
the same settings continues at the first unfinished one. A failed verification exits 1 and
nothing is uploaded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from converter import __version__
from converter.atomic import atomic_open
from converter.engine import convert
from converter.errors import MalformedFileError, UsageError, VerificationFailed
from converter.layouts.base import TargetOptions
from converter.layouts.gguf import DTYPES as GGUF_DTYPES
from converter.output import MANIFEST_NAME, PROVENANCE_NAME
from converter.safe_read import read_json
from quant.requantize import quantize_checkpoint
from quant.schemes import SCHEMES as QUANT_SCHEMES

__all__ = ["STEPS", "TARGETS", "run_pipeline"]

STEPS = ("download", "convert", "verify", "upload")
STATE_NAME = "pipeline.json"


def _save(work: Path, state: dict[str, Any]) -> None:
    with atomic_open(work / STATE_NAME) as f:
        f.write(json.dumps(state, indent=2).encode())


def _load_state(path: Path) -> dict[str, Any] | None:
    """The run manifest of an earlier run, checked; None when there is none."""
    if not path.is_file():
        return None
    try:
        state = read_json(path, "pipeline run manifest")
    except MalformedFileError as exc:
        raise MalformedFileError(f"{exc}; use another --work-dir") from None
    if not (isinstance(state, dict) and isinstance(state.get("steps"), dict)
            and isinstance(state.get("settings"), dict)
            and all(isinstance(s, dict) for s in state["steps"].values())):
        raise MalformedFileError(f"{path}: not a pipeline run manifest; use another --work-dir")
    download = state["steps"].get("download", {})
    if download.get("done") and not re.fullmatch(r"[0-9a-f]{40}", str(download.get("commit"))):
        raise MalformedFileError(f"{path}: the finished download step records no commit (a "
                                 "40-hex id); use another --work-dir")
    return state


def run_pipeline(*, to: str, repo: str, revision: str | None, work_dir: Path,
                 upload_repo: str | None, endpoint: str | None, dtype: str = "bf16",
                 names: str = "hpcai", tokenizer: str | None = None, workers: int = 1,
                 seq_len: int = 64, batch: int = 4,
                 seed: int = 0, quiet: bool = False, executor: str = "local",
                 ray_address: str | None = None,
                 echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the pipeline; returns the run manifest."""
    work = Path(work_dir)
    if work.exists() and not work.is_dir():
        raise UsageError(f"{work}: --work-dir exists and is not a folder")
    work.mkdir(parents=True, exist_ok=True)
    settings = {"to": to, "repo": repo, "revision": revision, "upload": upload_repo,
                "dtype": dtype if to == "hf" else None, "names": names, "tokenizer": tokenizer,
                "seq_len": seq_len,
                "batch": batch, "seed": seed}
    state = _load_state(work / STATE_NAME) or {
        "settings": settings, "steps": {}, "tool": f"grok1-toolchain {__version__}"}
    if state["settings"] != settings:
        raise UsageError(f"{work}: holds a pipeline run with other settings "
                         f"({state['settings']}); use another --work-dir")
    source, output = work / "source", work / f"output-{to}"
    steps = state["steps"]

    def finished(step: str, **details: Any) -> None:
        steps[step] = {"done": True, **details}
        _save(work, state)

    if not steps.get("download", {}).get("done"):
        from converter.hub import download

        echo(f"[1/4] download {repo}@{revision or 'main'} -> {source}")
        summary = download(repo, source, revision=revision, workers=workers, quiet=quiet,
                           endpoint=endpoint)
        finished("download", commit=summary["commit"], files=summary["files"],
                 bytes=summary["bytes"])
    commit = steps["download"]["commit"]

    if not steps.get("convert", {}).get("done"):
        echo(f"[2/4] {'quantize' if to in QUANT_SCHEMES else 'convert'} -> {output}")
        summary = _convert(to, dtype, names, tokenizer, source, output, workers, quiet,
                           executor, ray_address)
        with atomic_open(output / PROVENANCE_NAME) as f:
            f.write(json.dumps({"repo": repo, "revision": revision or "main", "commit": commit,
                                "to": to, "dtype": settings["dtype"],
                                "tool": f"grok1-toolchain {__version__}"}, indent=2).encode())
        finished("convert", seconds=summary["seconds"], bytes=summary["bytes"])

    if not steps.get("verify", {}).get("done"):
        echo(f"[3/4] verify {output} against {source}")
        result = _verify(source, output, seq_len, batch, seed, echo, executor, ray_address,
                         workers, quiet)
        steps["verify"] = {"done": result.passed, "passed": result.passed,
                           "metrics": result.metrics, "reasons": result.reasons}
        _save(work, state)
        if not result.passed:
            raise VerificationFailed(f"{output}: verification failed: "
                                     + "; ".join(result.reasons) + " (nothing uploaded)")

    if upload_repo and not steps.get("upload", {}).get("done"):
        from converter.hub import upload

        echo(f"[4/4] upload {output} -> {upload_repo}")
        info = upload(output, upload_repo, endpoint=endpoint)
        finished("upload", repo=upload_repo, commit=info["commit"], url=info["url"])
    return state


GGUF_TARGETS = {f"gguf-{dtype}": dtype for dtype in GGUF_DTYPES}
TARGETS = ("hf", *QUANT_SCHEMES, *GGUF_TARGETS)


def _convert(to: str, dtype: str, names: str, tokenizer: str | None, source: Path,
             output: Path, workers: int, quiet: bool, executor: str, ray_address: str | None
             ) -> dict[str, Any]:
    run = {"workers": workers, "resume": (output / MANIFEST_NAME).is_file(), "quiet": quiet,
           "executor": executor, "ray_address": ray_address}
    if to == "hf":
        return convert(source, output, to="hf", options=TargetOptions(
            names=names, dtype=dtype, tokenizer=tokenizer), **run)
    if to in GGUF_TARGETS:
        return convert(source, output, to="gguf", options=TargetOptions(
            dtype=GGUF_TARGETS[to], tokenizer=tokenizer, shard_size=45 * 10**9), **run)
    return quantize_checkpoint(source, output, to, names=names, tokenizer=tokenizer, **run)


def _verify(source: Path, output: Path, seq_len: int, batch: int, seed: int,
            echo: Callable[[str], None], executor: str, ray_address: str | None,
            workers: int, quiet: bool) -> Any:
    from verify.api import verify_checkpoints, write_output_reports
    from verify.report import format_table

    result = verify_checkpoints((source, output), batch=batch,
                                seq_len=seq_len, seed=seed, per_layer=True,
                                executor=executor, ray_address=ray_address, workers=workers,
                                quiet=quiet)
    echo(format_table(result) if not quiet else "PASS" if result.passed else
         "FAIL: " + "; ".join(result.reasons))
    write_output_reports(result, output, title=(
        f"Verification ({result.profile} profile, {batch}x{seq_len} tokens)"))
    return result
