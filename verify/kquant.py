"""K-quants (Q4_K_M, Q6_K, ...) through llama.cpp's own quantizer, verified in llama.cpp.

gguf-py cannot write K-quants, and this toolchain does not reimplement them: when llama-cpp-python
is installed, `grok1 gguf-quantize` runs llama.cpp's `llama_model_quantize` on one of our GGUFs
(BF16 or Q8_0 best), then runs the result in llama.cpp itself and compares its logits with our
reference forward of the source, judged by a verify profile. Only a K-quant that passes is
reported as verified; the report says what it was measured on.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np

from converter.atomic import atomic_open
from converter.errors import UsageError
from converter.layouts import open_checkpoint
from converter.layouts.gguf import GgufCheckpoint
from verify.metrics import ReferenceLogits, compare_logits
from verify.profiles import judge, profile
from verify.tokens import choose_tokens
from verify.torch_forward import torch_logits

__all__ = ["KQUANTS", "quantize_gguf"]

# llama.cpp's file types (llama.h `llama_ftype`) and the profile each is judged by.
KQUANTS = {"Q4_K_S": (14, "int4"), "Q4_K_M": (15, "int4"), "Q5_K_S": (16, "int4"),
           "Q5_K_M": (17, "int4"), "Q6_K": (18, "int8")}
INSTALL = "pip install llama-cpp-python==0.3.36"


def _llama() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise UsageError(f"K-quants are made by llama.cpp: {INSTALL}") from None
    return llama_cpp


def quantize_gguf(source: Path, dst: Path, kind: str, *, batch: int = 2, seq_len: int = 32,
                  seed: int = 0, threads: int | None = None) -> dict[str, Any]:
    """Quantize the GGUF model in `source` to `kind` with llama.cpp into `dst`, then verify it
    in llama.cpp against our forward of the source; returns the report (also written)."""
    if kind not in KQUANTS:
        raise UsageError(f"unknown K-quant {kind!r}; known: {', '.join(KQUANTS)}")
    llama_cpp = _llama()
    model = GgufCheckpoint(Path(source))
    dst = Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise UsageError(f"{dst}: exists and is not empty; choose an empty folder")
    dst.mkdir(parents=True, exist_ok=True)
    final = dst / f"grok-1-{kind}.gguf"
    temporary = dst / f"{final.name}.{secrets.token_hex(4)}.incomplete"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = KQUANTS[kind][0]
    params.nthread = threads or len(os.sched_getaffinity(0))
    try:
        status = llama_cpp.llama_model_quantize(str(model.files[0]).encode(),
                                                str(temporary).encode(), params)
        if status != 0 or not temporary.is_file():
            raise UsageError(f"{source}: llama.cpp's quantizer failed (status {status})")
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)
    tokens, described = choose_tokens(model.config, batch=batch, seq_len=seq_len, seed=seed)
    ours = torch_logits(open_checkpoint(Path(source)), tokens)
    theirs = np.stack([_llama_logits(llama_cpp, final, row[row != model.config.pad_token],
                                     tokens.shape[1]) for row in tokens])
    reference = ReferenceLogits.from_logits(ours, tokens, pad_token=model.config.pad_token)
    metrics = compare_logits(reference, theirs)
    profile_name = KQUANTS[kind][1]
    reasons = judge(metrics, profile(profile_name))
    report = {"kind": kind, "file": final.name, "source": str(source), "profile": profile_name,
              "verified": not reasons, "reasons": reasons, "tokens": described,
              "metrics": metrics, "by": "llama.cpp's llama_model_quantize, run in llama.cpp"}
    with atomic_open(dst / "kquant_report.json") as f:
        f.write((json.dumps(report, indent=2) + "\n").encode())
    return report


def _llama_logits(llama_cpp: Any, path: Path, ids: np.ndarray, length: int) -> np.ndarray:
    """llama.cpp's logits of one sequence, padded with zeros to `length` positions."""
    model = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=max(64, length),
                            type_k=0, type_v=0, verbose=False)
    model.eval([int(i) for i in ids])
    out = np.zeros((length, model.n_vocab()), np.float32)
    out[:len(ids)] = np.array(model.scores[:len(ids)], np.float32)
    return out
