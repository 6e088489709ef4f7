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

from converter.engine.progress import step_bar
from converter.errors import ConfigMismatchError, UsageError
from converter.forward import forward_class
from converter.forward.base import HEAD_ENTRIES, StreamedForward
from converter.forward.layer_weights import dense
from converter.model.stream import CheckpointReader
from converter.tensors import QuantizedWeight8bit
from verify.metrics import MetricSums, Positions, ReferenceLogits, next_ids
from verify.profiles import Thresholds, judge
from verify.tokens import usable_tokens

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
    reference: ReferenceLogits | None  # top-k, when asked to keep it (--save-reference)
    tokens: str = ""
    profile: str = ""
    profile_source: str = ""  # how the profile was chosen
    advice: str = ""  # what would pass, when a lossless check fails on a lossy candidate

    @property
    def passed(self) -> bool:
        """True when no rule failed."""
        return not self.reasons

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"profile": self.profile, "profile_source": self.profile_source,
                "passed": self.passed, "reasons": self.reasons, "advice": self.advice,
                "tokens": self.tokens, "metrics": self.metrics,
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


def _add_sums(rows: list[dict[str, Any]], row: dict[str, Any]) -> None:
    """Add a per-layer row of squared sums into `rows` (the same layer's row, if there)."""
    for existing in rows:
        if existing["layer"] == row["layer"]:
            for key, (a, b) in ((k, v) for k, v in row.items() if k != "layer"):
                existing[key] = [existing[key][0] + a, existing[key][1] + b]
            return
    rows.append(row)


@dataclasses.dataclass
class ForwardOutcome:
    """What a run over some sequences produced, already reduced: the metric sums of every real
    position, per-layer squared-error sums, and the reference's top-k if it is to be kept.
    Parts of one run over consecutive sequences combine."""

    sums: MetricSums
    layer_sums: list[dict[str, Any]] | None
    kept: ReferenceLogits | None

    @classmethod
    def combine(cls, parts: list[ForwardOutcome]) -> ForwardOutcome:
        """Concatenate parts (in sequence order); add their squared sums."""
        sums = None
        if parts[0].layer_sums is not None:
            sums = []
            for part in parts:
                for row in part.layer_sums or []:
                    _add_sums(sums, {k: (list(v) if k != "layer" else v) for k, v in row.items()})
        kept = None
        if parts[0].kept is not None:
            refs = [p.kept for p in parts if p.kept is not None]
            kept = dataclasses.replace(refs[0], **{
                name: np.concatenate([getattr(r, name) for r in refs]) for name in (
                    "tokens", "topk_ids", "topk_logits", "topk_logprobs", "next_logprob")})
        return cls(MetricSums.concat([p.sums for p in parts]), sums, kept)


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


def _chunks(count: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, count)) for i in range(0, count, max(1, size))]


@torch.inference_mode()
def run_forwards(reference: CheckpointReader | None, candidate: CheckpointReader,
                 tokens: np.ndarray, *, reference_logits: ReferenceLogits | None = None,
                 per_layer: bool = False, dtype: str = "float32", device: str = "cpu",
                 batch: int = 4, keep_top_k: int | None = None,
                 quiet: bool = False) -> ForwardOutcome:
    """Both forwards, layer-major (each weight read once), the reference only when its logits
    are not given. Each layer runs on `batch` sequences at a time, and the logits are made and
    reduced a few positions at a time, so memory holds the hidden states and one chunk's
    logits, never the whole text's. A progress bar counts layers (and the head) on a
    terminal unless `quiet`."""
    config = candidate.config
    cand_model = forward_class(candidate)(candidate, dtype=dtype, device=device)
    ref_model = (forward_class(reference)(reference, dtype=dtype, device=device)
                 if reference is not None and (reference_logits is None or per_layer)
                 else None)
    valid = torch.from_numpy(tokens != config.pad_token).to(cand_model.device)
    h_cand = cand_model.embed(tokens)
    h_ref = ref_model.embed(tokens) if ref_model else None
    rows: list[dict[str, Any]] = []
    if per_layer and h_ref is not None:
        rows.append({"layer": "embed", "hidden": _sq(h_cand, h_ref, valid)})
    groups = _chunks(len(tokens), batch)
    with step_bar(config.layers + 1, "verify" if ref_model else "candidate", "layer",
                  quiet=quiet) as bar:
        for index in range(config.layers):
            ref_weights = ref_model.load_layer(index) if ref_model is not None else None
            weights = cand_model.load_layer(index)
            for rows_of in groups:
                out_ref = None
                if ref_model is not None and h_ref is not None:
                    out_ref = ref_model.layer(ref_weights, h_ref[rows_of], valid[rows_of],
                                              index=index)
                if per_layer and out_ref is not None and h_ref is not None:
                    alone = cand_model.layer(weights, h_ref[rows_of], valid[rows_of], index=index)
                    _add_sums(rows, {"layer": index,
                                     "attention": _sq(alone.attention, out_ref.attention,
                                                      valid[rows_of]),
                                     "moe": _sq(alone.moe, out_ref.moe, valid[rows_of]),
                                     "hidden": _sq(alone.hidden, out_ref.hidden, valid[rows_of])})
                h_cand[rows_of] = cand_model.layer(weights, h_cand[rows_of], valid[rows_of],
                                                   index=index).hidden
                if out_ref is not None and h_ref is not None:
                    h_ref[rows_of] = out_ref.hidden
            del weights, ref_weights
            bar.update()
        outcome = _reduce_head(cand_model, ref_model, h_cand, h_ref, tokens, reference_logits,
                               rows if per_layer else None, keep_top_k)
        bar.update()
    return outcome


def _reduce_head(cand_model: StreamedForward, ref_model: StreamedForward | None,
                 h_cand: torch.Tensor, h_ref: torch.Tensor | None, tokens: np.ndarray,
                 stored: ReferenceLogits | None, rows: list[dict[str, Any]] | None,
                 keep_top_k: int | None) -> ForwardOutcome:
    """Logits a chunk of real positions at a time, each chunk reduced to metric sums (and the
    reference's top-k, when kept) before the next is made."""
    config = cand_model.config
    flat_tokens = tokens.reshape(-1)
    positions = np.flatnonzero(flat_tokens != config.pad_token)
    following = next_ids(tokens, config.pad_token).reshape(-1)
    hc = h_cand.reshape(-1, h_cand.shape[-1])
    hr = h_ref.reshape(-1, h_ref.shape[-1]) if h_ref is not None else None
    parts, head_sums = [], [0.0, 0.0]
    kept = None
    if keep_top_k is not None:
        k = min(keep_top_k, config.vocab)
        kept = Positions(np.zeros((flat_tokens.size, k), np.int32),
                         np.zeros((flat_tokens.size, k), np.float32),
                         np.zeros((flat_tokens.size, k)), np.full(flat_tokens.size, np.nan))
    for part in _chunks(positions.size, HEAD_ENTRIES // config.vocab):
        at = positions[part]
        index = torch.from_numpy(at).to(hc.device)
        if stored is not None:
            ref = stored.at(at)
        elif ref_model is not None and hr is not None:
            ref = Positions.of(ref_model.head(hr[index]), following[at])
        else:
            raise UsageError("a reference checkpoint or --reference-logits is needed")
        parts.append(MetricSums.of(ref, cand_model.head(hc[index]), following[at],
                                   exact=ref.ids.shape[-1] == config.vocab))
        if kept is not None:
            top = ref.truncated(kept.ids.shape[-1])
            for name in ("ids", "logits", "logprobs", "next_logprob"):
                getattr(kept, name)[at] = getattr(top, name)
        if rows is not None and hr is not None:
            mine = np.take_along_axis(cand_model.head(hr[index]), ref.ids.astype(np.int64),
                                      axis=-1).astype(np.float64)
            theirs = ref.logits.astype(np.float64)
            head_sums[0] += float(np.square(mine - theirs).sum())
            head_sums[1] += float(np.square(theirs).sum())
    if rows is not None:
        rows.append({"layer": "head", "hidden": head_sums})
    reference = (ReferenceLogits.from_positions(kept, tokens, vocab=config.vocab,
                                                pad_token=config.pad_token)
                 if kept is not None else None)
    return ForwardOutcome(MetricSums.concat(parts), rows, reference)


def judge_outcome(outcome: ForwardOutcome, thresholds: Thresholds, *,
                  mismatches: list[str] | None = None, seconds: float = 0.0) -> VerifyResult:
    """Metrics, per-layer errors and every reason to fail."""
    metrics = outcome.sums.metrics()
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
                        reference=outcome.kept)


def run_verification(reference: CheckpointReader | None, candidate: CheckpointReader,
                     tokens: np.ndarray | None, *, thresholds: Thresholds,
                     reference_logits: ReferenceLogits | None = None, per_layer: bool = False,
                     check_tensors: bool = False, dtype: str = "float32",
                     device: str = "cpu", batch: int = 4,
                     keep_top_k: int | None = None, quiet: bool = False) -> VerifyResult:
    """Run the candidate (and the reference unless its logits are given) and judge it."""
    start = time.perf_counter()
    tokens = checked_tokens(reference, candidate, tokens, reference_logits)
    outcome = run_forwards(reference, candidate, tokens, reference_logits=reference_logits,
                           per_layer=per_layer, dtype=dtype, device=device, batch=batch,
                           keep_top_k=keep_top_k, quiet=quiet)
    mismatches = (compare_tensors(reference, candidate)
                  if check_tensors and reference is not None else None)
    return judge_outcome(outcome, thresholds, mismatches=mismatches,
                         seconds=time.perf_counter() - start)
