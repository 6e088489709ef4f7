"""`grok1 verify --executor ray`: the batch of sequences split across Ray workers.

Each worker streams the layers of both checkpoints itself for its share of the sequences and
returns its logits and per-layer squared-error sums; the driver concatenates them in order and
computes the metrics once, so the numbers are those of the local run.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from converter.engine.executors import ray_connect, ray_get
from converter.layouts import open_checkpoint
from verify.metrics import ReferenceLogits
from verify.profiles import Thresholds
from verify.run import (
    ForwardOutcome,
    VerifyResult,
    checked_tokens,
    compare_tensors,
    judge_outcome,
    run_forwards,
)

__all__ = ["run_verification_ray"]


def _forward_part(reference: str | None, candidate: str, tokens: np.ndarray,
                  stored: ReferenceLogits | None, options: dict[str, Any]) -> ForwardOutcome:
    ref = open_checkpoint(Path(reference)) if reference else None
    return run_forwards(ref, open_checkpoint(Path(candidate)), tokens, reference_logits=stored,
                        **options)


def _rows(stored: ReferenceLogits, index: np.ndarray) -> ReferenceLogits:
    return dataclasses.replace(stored, **{
        name: getattr(stored, name)[index] for name in (
            "tokens", "topk_ids", "topk_logits", "topk_logprobs", "next_logprob")})


def run_verification_ray(reference: Path | None, candidate: Path, tokens: np.ndarray | None, *,
                         thresholds: Thresholds, workers: int, address: str | None = None,
                         reference_logits: ReferenceLogits | None = None,
                         per_layer: bool = False, check_tensors: bool = False,
                         dtype: str = "float32", device: str = "cpu", batch: int = 4,
                         keep_top_k: int | None = None) -> VerifyResult:
    """Split the sequences over `workers` Ray tasks and judge the combined result."""
    start = time.perf_counter()
    tokens = checked_tokens(open_checkpoint(reference) if reference else None,
                            open_checkpoint(candidate), tokens, reference_logits)
    ray = ray_connect(address)
    parts = [p for p in np.array_split(np.arange(len(tokens)), max(1, workers)) if len(p)]
    task = ray.remote(_forward_part)
    options = {"per_layer": per_layer, "dtype": dtype, "device": device, "batch": batch,
               "keep_top_k": keep_top_k}
    refs = [task.remote(str(reference) if reference else None, str(candidate), tokens[rows],
                        _rows(reference_logits, rows) if reference_logits else None, options)
            for rows in parts]
    outcome = ForwardOutcome.combine([ray_get(ray, r) for r in refs])
    mismatches = (compare_tensors(open_checkpoint(reference), open_checkpoint(candidate))
                  if check_tensors and reference is not None else None)
    return judge_outcome(outcome, thresholds, mismatches=mismatches,
                         seconds=time.perf_counter() - start)
