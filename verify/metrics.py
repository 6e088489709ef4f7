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

from converter.errors import MalformedFileError
from converter.files.atomic import atomic_open

__all__ = ["MetricSums", "Positions", "ReferenceLogits", "compare_logits", "log_softmax",
           "next_ids"]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log_softmax over the last axis in float64."""
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


_FIRST = 5  # ids the metrics need in order (top-1 and top-5)


def next_ids(tokens: np.ndarray, pad: int) -> np.ndarray:
    """The id of the real token after each position, -1 where there is none (int64, like
    `tokens`)."""
    out = np.full(tokens.shape, -1, np.int64)
    nxt = tokens[:, 1:]
    out[:, :-1] = np.where(nxt != pad, nxt, -1)
    return out


def _picked(logprobs: np.ndarray, following: np.ndarray) -> np.ndarray:
    """log p(next token) at each position [P] of log-probs [P, V]; NaN where there is none."""
    picked = np.take_along_axis(logprobs, np.maximum(following, 0)[:, None], axis=-1)[:, 0]
    return np.where(following >= 0, picked, np.nan)


@dataclasses.dataclass
class Positions:
    """Reference distributions at P positions: the k most probable ids (k = vocab: all of
    them), their raw logits and log-probs, and the log-prob of the next real token."""

    ids: np.ndarray             # int32 [P, k], by decreasing probability (k = vocab: the
    #                             first five in order, the rest in any order)
    logits: np.ndarray          # float32 [P, k]
    logprobs: np.ndarray        # float64 [P, k]
    next_logprob: np.ndarray    # float64 [P], NaN where no real next token

    @classmethod
    def of(cls, logits: np.ndarray, following: np.ndarray, top_k: int | None = None
           ) -> Positions:
        """Summarise logits [P, V] whose next real tokens are `following` [P] (-1: none)."""
        vocab = logits.shape[-1]
        k = vocab if top_k is None else min(top_k, vocab)
        lp = log_softmax(logits)
        if k == vocab:  # every id, the most probable five first and in order (O(vocab))
            ids = np.argpartition(-lp, min(_FIRST, vocab) - 1, axis=-1)
            head = ids[:, :_FIRST]
            order = np.argsort(-np.take_along_axis(lp, head, axis=-1), axis=-1, kind="stable")
            ids[:, :_FIRST] = np.take_along_axis(head, order, axis=-1)
        else:
            part = np.argpartition(-lp, k - 1, axis=-1)[..., :k]
            order = np.argsort(-np.take_along_axis(lp, part, axis=-1), axis=-1, kind="stable")
            ids = np.take_along_axis(part, order, axis=-1)
        return cls(ids=ids.astype(np.int32),
                   logits=np.take_along_axis(logits, ids, axis=-1).astype(np.float32),
                   logprobs=np.take_along_axis(lp, ids, axis=-1),
                   next_logprob=_picked(lp, following))

    def truncated(self, k: int) -> Positions:
        """The same positions keeping only the k most probable tokens."""
        return Positions(self.ids[:, :k], self.logits[:, :k], self.logprobs[:, :k],
                         self.next_logprob)


@dataclasses.dataclass
class MetricSums:
    """What every metric needs, per position, for some positions of a run: small (a few
    numbers a position, whatever the vocabulary), and parts of one run concatenate."""

    kl: np.ndarray          # float64 [P]
    diff_sum: np.ndarray    # float64 [P], sum of |logit difference| over the held ids
    diff_max: np.ndarray    # float64 [P]
    top1: np.ndarray        # bool [P]
    overlap: np.ndarray     # float64 [P], top-5 overlap
    nll_ref: np.ndarray     # float64 [N], positions with a real next token
    nll_cand: np.ndarray    # float64 [N]
    nonfinite: int
    held: int               # ids compared per position (k)
    exact: bool

    @classmethod
    def of(cls, ref: Positions, candidate: np.ndarray, following: np.ndarray, *,
           exact: bool) -> MetricSums:
        """Compare candidate logits [P, V] with the reference at the same P positions."""
        nonfinite = int((~np.isfinite(candidate)).sum())
        cand = np.nan_to_num(candidate.astype(np.float64), nan=0.0, posinf=1e30, neginf=-1e30)
        lq = log_softmax(cand)
        ids = ref.ids.astype(np.int64)
        lp = ref.logprobs.astype(np.float64)
        lq_top = np.take_along_axis(lq, ids, axis=-1)
        p = np.exp(lp)
        kl = (p * (lp - lq_top)).sum(axis=-1)
        if not exact:
            tail_p = np.clip(1 - p.sum(axis=-1), 1e-300, None)
            tail_q = np.clip(1 - np.exp(lq_top).sum(axis=-1), 1e-300, None)
            kl = kl + tail_p * (np.log(tail_p) - np.log(tail_q))
        diff = np.abs(np.take_along_axis(cand, ids, axis=-1) - ref.logits)
        cand_top5 = np.argpartition(-cand, min(5, cand.shape[-1] - 1), axis=-1)[:, :5]
        overlap = [len(set(a) & set(b)) / 5 for a, b in zip(ids[:, :5].tolist(),
                                                             cand_top5.tolist(), strict=True)]
        has_next = following >= 0
        return cls(kl=np.maximum(kl, 0.0), diff_sum=diff.sum(axis=-1),
                   diff_max=diff.max(axis=-1, initial=0.0),
                   top1=ids[:, 0] == cand.argmax(axis=-1), overlap=np.array(overlap),
                   nll_ref=-ref.next_logprob[has_next],
                   nll_cand=-_picked(lq, following)[has_next], nonfinite=nonfinite,
                   held=ids.shape[-1], exact=exact)

    @classmethod
    def concat(cls, parts: list[MetricSums]) -> MetricSums:
        """The sums of several parts of one run (in order)."""
        arrays = {f.name: np.concatenate([getattr(p, f.name) for p in parts])
                  for f in dataclasses.fields(cls) if f.name not in (
                      "nonfinite", "held", "exact")}
        return cls(**arrays, nonfinite=sum(p.nonfinite for p in parts), held=parts[0].held,
                   exact=parts[0].exact)

    def metrics(self) -> dict[str, Any]:
        """Every metric over the positions held."""
        ppl_ref = float(np.exp(self.nll_ref.mean())) if self.nll_ref.size else float("nan")
        ppl_cand = float(np.exp(self.nll_cand.mean())) if self.nll_cand.size else float("nan")
        return {
            "positions": int(self.kl.size),
            "exact_reference": self.exact,
            "max_abs_diff": float(self.diff_max.max()),
            "mean_abs_diff": float(self.diff_sum.sum() / (self.kl.size * self.held)),
            "kl_mean": float(self.kl.mean()),
            "kl_p99": float(np.percentile(self.kl, 99)),
            "kl_max": float(self.kl.max()),
            "top1_agreement": float(self.top1.mean()),
            "top5_overlap": float(self.overlap.mean()),
            "perplexity_reference": ppl_ref,
            "perplexity_candidate": ppl_cand,
            "perplexity_ratio": ppl_cand / ppl_ref,
            "nonfinite": self.nonfinite,
        }


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
        tokens = np.asarray(tokens, np.int64)
        return cls.from_positions(Positions.of(
            logits.reshape(-1, logits.shape[-1]), next_ids(tokens, pad_token).reshape(-1),
            top_k), tokens, vocab=logits.shape[-1], pad_token=pad_token)

    @classmethod
    def from_positions(cls, positions: Positions, tokens: np.ndarray, *, vocab: int,
                       pad_token: int) -> ReferenceLogits:
        """Positions of every token of `tokens` [B, T] (in order) as a reference."""
        shape = tokens.shape
        return cls(tokens=np.asarray(tokens, np.int64),
                   topk_ids=positions.ids.reshape(*shape, -1),
                   topk_logits=positions.logits.reshape(*shape, -1),
                   topk_logprobs=positions.logprobs.reshape(*shape, -1),
                   next_logprob=positions.next_logprob.reshape(shape), vocab=vocab,
                   pad_token=pad_token)

    def at(self, flat: np.ndarray) -> Positions:
        """The reference at some positions, given as indices into the flattened [B * T]."""
        k = self.topk_ids.shape[-1]
        return Positions(self.topk_ids.reshape(-1, k)[flat],
                         self.topk_logits.reshape(-1, k)[flat],
                         self.topk_logprobs.reshape(-1, k)[flat],
                         self.next_logprob.reshape(-1)[flat])

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
    """Every metric of the candidate logits [B, T, V] against the reference, over the real
    (non-pad) positions."""
    flat = np.flatnonzero(ref.tokens.reshape(-1) != ref.pad_token)
    following = next_ids(ref.tokens, ref.pad_token).reshape(-1)[flat]
    cand = candidate.reshape(-1, candidate.shape[-1])[flat]
    return MetricSums.of(ref.at(flat), cand, following, exact=ref.exact).metrics()
