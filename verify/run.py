"""Verification: both models layer-major, one model's layer in memory at a time.

Every sequence goes through reference layer L, then candidate layer L, before layer L+1 is
read. With `per_layer`, candidate layer L also runs on the reference's input to layer L, so the
report gives each layer's own error, split into its attention and MoE sub-blocks.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch

from converter.errors import ConfigMismatchError, UsageError
from converter.layouts import CheckpointReader
from converter.tensors import QuantizedWeight8bit
from verify.metrics import ReferenceLogits, compare_logits
from verify.profiles import Thresholds, judge
from verify.tokens import usable_tokens
from verify.torch_forward import StreamedGrok1
from verify.weights import dense

__all__ = ["VerifyResult", "compare_tensors", "run_verification"]


@dataclasses.dataclass
class VerifyResult:
    """What `grok1 verify` reports."""

    metrics: dict[str, Any]
    reasons: list[str]
    per_layer: list[dict[str, Any]] | None
    tensor_mismatches: list[str] | None
    thresholds: Thresholds
    seconds: float
    reference: ReferenceLogits
    tokens: str = ""

    @property
    def passed(self) -> bool:
        """True when no rule failed."""
        return not self.reasons

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"passed": self.passed, "reasons": self.reasons, "tokens": self.tokens,
                "metrics": self.metrics,
                "thresholds": dataclasses.asdict(self.thresholds), "per_layer": self.per_layer,
                "tensor_mismatches": self.tensor_mismatches, "seconds": round(self.seconds, 3)}


def _sq(candidate: torch.Tensor, reference: torch.Tensor, valid: torch.Tensor) -> list[float]:
    """[sum of squared differences, sum of squared reference] over valid positions: the parts of
    a relative error that add up across batches."""
    c, r = candidate[valid].double(), reference[valid].double()
    return [float((c - r).square().sum()), float(r.square().sum())]


def relative_errors(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-layer squared sums -> relative errors."""
    return [{k: (v if k == "layer" else float(np.sqrt(v[0] / max(v[1], 1e-300))))
             for k, v in row.items()} for row in rows]


@dataclasses.dataclass
class ForwardOutcome:
    """What one batch of sequences produced: reference distributions, candidate logits, and
    per-layer squared-error sums (which add across batches)."""

    reference: ReferenceLogits
    candidate_logits: np.ndarray
    layer_sums: list[dict[str, Any]] | None

    @classmethod
    def combine(cls, parts: list[ForwardOutcome]) -> ForwardOutcome:
        """Concatenate batches (in order); add their squared sums."""
        refs = [p.reference for p in parts]
        reference = dataclasses.replace(refs[0], **{
            name: np.concatenate([getattr(r, name) for r in refs]) for name in (
                "tokens", "topk_ids", "topk_logits", "topk_logprobs", "next_logprob")})
        sums = None
        if parts[0].layer_sums is not None:
            sums = [{k: (v if k == "layer" else [sum(p.layer_sums[i][k][j] for p in parts)
                                                 for j in (0, 1)])
                     for k, v in row.items()} for i, row in enumerate(parts[0].layer_sums)]
        return cls(reference, np.concatenate([p.candidate_logits for p in parts]), sums)


def _check_same_shape(ref: CheckpointReader, cand: CheckpointReader) -> None:
    a, b = ref.config.to_dict(), cand.config.to_dict()
    diff = {k: (a[k], b[k]) for k in a if a[k] != b[k] and k != "max_seq_len"}
    if diff:
        raise ConfigMismatchError(f"reference and candidate are different models: {diff}")


def checked_tokens(reference: CheckpointReader | None, candidate: CheckpointReader,
                   tokens: np.ndarray | None,
                   reference_logits: ReferenceLogits | None) -> np.ndarray:
    """The tokens to run (a stored reference brings its own), once both checkpoints are known
    to be the same model."""
    config = candidate.config
    if reference is not None:
        _check_same_shape(reference, candidate)
    if reference_logits is not None:
        if (reference_logits.vocab, reference_logits.pad_token) != (config.vocab,
                                                                    config.pad_token):
            raise ConfigMismatchError(
                f"the stored reference is of another model (vocabulary {reference_logits.vocab}"
                f", pad {reference_logits.pad_token}; the candidate has {config.vocab}, "
                f"{config.pad_token})")
        tokens = reference_logits.tokens
    if tokens is None:
        raise UsageError("no tokens: give --tokens, --seq-len/--batch, or --reference-logits")
    real = usable_tokens(config, tokens) != config.pad_token
    if not (real[:, 1:] & real[:, :-1]).any():
        raise UsageError("no sequence has two real tokens in a row, so perplexity is undefined; "
                         "give sequences of at least 2 tokens")
    return tokens


def _values_equal(a: Any, b: Any) -> bool:
    if isinstance(a, QuantizedWeight8bit) and isinstance(b, QuantizedWeight8bit):
        return np.array_equal(a.weight, b.weight) and np.array_equal(a.scales, b.scales)
    da, db = dense(a), dense(b)
    return da.shape == db.shape and np.array_equal(da.view(np.uint32), db.view(np.uint32))


def compare_tensors(ref: CheckpointReader, cand: CheckpointReader) -> list[str]:
    """Canonical tensors that differ bit for bit (after undoing each layout)."""
    cand_specs = {s.name: s for s in cand.specs}
    mismatches = []
    for spec in ref.specs:
        if spec.name not in cand_specs:
            mismatches.append(f"{spec.name}: missing from the candidate")
        elif not _values_equal(ref.read(spec), cand.read(cand_specs[spec.name])):
            mismatches.append(f"{spec.name}: differs")
    return mismatches


@torch.inference_mode()
def run_forwards(reference: CheckpointReader | None, candidate: CheckpointReader,
                 tokens: np.ndarray, *, reference_logits: ReferenceLogits | None = None,
                 per_layer: bool = False, dtype: str = "float32",
                 device: str = "cpu") -> ForwardOutcome:
    """Both forwards, layer-major; the reference only when its logits are not given."""
    cand_model = StreamedGrok1(candidate, dtype=dtype, device=device)
    ref_model = (StreamedGrok1(reference, dtype=dtype, device=device)
                 if reference is not None and (reference_logits is None or per_layer)
                 else None)
    valid = torch.from_numpy(tokens != candidate.config.pad_token).to(cand_model.device)
    h_cand = cand_model.embed(tokens)
    h_ref = ref_model.embed(tokens) if ref_model else None
    rows: list[dict[str, Any]] = []
    if per_layer and h_ref is not None:
        rows.append({"layer": "embed", "hidden": _sq(h_cand, h_ref, valid)})
    for index in range(candidate.config.layers):
        out_ref = None
        if ref_model is not None and h_ref is not None:
            out_ref = ref_model.layer(ref_model.load_layer(index), h_ref, valid)
        weights = cand_model.load_layer(index)
        if per_layer and out_ref is not None and h_ref is not None:
            alone = cand_model.layer(weights, h_ref, valid)
            rows.append({"layer": index,
                         "attention": _sq(alone.attention, out_ref.attention, valid),
                         "moe": _sq(alone.moe, out_ref.moe, valid),
                         "hidden": _sq(alone.hidden, out_ref.hidden, valid)})
        h_cand = cand_model.layer(weights, h_cand, valid).hidden
        del weights
        if out_ref is not None:
            h_ref = out_ref.hidden
    cand_logits = cand_model.head(h_cand)
    if reference_logits is None:
        if ref_model is None or h_ref is None:
            raise UsageError("a reference checkpoint or --reference-logits is needed")
        reference_logits = ReferenceLogits.from_logits(
            ref_model.head(h_ref), tokens, pad_token=candidate.config.pad_token)
    if per_layer and h_ref is not None:
        ids = reference_logits.topk_ids
        mask = tokens != candidate.config.pad_token
        cand_top = np.take_along_axis(cand_model.head(h_ref), ids, axis=-1)[mask].astype(
            np.float64)
        ref_top = reference_logits.topk_logits[mask].astype(np.float64)
        rows.append({"layer": "head", "hidden": [float(np.square(cand_top - ref_top).sum()),
                                                  float(np.square(ref_top).sum())]})
    return ForwardOutcome(reference_logits, cand_logits, rows if per_layer else None)


def judge_outcome(outcome: ForwardOutcome, thresholds: Thresholds, *,
                  mismatches: list[str] | None = None, seconds: float = 0.0) -> VerifyResult:
    """Metrics, per-layer errors and every reason to fail."""
    metrics = compare_logits(outcome.reference, outcome.candidate_logits)
    reasons = judge(metrics, thresholds)
    layers = relative_errors(outcome.layer_sums) if outcome.layer_sums is not None else None
    if layers is not None:
        flagged = [row for row in layers
                   if max(v for k, v in row.items() if k != "layer") > (
                       thresholds.max_layer_error or 0.0)]
        metrics["flagged_layers"] = [row["layer"] for row in flagged]
        if flagged and reasons:
            worst = max(flagged, key=lambda r: max(v for k, v in r.items() if k != "layer"))
            reasons.append(f"largest per-layer error in layer {worst['layer']}")
    if mismatches:
        reasons.append(f"{len(mismatches)} tensors differ bit for bit, first: {mismatches[0]}")
    return VerifyResult(metrics=metrics, reasons=reasons, per_layer=layers,
                        tensor_mismatches=mismatches, thresholds=thresholds, seconds=seconds,
                        reference=outcome.reference)


def run_verification(reference: CheckpointReader | None, candidate: CheckpointReader,
                     tokens: np.ndarray | None, *, thresholds: Thresholds,
                     reference_logits: ReferenceLogits | None = None, per_layer: bool = False,
                     check_tensors: bool = False, dtype: str = "float32",
                     device: str = "cpu") -> VerifyResult:
    """Run the candidate (and the reference unless its logits are given) and judge it."""
    start = time.perf_counter()
    tokens = checked_tokens(reference, candidate, tokens, reference_logits)
    outcome = run_forwards(reference, candidate, tokens, reference_logits=reference_logits,
                           per_layer=per_layer, dtype=dtype, device=device)
    mismatches = (compare_tensors(reference, candidate)
                  if check_tensors and reference is not None else None)
    return judge_outcome(outcome, thresholds, mismatches=mismatches,
                         seconds=time.perf_counter() - start)
