"""K-quants (Q4_K_M, Q6_K, ...) through llama.cpp's own quantizer, verified in llama.cpp.

gguf-py cannot write K-quants, and this toolchain does not reimplement them: when llama-cpp-python
is installed, `grok1 gguf-quantize` runs llama.cpp's `llama_model_quantize` on one of our GGUFs
(BF16 or Q8_0 best), then runs the result in llama.cpp itself and compares its logits with our
reference forward of the source, judged by a verify profile. Only a K-quant that passes is
reported as verified; the report says what it was measured on.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import EngineError, UsageError
from converter.files.atomic import atomic_open
from converter.layouts import open_checkpoint
from converter.layouts.gguf import GgufCheckpoint
from verify.llama_runner import INSTALL, available, llama_logits, llama_quantize
from verify.metrics import ReferenceLogits, compare_logits
from verify.profiles import judge, profile
from verify.tokens import TokenSource, choose_tokens

__all__ = ["KQUANTS", "quantize_gguf"]

# llama.cpp's file types (llama.h `llama_ftype`) and the profile each is judged by.
KQUANTS = {"Q4_K_S": (14, "int4"), "Q4_K_M": (15, "int4"), "Q5_K_S": (16, "int4"),
           "Q5_K_M": (17, "int4"), "Q6_K": (18, "int8")}
UNVERIFIED = ".unverified"  # suffix of a K-quant that did not pass: no engine takes it for one


def quantize_gguf(source: Path, dst: Path, kind: str, *, batch: int = 2, seq_len: int = 32,
                  seed: int = 0, threads: int | None = None) -> dict[str, Any]:
    """Quantize the GGUF model in `source` to `kind` with llama.cpp into `dst`, then verify it
    in llama.cpp against our forward of the source; returns the report (also written). Only a
    verified result gets its `.gguf` name; one that failed, or crashed llama.cpp, is kept as
    `NAME.gguf.unverified` beside the report."""
    from converter.forward.drive import torch_logits  # torch only when it runs

    if kind not in KQUANTS:
        raise UsageError(f"unknown K-quant {kind!r}; known: {', '.join(KQUANTS)}")
    if not available():
        raise UsageError(f"K-quants are made by llama.cpp: {INSTALL}")
    model = GgufCheckpoint(Path(source))
    dst = Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise UsageError(f"{dst}: exists and is not empty; choose an empty folder")
    dst.mkdir(parents=True, exist_ok=True)
    final = dst / f"grok-1-{kind}.gguf"
    unverified = dst / f"{final.name}{UNVERIFIED}"
    temporary = dst / f"{final.name}.{secrets.token_hex(4)}.incomplete"
    try:
        llama_quantize(model.files[0], temporary, KQUANTS[kind][0], threads=threads)
        if not temporary.is_file():
            raise EngineError(f"{source}: llama.cpp's quantizer wrote no file")
        temporary.replace(unverified)
    finally:
        temporary.unlink(missing_ok=True)
    tokens, described = choose_tokens(model.config,
                                      TokenSource(batch=batch, seq_len=seq_len, seed=seed))
    ours = torch_logits(open_checkpoint(Path(source)), tokens)
    profile_name = KQUANTS[kind][1]
    rows = [row[row != model.config.pad_token] for row in tokens]
    try:
        outputs = llama_logits(unverified, rows, threads=threads)
    except EngineError as exc:
        metrics: dict[str, Any] = {}
        reasons = [f"{exc} (the result could not be run; on Intel AMX CPUs see the README)"]
    else:
        theirs = np.zeros_like(ours)
        for index, logits in enumerate(outputs):
            theirs[index, :len(logits)] = logits
        reference = ReferenceLogits.from_logits(ours, tokens, pad_token=model.config.pad_token)
        metrics = compare_logits(reference, theirs)
        reasons = judge(metrics, profile(profile_name))
    if not reasons:
        unverified.replace(final)
    report = {"kind": kind, "file": (final if not reasons else unverified).name,
              "source": str(source), "profile": profile_name, "verified": not reasons,
              "reasons": reasons, "tokens": described, "metrics": metrics,
              "by": "llama.cpp's llama_model_quantize, run in llama.cpp"}
    with atomic_open(dst / "kquant_report.json") as f:
        f.write((json.dumps(report, indent=2) + "\n").encode())
    return report
