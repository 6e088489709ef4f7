"""The face of the toolchain: the `grok1` command line, the pipeline that chains download,
convert or quantize, verify and upload, and the library verbs a program calls, one per job:

    import grok1
    grok1.convert("grok-1", "grok-1-hf", to="hf", dtype="bf16", names="sglang")
    grok1.quantize("grok-1", "grok-1-w8a8", "w8a8-int8")
    result = grok1.verify("grok-1", "grok-1-w8a8")      # result.passed, result.metrics

The only package that imports `converter`, `quant` and `verify` together; each command body
calls one library function. The verbs are imported on first use, so `import grok1` (and the
command line's start) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from grok1.fields import split_fields

__all__ = ["convert", "download", "inspect", "logits", "quantize", "run_pipeline", "serve_mirror",
           "upload", "verify"]

# verb -> (module, function): each is that function itself, or the thin wrapper below
_VERBS = {
    "download": ("converter.hub.client", "download"),
    "upload": ("converter.hub.client", "upload"),
    "inspect": ("converter.report.inspect", "inspect_checkpoint"),
    "run_pipeline": ("grok1.pipeline", "run_pipeline"),  # (grok1.pipeline is its module)
    "serve_mirror": ("converter.hub.server", "make_server"),
}


def convert(source: Any, dst: Any, *, to: str = "hf", dtype: str | None = None,
            names: str | None = None, tokenizer: str | None = None,
            shard_size: int = 5 * 10**9, **run: Any) -> dict[str, Any]:
    """Convert `source` (any layout) into layout `to` in `dst`, as `grok1 convert` does;
    `run` takes workers, resume, overwrite, dry_run, quiet, executor, ray_address. Returns the
    run's summary."""
    from pathlib import Path

    from converter.convert import convert as run_convert
    from converter.layouts.base import TargetOptions

    options = TargetOptions(names=names, dtype=dtype, shard_size=shard_size, tokenizer=tokenizer)
    return run_convert(Path(source), Path(dst), to=to, options=options, **run)


def verify(reference: Any, candidate: Any | None = None, **options: Any) -> Any:
    """Check `candidate` against `reference` (or, with `reference_logits=`, the one checkpoint
    given against a stored reference run), as `grok1 verify` does; returns the result
    (`.passed`, `.metrics`, `.reasons`). `options` are `verify.options.VerifyOptions`' fields and
    `verify.tokens.TokenSource`'s (seq_len, texts, ...)."""
    from pathlib import Path

    from verify.api import verify_checkpoints
    from verify.options import VerifyOptions

    paths = tuple(Path(p) for p in (reference, candidate) if p is not None)
    return verify_checkpoints(paths, VerifyOptions.from_keywords(**options))


def quantize(source: Any, dst: Any, scheme: str, **options: Any) -> dict[str, Any]:
    """Re-quantize `source` with a registered scheme into `dst`, as `grok1 quantize` does;
    `options` are `quant.schemes.SchemeOptions`' fields (group_size, symmetric, method,
    arithmetic, grid) and `quant.registry.quantize_checkpoint`'s keywords; a calibrating
    scheme (nvfp4) also takes `text_files` (default: the shipped natural text). Returns the
    run's summary."""
    from pathlib import Path

    from grok1.calibration import calibration_for
    from quant.registry import quantize_checkpoint
    from quant.schemes import SchemeOptions

    chosen, rest = split_fields(SchemeOptions, options)
    text_files = tuple(rest.pop("text_files", ()))
    if "calibration" not in rest:
        rest["calibration"] = calibration_for(scheme, Path(source), text_files)
    return quantize_checkpoint(Path(source), Path(dst), scheme, chosen, **rest)


def logits(checkpoint: Any, out: Any, **options: Any) -> tuple[tuple[int, ...], str]:
    """Write the logits of token ids or text to `out`, as `grok1 logits` does; `options` are
    `verify.tokens.TokenSource`'s fields (tokens_path, texts, text_files, seq_len, ...) and
    dtype, device, quiet. Returns the logits' shape and where the tokens came from."""
    from pathlib import Path

    from verify.api import write_logits
    from verify.tokens import TokenSource

    tokens, rest = split_fields(TokenSource, {"seq_len": 8192, **options})
    return write_logits(Path(checkpoint), Path(out), tokens, **rest)


def __getattr__(name: str) -> Any:
    if name in _VERBS:
        module, function = _VERBS[name]
        return getattr(importlib.import_module(module), function)
    raise AttributeError(f"module 'grok1' has no attribute {name!r}")
