"""The token ids a verification or a logits run uses, chosen and checked in one place: ids from
a .npy file, text tokenized with Grok-1's tokenizer (documents padded with id 0, no BOS, as the
original runners encode), or, by default, the natural-text set this package ships for models
with Grok-1's vocabulary and deterministic random ids for toy vocabularies."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from converter.config import Grok1Config
from converter.errors import MalformedFileError, UsageError
from converter.tokenizer import GROK1_VOCAB, encoder

__all__ = ["DEFAULT_TEXT", "choose_tokens", "load_tokens", "random_tokens", "read_documents",
           "text_tokens", "usable_tokens"]

# Written for this project (a few paragraphs in six languages) and public-domain excerpts (the
# Gettysburg Address, the Declaration of Independence, Austen, Melville, Carroll).
DEFAULT_TEXT = Path(__file__).parent / "data" / "natural-text.txt"


def read_documents(path: Path) -> list[str]:
    """The documents of a UTF-8 text file: paragraphs separated by blank lines."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path}: --text-file names a folder; give a text file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such text file") from None
    except UnicodeDecodeError as exc:
        raise MalformedFileError(f"{path}: not UTF-8 text ({exc.reason} at byte "
                                 f"{exc.start})") from None
    documents = [d.strip("\n") for d in re.split(r"\n[ \t]*\n", text) if d.strip()]
    if not documents:
        raise UsageError(f"{path}: holds no text")
    return documents


def text_tokens(documents: list[str], config: Grok1Config, *, max_len: int) -> np.ndarray:
    """Documents tokenized with Grok-1's tokenizer (no BOS), each cut to `max_len` tokens,
    right-padded with the pad id into one [batch, seq] array."""
    tokenizer = encoder()
    ids = [e.ids[:max_len] for e in tokenizer.encode_batch(documents, add_special_tokens=False)]
    ids = [row for row in ids if row]
    if not ids:
        raise UsageError("the text encodes to no tokens")
    top = max(max(row) for row in ids)
    if top >= config.vocab:
        raise UsageError(f"the text's token ids reach {top}, but the model's vocabulary has "
                         f"{config.vocab} tokens (text needs Grok-1's {GROK1_VOCAB}-token "
                         "vocabulary; give --tokens for this model)")
    tokens = np.full((len(ids), max(len(row) for row in ids)), config.pad_token, np.int64)
    for index, row in enumerate(ids):
        tokens[index, :len(row)] = row
    return tokens


def choose_tokens(config: Grok1Config, *, tokens_path: Path | None = None,
                  text_files: tuple[Path, ...] = (), texts: tuple[str, ...] = (),
                  batch: int = 4, seq_len: int = 64, seed: int = 0) -> tuple[np.ndarray, str]:
    """The tokens of a run and a description of where they come from (for reports). Given
    text is used whole (each document cut to `seq_len` tokens); the shipped default text gives
    its first `batch` documents."""
    if tokens_path is not None and (text_files or texts):
        raise UsageError("give --tokens or text (--text-file, --text), not both")
    if tokens_path is not None:
        tokens = load_tokens(tokens_path, config)
        return tokens, f"token ids from {Path(tokens_path).name} ({_shape(tokens)})"
    default = not text_files and not texts and config.vocab == GROK1_VOCAB
    if default:
        text_files = (DEFAULT_TEXT,)
    if text_files or texts:
        documents = [d for f in text_files for d in read_documents(f)] + list(texts)
        if default:
            documents = documents[:batch]
        tokens = usable_tokens(config, text_tokens(documents, config, max_len=seq_len))
        names = [("the shipped natural-text set" if Path(f) == DEFAULT_TEXT else Path(f).name)
                 for f in text_files] + (["--text"] if texts else [])
        real = int((tokens != config.pad_token).sum())
        return tokens, (f"text: {', '.join(names)} ({len(tokens)} documents, {real} tokens, "
                        f"at most {seq_len} each)")
    tokens = random_tokens(config.vocab, batch=batch, seq_len=seq_len, seed=seed)
    return tokens, f"random token ids ({_shape(tokens)}, seed {seed})"


def _shape(tokens: np.ndarray) -> str:
    return f"{tokens.shape[0]} x {tokens.shape[1]}"


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
