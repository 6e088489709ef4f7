"""The token ids a verification or a logits run uses: from a .npy file, or deterministic
random ids, checked against the model in one place."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from converter.config import Grok1Config
from converter.errors import MalformedFileError, UsageError

__all__ = ["load_tokens", "random_tokens", "usable_tokens"]


def load_tokens(path: Path, config: Grok1Config) -> np.ndarray:
    """A [batch, seq] integer array of token ids from a .npy file, checked against the model:
    ids in its vocabulary, at least one real (non-pad) token, no longer than its context."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path}: --tokens names a folder; give a .npy file")
    try:
        tokens = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such tokens file") from None
    except (OSError, ValueError, EOFError) as exc:
        reason = " ".join(str(exc).split()) or "empty"
        raise MalformedFileError(f"{path}: cannot read tokens ({reason}); expected a .npy int "
                                 "array [batch, seq]") from None
    if not isinstance(tokens, np.ndarray):
        tokens.close()
        raise MalformedFileError(f"{path}: an .npz archive; expected a .npy int array "
                                 "[batch, seq]")
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer) or not tokens.size:
        raise MalformedFileError(f"{path}: tokens must be a non-empty integer array "
                                 f"[batch, seq], found {tokens.dtype}{list(tokens.shape)}")
    if tokens.min() < 0 or tokens.max() >= config.vocab:
        raise MalformedFileError(f"{path}: token ids must lie in [0, {config.vocab}), found "
                                 f"[{tokens.min()}, {tokens.max()}]")
    return usable_tokens(config, tokens.astype(np.int64))


def random_tokens(vocab: int, *, batch: int, seq_len: int, seed: int) -> np.ndarray:
    """Deterministic token ids in [3, vocab) with BOS (1) first; no padding."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, vocab, size=(batch, seq_len), dtype=np.int64)
    tokens[:, 0] = 1
    return tokens


def usable_tokens(config: Grok1Config, tokens: np.ndarray) -> np.ndarray:
    """`tokens` if the model can run them: within its context and vocabulary, not all padding."""
    if tokens.shape[1] > config.max_seq_len:
        raise UsageError(f"sequences of {tokens.shape[1]} tokens exceed the model's context of "
                         f"{config.max_seq_len}")
    if int(tokens.max()) >= config.vocab:
        raise UsageError(f"token id {int(tokens.max())} is outside the model's "
                         f"{config.vocab}-token vocabulary")
    if not (tokens != config.pad_token).any():
        raise UsageError(f"every token is padding (id {config.pad_token}): nothing to run")
    return tokens
