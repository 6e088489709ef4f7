"""One entry point for a verification, as `grok1 verify` and the pipeline run it: open the
checkpoints, choose the tokens, set the thresholds, run locally or on Ray, write the reports."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from converter.engine.output import VERIFY_PLOT, VERIFY_REPORT_JSON, VERIFY_REPORT_MD
from converter.errors import UsageError
from converter.files.atomic import atomic_open
from converter.layouts import open_checkpoint
from converter.report.plots import layer_error_plot
from verify.metrics import ReferenceLogits
from verify.options import VerifyOptions
from verify.profiles import infer_profile, lossy_hint, profile
from verify.report import format_markdown
from verify.run import VerifyResult, run_verification
from verify.tokens import TokenSource, choose_tokens

__all__ = ["VerifyOptions", "verify_checkpoints", "write_logits", "write_reports"]


def verify_checkpoints(paths: tuple[Path, ...],
                       options: VerifyOptions | None = None) -> VerifyResult:
    """Check a candidate against a reference (`paths` = (REFERENCE, CANDIDATE)), or against a
    stored reference run (`paths` = (CANDIDATE,) with `options.reference_logits`). Without a
    profile name, the profile is inferred from how the candidate was made."""
    o = options or VerifyOptions()
    reference_logits, per_layer, check_tensors = o.reference_logits, o.per_layer, o.check_tensors
    stored = ReferenceLogits.load(reference_logits) if reference_logits else None
    if len(paths) == 2:
        reference, candidate = open_checkpoint(paths[0]), open_checkpoint(paths[1])
    elif len(paths) == 1 and stored is not None and not per_layer:
        reference, candidate = None, open_checkpoint(paths[0])
    else:
        raise UsageError("give REFERENCE and CANDIDATE, or CANDIDATE with --reference-logits "
                         "(--per-layer needs REFERENCE)")
    tokens: np.ndarray | None = None
    source = f"the stored reference's tokens ({Path(reference_logits or '').name})"
    if stored is None:
        tokens, source = choose_tokens(candidate.config, o.tokens)
    profile_name = o.profile_name
    if profile_name is None:
        profile_name, chosen = infer_profile(paths[-1])
        chosen = f"inferred: {chosen}"
    else:
        chosen = "given"
    limits = profile(profile_name).override(**o.overrides)
    if check_tensors is None:
        check_tensors = profile_name == "lossless" and reference is not None
    if o.executor == "ray":
        from verify.distributed import run_verification_ray

        result = run_verification_ray(
            paths[0] if reference is not None else None, paths[-1], tokens, thresholds=limits,
            workers=o.workers, address=o.ray_address, reference_logits=stored,
            per_layer=per_layer, check_tensors=check_tensors, dtype=o.dtype, device=o.device,
            batch=o.tokens.batch, keep_top_k=o.keep_top_k)
    else:
        result = run_verification(reference, candidate, tokens, thresholds=limits,
                                  reference_logits=stored, per_layer=per_layer,
                                  check_tensors=check_tensors, dtype=o.dtype, device=o.device,
                                  batch=o.tokens.batch, keep_top_k=o.keep_top_k,
                                  quiet=o.quiet)
    result.tokens = source
    result.profile, result.profile_source = profile_name, chosen
    if not result.passed and profile_name == "lossless":
        result.advice = lossy_hint(paths[-1]) or ""
    return result


def report_dict(result: VerifyResult) -> dict[str, Any]:
    """The JSON report."""
    return result.to_dict()


def write_reports(result: VerifyResult, *, json_path: Path | None = None,
                  markdown_path: Path | None = None, plot_path: Path | None = None,
                  title: str = "Verification") -> None:
    """Write the JSON and Markdown reports and the per-layer error plot (PNG; only when the
    result has per-layer errors) atomically, where asked."""
    if plot_path is not None and result.per_layer:
        with atomic_open(plot_path) as f:
            f.write(layer_error_plot(result.per_layer, result.thresholds.max_layer_error,
                                     f"Per-layer error, {result.profile} profile"))
    if json_path is not None:
        with atomic_open(json_path) as f:
            f.write(json.dumps(report_dict(result), indent=2).encode())
    if markdown_path is not None:
        with atomic_open(markdown_path) as f:
            f.write(format_markdown(result, title=title).encode())


def write_output_reports(result: VerifyResult, folder: Path, title: str) -> None:
    """The reports a verified output folder carries (and its model card embeds)."""
    write_reports(result, json_path=Path(folder) / VERIFY_REPORT_JSON,
                  plot_path=Path(folder) / VERIFY_PLOT,
                  markdown_path=Path(folder) / VERIFY_REPORT_MD, title=title)


def write_logits(checkpoint: Path, out: Path, tokens: TokenSource, *, dtype: str = "float32",
                 device: str = "cpu", quiet: bool = False) -> tuple[tuple[int, ...], str]:
    """Run the streamed forward on token ids (.npy) or text; write float32 logits [batch, seq,
    vocab] to `out` (atomically, a few positions at a time: memory does not grow with the
    text), and the token ids beside it (`<out>.tokens.npy`) when they came from text. Returns
    the logits' shape and where the tokens came from."""
    from converter.forward.drive import stream_logits

    reader = open_checkpoint(checkpoint)
    if not tokens.given:
        raise UsageError("give --tokens, --text-file or --text")
    wanted = dataclasses.replace(tokens, seq_len=min(tokens.seq_len, reader.config.max_seq_len))
    ids, source = choose_tokens(reader.config, wanted)
    shape = (*ids.shape, reader.config.vocab)
    with atomic_open(out) as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                 "shape": shape})
        for chunk in stream_logits(reader, ids, dtype=dtype, device=device,
                                   batch=tokens.batch, quiet=quiet):
            f.write(np.ascontiguousarray(chunk, "<f4").data)
    if tokens.tokens_path is None:
        with atomic_open(Path(f"{out}.tokens.npy")) as f:
            np.save(f, ids)
    return shape, source
