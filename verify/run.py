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
from verify.torch_forward import StreamedGrok1
from verify.weights import dense

__all__ = ["VerifyResult", "compare_tensors", "random_tokens", "run_verification"]


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

    @property
    def passed(self) -> bool:
        """True when no rule failed."""
        return not self.reasons

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"passed": self.passed, "reasons": self.reasons, "metrics": self.metrics,
                "thresholds": dataclasses.asdict(self.thresholds), "per_layer": self.per_layer,
                "tensor_mismatches": self.tensor_mismatches, "seconds": round(self.seconds, 3)}


def random_tokens(vocab: int, *, batch: int, seq_len: int, seed: int) -> np.ndarray:
    """Deterministic token ids in [3, vocab) with BOS (1) first; no padding."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, vocab, size=(batch, seq_len), dtype=np.int64)
    tokens[:, 0] = 1
    return tokens


def _rel(candidate: torch.Tensor, reference: torch.Tensor, valid: torch.Tensor) -> float:
    c, r = candidate[valid].double(), reference[valid].double()
    return float((c - r).norm() / r.norm().clamp_min(1e-30))


def _check_same_shape(ref: CheckpointReader, cand: CheckpointReader) -> None:
    a, b = ref.config.to_dict(), cand.config.to_dict()
    diff = {k: (a[k], b[k]) for k in a if a[k] != b[k] and k != "max_seq_len"}
    if diff:
        raise ConfigMismatchError(f"reference and candidate are different models: {diff}")


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
def run_verification(reference: CheckpointReader | None, candidate: CheckpointReader,
                     tokens: np.ndarray | None, *, thresholds: Thresholds,
                     reference_logits: ReferenceLogits | None = None, per_layer: bool = False,
                     check_tensors: bool = False, dtype: str = "float32",
                     device: str = "cpu") -> VerifyResult:
    """Run the candidate (and the reference unless its logits are given) and judge it."""
    start = time.perf_counter()
    if reference is not None:
        _check_same_shape(reference, candidate)
    if reference_logits is not None:
        tokens = reference_logits.tokens
    if tokens is None:
        raise UsageError("no tokens: give --tokens, --seq-len/--batch, or --reference-logits")
    cand_model = StreamedGrok1(candidate, dtype=dtype, device=device)
    ref_model = (StreamedGrok1(reference, dtype=dtype, device=device)
                 if reference_logits is None or per_layer else None)
    valid = torch.from_numpy(tokens != candidate.config.pad_token).to(cand_model.device)
    h_cand = cand_model.embed(tokens)
    h_ref = ref_model.embed(tokens) if ref_model else None
    layers: list[dict[str, Any]] = []
    if per_layer and h_ref is not None:
        layers.append({"layer": "embed", "hidden": _rel(h_cand, h_ref, valid)})
    for index in range(candidate.config.layers):
        out_ref = None
        if ref_model is not None and h_ref is not None:
            out_ref = ref_model.layer(ref_model.load_layer(index), h_ref, valid)
        weights = cand_model.load_layer(index)
        if per_layer and out_ref is not None and h_ref is not None:
            alone = cand_model.layer(weights, h_ref, valid)
            layers.append({"layer": index, "attention": _rel(alone.attention, out_ref.attention,
                                                             valid),
                           "moe": _rel(alone.moe, out_ref.moe, valid),
                           "hidden": _rel(alone.hidden, out_ref.hidden, valid)})
        h_cand = cand_model.layer(weights, h_cand, valid).hidden
        del weights
        if out_ref is not None:
            h_ref = out_ref.hidden
    cand_logits = cand_model.head(h_cand)
    if reference_logits is None:
        assert ref_model is not None and h_ref is not None
        reference_logits = ReferenceLogits.from_logits(
            ref_model.head(h_ref), tokens, pad_token=candidate.config.pad_token)
    if per_layer and h_ref is not None:
        head_alone = cand_model.head(h_ref)
        ref_top = reference_logits.topk_logits
        ids = reference_logits.topk_ids
        cand_top = np.take_along_axis(head_alone, ids, axis=-1)
        mask = tokens != candidate.config.pad_token
        error = np.linalg.norm((cand_top - ref_top)[mask]) / max(
            np.linalg.norm(ref_top[mask]), 1e-30)
        layers.append({"layer": "head", "hidden": float(error)})
    metrics = compare_logits(reference_logits, cand_logits)
    reasons = judge(metrics, thresholds)
    if per_layer:
        flagged = [row for row in layers
                   if max(v for k, v in row.items() if k != "layer") > (
                       thresholds.max_layer_error or 0.0)]
        metrics["flagged_layers"] = [row["layer"] for row in flagged]
        if flagged and reasons:
            worst = max(flagged, key=lambda r: max(v for k, v in r.items() if k != "layer"))
            reasons.append(f"largest per-layer error in layer {worst['layer']}")
    mismatches = None
    if check_tensors and reference is not None:
        mismatches = compare_tensors(reference, candidate)
        if mismatches:
            reasons.append(f"{len(mismatches)} tensors differ bit for bit, first: {mismatches[0]}")
    return VerifyResult(metrics=metrics, reasons=reasons, per_layer=layers if per_layer else None,
                        tensor_mismatches=mismatches, thresholds=thresholds,
                        seconds=time.perf_counter() - start, reference=reference_logits)
