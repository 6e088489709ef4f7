"""Logits metrics between a reference and a candidate over the non-pad positions.

The reference is a `ReferenceLogits`: per position, its top-k token ids, their raw logits and
log-probs, and the log-prob of the actual next token. With k = vocab it is the
full distribution and every metric is exact; with a smaller k (a stored reference for a 131072
token vocabulary) KL is taken over the top-k plus one merged tail bucket, which is a lower bound
of the exact KL by the log-sum inequality, and logit differences are taken over the top-k.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from converter.atomic import atomic_open
from converter.errors import MalformedFileError

__all__ = ["ReferenceLogits", "compare_logits", "log_softmax"]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log_softmax over the last axis in float64."""
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _next_token_logprob(logprobs: np.ndarray, tokens: np.ndarray, pad: int) -> np.ndarray:
    """log p(tokens[t+1]) at each position; NaN where there is no real next token."""
    out = np.full(tokens.shape, np.nan)
    nxt = tokens[:, 1:]
    picked = np.take_along_axis(logprobs[:, :-1], nxt[..., None], axis=-1)[..., 0]
    out[:, :-1] = np.where(nxt != pad, picked, np.nan)
    return out


@dataclasses.dataclass
class ReferenceLogits:
    """Reference distributions, full (k = vocab) or as top-k log-probs."""

    tokens: np.ndarray          # int64 [B, T]
    topk_ids: np.ndarray        # int32 [B, T, k], by decreasing probability
    topk_logits: np.ndarray     # float32 [B, T, k], the raw logits
    topk_logprobs: np.ndarray   # float64 [B, T, k]
    next_logprob: np.ndarray    # float64 [B, T], NaN where no real next token
    vocab: int
    pad_token: int

    @classmethod
    def from_logits(cls, logits: np.ndarray, tokens: np.ndarray, *, pad_token: int,
                    top_k: int | None = None) -> ReferenceLogits:
        """Summarise full logits [B, T, V]; top_k None keeps the whole distribution."""
        vocab = logits.shape[-1]
        k = vocab if top_k is None else min(top_k, vocab)
        lp = log_softmax(logits)
        if k == vocab:
            ids = np.argsort(-lp, axis=-1, kind="stable")
        else:
            part = np.argpartition(-lp, k - 1, axis=-1)[..., :k]
            order = np.argsort(-np.take_along_axis(lp, part, axis=-1), axis=-1, kind="stable")
            ids = np.take_along_axis(part, order, axis=-1)
        return cls(tokens=np.asarray(tokens, np.int64), topk_ids=ids.astype(np.int32),
                   topk_logits=np.take_along_axis(logits, ids, axis=-1).astype(np.float32),
                   topk_logprobs=np.take_along_axis(lp, ids, axis=-1),
                   next_logprob=_next_token_logprob(lp, np.asarray(tokens), pad_token),
                   vocab=vocab, pad_token=pad_token)

    @property
    def exact(self) -> bool:
        """Whether the whole distribution is held (metrics exact)."""
        return self.topk_ids.shape[-1] == self.vocab

    def truncated(self, k: int) -> ReferenceLogits:
        """The same reference keeping only the k most probable tokens per position."""
        return dataclasses.replace(self, topk_ids=self.topk_ids[..., :k],
                                   topk_logits=self.topk_logits[..., :k],
                                   topk_logprobs=self.topk_logprobs[..., :k])

    def save(self, path: Path) -> None:
        """Write as .npz, atomically."""
        with atomic_open(Path(path)) as f:
            np.savez(f, tokens=self.tokens, topk_ids=self.topk_ids,
                     topk_logits=self.topk_logits, topk_logprobs=self.topk_logprobs,
                     next_logprob=self.next_logprob, vocab=self.vocab, pad_token=self.pad_token)

    @classmethod
    def load(cls, path: Path) -> ReferenceLogits:
        """Read a file written by `save`."""
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                fields = {f.name: data[f.name] for f in dataclasses.fields(cls)}
        except FileNotFoundError:
            raise MalformedFileError(f"{path}: no such reference-logits file") from None
        except (KeyError, ValueError, OSError) as exc:
            raise MalformedFileError(f"{path}: not a reference-logits file ({exc})") from None
        fields["vocab"], fields["pad_token"] = int(fields["vocab"]), int(fields["pad_token"])
        return cls(**fields)


def compare_logits(ref: ReferenceLogits, candidate: np.ndarray) -> dict[str, Any]:
    """Every metric of the candidate logits [B, T, V] against the reference."""
    tokens = ref.tokens
    valid = tokens != ref.pad_token
    cand = candidate[valid]
    nonfinite = int((~np.isfinite(cand)).sum())
    cand = np.nan_to_num(cand.astype(np.float64), nan=0.0, posinf=1e30, neginf=-1e30)
    lq = log_softmax(cand)
    ids = ref.topk_ids[valid].astype(np.int64)
    lp = ref.topk_logprobs[valid].astype(np.float64)
    lq_top = np.take_along_axis(lq, ids, axis=-1)
    p = np.exp(lp)
    kl = (p * (lp - lq_top)).sum(axis=-1)
    if not ref.exact:
        tail_p = np.clip(1 - p.sum(axis=-1), 1e-300, None)
        tail_q = np.clip(1 - np.exp(lq_top).sum(axis=-1), 1e-300, None)
        kl = kl + tail_p * (np.log(tail_p) - np.log(tail_q))
    kl = np.maximum(kl, 0.0)
    diff = np.abs(np.take_along_axis(cand, ids, axis=-1) - ref.topk_logits[valid])
    cand_top5 = np.argpartition(-cand, min(5, cand.shape[-1] - 1), axis=-1)[:, :5]
    overlap = [len(set(a) & set(b)) / 5 for a, b in zip(ids[:, :5].tolist(),
                                                         cand_top5.tolist(), strict=True)]
    cand_next = _next_token_logprob(log_softmax(np.nan_to_num(candidate.astype(np.float64))),
                                    tokens, ref.pad_token)
    has_next = ~np.isnan(ref.next_logprob)
    ppl_ref = float(np.exp(-ref.next_logprob[has_next].mean())) if has_next.any() else float("nan")
    ppl_cand = float(np.exp(-cand_next[has_next].mean())) if has_next.any() else float("nan")
    return {
        "positions": int(valid.sum()),
        "exact_reference": ref.exact,
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "kl_mean": float(kl.mean()),
        "kl_p99": float(np.percentile(kl, 99)),
        "kl_max": float(kl.max()),
        "top1_agreement": float((ids[:, 0] == cand.argmax(axis=-1)).mean()),
        "top5_overlap": float(np.mean(overlap)),
        "perplexity_reference": ppl_ref,
        "perplexity_candidate": ppl_cand,
        "perplexity_ratio": ppl_cand / ppl_ref,
        "nonfinite": nonfinite,
    }
