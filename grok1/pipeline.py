"""`grok1 pipeline`: download (or check a local copy) once -> for each target: convert or
quantize -> verify -> upload; resumable by step.

The run manifest `pipeline.json` in the work folder records each finished step; a rerun with
the same source settings continues at the first unfinished step of each target, and may add
targets (they reuse the download). A failed verification exits 1 and uploads nothing of that
target.
"""

from __future__ import annotations

import dataclasses
import json
import re
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from converter import __version__
from converter.convert import convert
from converter.engine.output import DOWNLOAD_RECORD, MANIFEST_NAME, PROVENANCE_NAME
from converter.errors import MalformedFileError, UsageError, VerificationFailed
from converter.files.atomic import atomic_open
from converter.files.safe_read import read_json
from converter.layouts.base import TargetOptions
from converter.layouts.gguf import DTYPES as GGUF_DTYPES
from converter.report.serving import OutputKind
from quant.registry import SCHEMES as QUANT_SCHEMES
from quant.registry import quantize_checkpoint
from verify.profiles import DTYPE_PROFILES

__all__ = ["TARGETS", "PipelineOptions", "Target", "parse_targets", "run_pipeline"]

STATE_NAME = "pipeline.json"
DEFAULT_NAMES = "hpcai"


@dataclasses.dataclass(frozen=True)
class Target:
    """One output a pipeline can make: its layout, and the convert dtype or quantize scheme."""

    name: str
    layout: str  # hf, gguf, or quantize
    weights: str  # convert --dtype, or quantize --scheme
    summary: str

    @property
    def verb(self) -> str:
        """What makes it: convert or quantize."""
        return "quantize" if self.layout == "quantize" else "convert"

    def kind(self, names: str) -> OutputKind:
        """Its serving kind (engines and warnings come from the serving table)."""
        if self.layout == "gguf":
            return OutputKind("gguf", None, GGUF_DTYPES[self.weights])
        return OutputKind("hf", names, "release-int8" if self.weights == "int8" and
                          self.layout == "hf" else self.weights)


_HF_TARGETS = (
    Target("hf-bf16", "hf", "bf16", "safetensors in bf16 (lossy: bf16 rounds the dequantized "
           "weights)"),
    Target("hf-f32", "hf", "f32", "safetensors in float32 (lossless)"),
    Target("hf-release-int8", "hf", "int8", "the release's own int8 codes and scales as "
           "compressed-tensors (lossless)"),
)
TARGETS: dict[str, Target] = {t.name: t for t in (
    *_HF_TARGETS,
    *(Target(name, "quantize", name, f"re-quantized (lossy): {entry.summary}")
      for name, entry in QUANT_SCHEMES.items()),
    *(Target(f"gguf-{ggml}", "gguf", dtype, f"GGUF for llama.cpp, {ggml} ("
             + ("lossless" if DTYPE_PROFILES[dtype] == "lossless" else "lossy") + ")")
      for dtype, ggml in GGUF_DTYPES.items()),
)}


def parse_targets(text: str) -> list[Target]:
    """The targets of `--to A,B,...` (case-insensitive, in order, each once)."""
    by_folded = {name.lower(): target for name, target in TARGETS.items()}
    chosen: list[Target] = []
    for word in (w.strip() for w in text.split(",")):
        target = by_folded.get(word.lower())
        if target is None:
            raise UsageError(f"--to: unknown target {word!r}; known: {', '.join(TARGETS)}")
        if target not in chosen:
            chosen.append(target)
    return chosen


def targets_help() -> str:
    """One line per target, for `pipeline --help`."""
    return "\n".join(textwrap.fill(t.summary, 94, initial_indent=f"  {t.name:<16} ",
                                   subsequent_indent=" " * 19) for t in TARGETS.values())


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
            and isinstance(state.get("targets", {}), dict)
            and all(isinstance(s, dict) for s in state["steps"].values())
            and all(isinstance(t, dict) and all(isinstance(s, dict) for s in t.values())
                    for t in state.get("targets", {}).values())):
        raise MalformedFileError(f"{path}: not a pipeline run manifest; use another --work-dir")
    download = state["steps"].get("download", {})
    if download.get("done") and not re.fullmatch(r"[0-9a-f]{40}", str(download.get("commit"))):
        raise MalformedFileError(f"{path}: the finished download step records no commit (a "
                                 "40-hex id); use another --work-dir")
    state.setdefault("targets", {})
    return state


def upload_repo_of(template: str | None, target: Target, count: int) -> str | None:
    """The repo a target publishes to: `--upload` with `{to}` replaced by the target's name."""
    if template is None:
        return None
    if count > 1 and "{to}" not in template:
        raise UsageError(f"--upload {template}: several targets need one repo each; put {{to}} "
                         "where the target's name goes (e.g. me/grok-1-{to})")
    return template.replace("{to}", target.name)


def check_local_source(source: Path, workers: int) -> dict[str, Any]:
    """A local copy of the release, checked file by file against the hashes its download
    recorded; returns that record's repo and commit."""
    from converter.engine.hashes import recorded_hash_problems
    from converter.files.safe_read import read_record

    if not source.is_dir():
        raise UsageError(f"{source}: --source is not a folder")
    record = read_record(source / DOWNLOAD_RECORD)
    if not re.fullmatch(r"[0-9a-f]{40}", str(record.get("commit"))):
        raise UsageError(f"{source / DOWNLOAD_RECORD}: no download record with a commit; run "
                         f"`grok1 download --local-dir {source}` first (it keeps the files "
                         "present whose hashes match, fetches the rest and records them)")
    problems = recorded_hash_problems(source, workers)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UsageError(f"--source: {problems[0]}{more}")
    return {"repo": str(record.get("repo")), "revision": str(record.get("revision") or "main"),
            "commit": record["commit"], "files": record.get("files"),
            "bytes": record.get("bytes"), "local": str(source)}


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
    """One pipeline run: the targets (`to`), the source (a Hub repo at a revision, or a local
    copy), the work folder, where to upload (`{to}` in it names each target's repo), the
    Hub endpoint, tensor names and tokenizer, the verification's tokens (`seq_len`, `batch`,
    `seed`) and where the work runs."""

    to: tuple[Target, ...]
    work_dir: Path
    repo: str = "xai-org/grok-1"
    revision: str | None = None
    source_dir: Path | None = None
    upload: str | None = None
    endpoint: str | None = None
    names: str | None = None
    tokenizer: str | None = None
    workers: int | None = None  # None: the usable cores (run_pipeline resolves it)
    seq_len: int = 64
    batch: int = 4
    seed: int = 0
    executor: str = "local"
    ray_address: str | None = None
    quiet: bool = False


def run_pipeline(options: PipelineOptions, *,
                 echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the pipeline for each target; returns the run manifest."""
    from converter.convert import default_workers

    if options.names is not None and all(t.layout == "gguf" for t in options.to):
        raise UsageError("--names is for hf and quantized targets (a GGUF's names are "
                         "llama.cpp's)")
    o = dataclasses.replace(options, workers=options.workers or default_workers(),
                            names=options.names or DEFAULT_NAMES)
    to, upload, repo, revision, source_dir = o.to, o.upload, o.repo, o.revision, o.source_dir
    repos = {t.name: upload_repo_of(upload, t, len(to)) for t in to}
    if upload is not None:
        from converter.hub.client import check_repo_id

        for repo_id in repos.values():  # before hours of download, not after
            check_repo_id(repo_id, "--upload")
    work = Path(o.work_dir)
    if work.exists() and not work.is_dir():
        raise UsageError(f"{work}: --work-dir exists and is not a folder")
    work.mkdir(parents=True, exist_ok=True)
    settings = {"repo": repo, "revision": revision,
                "source": str(source_dir.resolve()) if source_dir else None,
                "tokenizer": o.tokenizer, "seq_len": o.seq_len, "batch": o.batch, "seed": o.seed}
    state = _load_state(work / STATE_NAME) or {
        "settings": settings, "steps": {}, "targets": {},
        "tool": f"grok1-toolchain {__version__}"}
    if state["settings"] != settings:
        differ = ", ".join(f"{key} {state['settings'].get(key)!r} (now {value!r})"
                           for key, value in settings.items()
                           if state["settings"].get(key) != value)
        raise UsageError(f"{work}: holds a pipeline run with other settings: {differ}; use "
                         "another --work-dir")
    steps = state["steps"]
    if not steps.get("download", {}).get("done"):
        steps["download"] = _fetch(o, work, echo)
        _save(work, state)
    origin = steps["download"]
    source = Path(origin.get("local") or work / "source")
    failed = [failure for target in to if (failure := _one_target(
        target, state, work, source, origin, repos[target.name], o, echo))]
    if failed:
        raise VerificationFailed("; ".join(failed))
    return state


def _fetch(options: PipelineOptions, work: Path, echo: Callable[[str], None]) -> dict[str, Any]:
    """The download step: fetch the release into the work folder, or check a local copy."""
    repo, revision, source_dir = options.repo, options.revision, options.source_dir
    if source_dir is not None:
        echo(f"[1/4] check {source_dir} against its recorded hashes")
        return {"done": True, **check_local_source(source_dir.resolve(), options.workers)}
    from converter.hub.client import download

    source = work / "source"
    echo(f"[1/4] download {repo}@{revision or 'main'} -> {source}")
    summary = download(repo, source, revision=revision, workers=options.workers,
                       quiet=options.quiet, endpoint=options.endpoint)
    return {"done": True, "repo": repo, "revision": revision or "main",
            "commit": summary["commit"], "files": summary["files"], "bytes": summary["bytes"]}


def _one_target(target: Target, state: dict[str, Any], work: Path, source: Path,
                origin: dict[str, Any], upload_repo: str | None, options: PipelineOptions,
                echo: Callable[[str], None]) -> str | None:
    """Convert or quantize, verify and upload one target, skipping its finished steps;
    returns why its verification failed (then nothing of it is uploaded), or None."""
    steps = state["targets"].setdefault(target.name, {})
    output = work / f"output-{target.name}"
    names = None if target.layout == "gguf" else options.names
    if target.layout == "quantize" and QUANT_SCHEMES[target.weights].names:
        names = QUANT_SCHEMES[target.weights].names  # the only names its engine reads
    made = steps.get("convert", {})
    if made.get("done") and made.get("names") != names:
        raise UsageError(f"{work}: {target.name} was made there with --names {made.get('names')}"
                         f", not {names}; use another --work-dir")

    def finished(step: str, **details: Any) -> None:
        steps[step] = {"done": True, **details}
        _save(work, state)

    if not made.get("done"):
        echo(f"[2/4] {target.verb} {target.name} -> {output}")
        summary = _convert(target, names, source, output, options)
        with atomic_open(output / PROVENANCE_NAME) as f:
            f.write(json.dumps({"repo": origin.get("repo"), "revision": origin.get("revision"),
                                "commit": origin["commit"], "to": target.name,
                                "tool": f"grok1-toolchain {__version__}"},
                               indent=2).encode())
        finished("convert", names=names, seconds=summary["seconds"], bytes=summary["bytes"])

    if not steps.get("verify", {}).get("done"):
        echo(f"[3/4] verify {output} against {source}")
        result = _verify(source, output, options, echo)
        steps["verify"] = {"done": result.passed, "passed": result.passed,
                           "metrics": result.metrics, "reasons": result.reasons}
        _save(work, state)
        if not result.passed:
            return (f"{output}: verification failed: " + "; ".join(result.reasons)
                    + " (nothing uploaded)")

    uploaded = steps.get("upload", {})
    if upload_repo and not (uploaded.get("done") and uploaded.get("repo") == upload_repo):
        from converter.hub.client import upload

        echo(f"[4/4] upload {output} -> {upload_repo}")
        info = upload(output, upload_repo, endpoint=options.endpoint)
        finished("upload", repo=upload_repo, commit=info["commit"], url=info["url"])
    return None


def _convert(target: Target, names: str | None, source: Path, output: Path,
             options: PipelineOptions) -> dict[str, Any]:
    """Make one target's output (`names`: None for GGUF, which has its own)."""
    run = {"workers": options.workers, "resume": (output / MANIFEST_NAME).is_file(),
           "quiet": options.quiet, "executor": options.executor,
           "ray_address": options.ray_address}
    tokenizer = options.tokenizer
    if target.layout == "hf":
        return convert(source, output, to="hf", options=TargetOptions(
            names=names, dtype=target.weights, tokenizer=tokenizer), **run)
    if target.layout == "gguf":
        return convert(source, output, to="gguf", options=TargetOptions(
            dtype=target.weights, tokenizer=tokenizer, shard_size=45 * 10**9), **run)
    from grok1.calibration import calibration_for

    return quantize_checkpoint(source, output, target.weights, names=names,
                               tokenizer=tokenizer,
                               calibration=calibration_for(target.weights, source), **run)


def _verify(source: Path, output: Path, options: PipelineOptions,
            echo: Callable[[str], None]) -> Any:
    """Verify one target's output against the source, and write its reports into it."""
    from verify.api import verify_checkpoints, write_output_reports
    from verify.options import VerifyOptions
    from verify.report import format_table
    from verify.tokens import TokenSource

    o = options
    result = verify_checkpoints((source, output), VerifyOptions(
        tokens=TokenSource(batch=o.batch, seq_len=o.seq_len, seed=o.seed), per_layer=True,
        executor=o.executor, ray_address=o.ray_address, workers=o.workers,
        quiet=o.quiet))
    echo(format_table(result) if not o.quiet else "PASS" if result.passed else
         "FAIL: " + "; ".join(result.reasons))
    write_output_reports(result, output, title=(
        f"Verification ({result.profile} profile, {o.batch}x{o.seq_len} tokens)"))
    return result
