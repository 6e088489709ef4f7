"""The token ids a verification or a logits run uses, chosen and checked in one place: ids from
a .npy file, text tokenized with Grok-1's tokenizer (documents padded with id 0, no BOS, as the
original runners encode), or, by default, the natural-text set this package ships for models
with Grok-1's vocabulary and deterministic random ids for toy vocabularies."""

from __future__ import annotations

import codecs
import dataclasses
import itertools
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from converter.errors import MalformedFileError, UsageError
from converter.files.safe_read import open_regular
from converter.model.config import Grok1Config
from converter.tokenizer import GROK1_VOCAB, encoder

__all__ = ["DEFAULT_TEXT", "MAX_TEXT_TOKENS", "TokenSource", "choose_tokens", "iter_documents",
           "load_tokens", "random_tokens", "read_documents", "text_tokens", "usable_tokens"]

# Written for this project (a few paragraphs in six languages) and public-domain excerpts (the
# Gettysburg Address, the Declaration of Independence, Austen, Melville, Carroll).
DEFAULT_TEXT = Path(__file__).parent / "data" / "natural-text.txt"


MAX_TEXT_TOKENS = 16384  # text tokens a run keeps by default (--max-tokens)
# Characters of a document handed to the tokenizer for each token kept: Grok-1's longest piece
# covers 16, so this much text always yields at least the tokens kept (with room at the cut).
CHARS_PER_TOKEN = 32
_PIECE = 1 << 16  # bytes read at a time


def iter_documents(path: Path, *, max_chars: int | None = None) -> Iterator[str]:
    """The documents of a UTF-8 text file, read incrementally (a piece of a line at a time):
    paragraphs separated by blank lines (nothing but spaces or tabs), each cut to `max_chars`
    characters, whatever the size of the file or of one paragraph. A file that is not a
    regular file, not UTF-8, or holds a NUL byte is refused by name."""
    path = Path(path)
    decoder = codecs.getincrementaldecoder("utf-8")()
    current: list[str] = []
    size, offset, line_start = 0, 0, True
    with open_regular(path, "text file") as f:
        while raw := f.readline(_PIECE):
            if (nul := raw.find(0)) >= 0:
                raise MalformedFileError(f"{path}: not text (a NUL byte at byte "
                                         f"{offset + nul})")
            try:
                text = decoder.decode(raw)
            except UnicodeDecodeError as exc:
                raise MalformedFileError(f"{path}: not UTF-8 text ({exc.reason} at byte "
                                         f"{offset + exc.start})") from None
            offset += len(raw)
            complete = raw.endswith(b"\n")
            if line_start and complete and _BLANK.fullmatch(text):
                if "".join(current).strip():
                    yield "".join(current).strip("\n")
                current, size = [], 0
            elif max_chars is None or size < max_chars:
                kept = text if max_chars is None else text[:max_chars - size]
                current.append(kept)
                size += len(kept)
            line_start = complete
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise MalformedFileError(f"{path}: not UTF-8 text (truncated character at the "
                                     "end)") from None
    if "".join(current).strip():
        yield "".join(current).strip("\n")


_BLANK = re.compile(r"[ \t]*\n")


def read_documents(path: Path, *, max_chars: int | None = None) -> list[str]:
    """Every document of a UTF-8 text file (see `iter_documents`)."""
    documents = list(iter_documents(path, max_chars=max_chars))
    if not documents:
        raise UsageError(f"{path}: holds no text")
    return documents


def text_tokens(documents: Iterable[str], config: Grok1Config, *, max_len: int,
                max_tokens: int | None = None) -> np.ndarray:
    """Documents tokenized with Grok-1's tokenizer (no BOS), each cut to `max_len` tokens,
    right-padded with the pad id into one [batch, seq] array. The tokenizer sees at most
    `max_len * CHARS_PER_TOKEN` characters of each document, and reading stops once
    `max_tokens` tokens are kept."""
    tokenizer = encoder()
    budget = max_len * CHARS_PER_TOKEN + 256
    ids: list[list[int]] = []
    kept = 0
    for document in documents:
        row = tokenizer.encode(document[:budget], add_special_tokens=False).ids[:max_len]
        if max_tokens is not None:
            row = row[:max_tokens - kept]
        if row:
            ids.append(row)
            kept += len(row)
        if max_tokens is not None and kept >= max_tokens:
            break
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


@dataclasses.dataclass(frozen=True)
class TokenSource:
    """Where a run's token ids come from: ids in a .npy file (`tokens_path`), or text (files
    and inline documents, `max_tokens` kept at most), each sequence cut to `seq_len`; without
    either, the shipped text's first `batch` documents (Grok-1's vocabulary) or `batch` random
    sequences drawn with `seed` (a toy vocabulary). `batch` is also how many sequences run
    together."""

    tokens_path: Path | None = None
    text_files: tuple[Path, ...] = ()
    texts: tuple[str, ...] = ()
    max_tokens: int = MAX_TEXT_TOKENS
    seq_len: int = 64
    batch: int = 4
    seed: int = 0

    @property
    def given(self) -> bool:
        """Whether ids or text were given (else the defaults above are chosen)."""
        return self.tokens_path is not None or bool(self.text_files or self.texts)


def choose_tokens(config: Grok1Config, source: TokenSource) -> tuple[np.ndarray, str]:
    """The tokens of a run and a description of where they come from (for reports). Given
    text is read in order, each document cut to `seq_len` tokens, until `max_tokens` tokens
    are kept; the shipped default text gives its first `batch` documents."""
    tokens_path, text_files, texts = source.tokens_path, source.text_files, source.texts
    batch, seq_len, seed, max_tokens = source.batch, source.seq_len, source.seed, source.max_tokens
    if tokens_path is not None and (text_files or texts):
        raise UsageError("give --tokens or text (--text-file, --text), not both")
    if tokens_path is not None:
        tokens = load_tokens(tokens_path, config)
        return tokens, f"token ids from {Path(tokens_path).name} ({_shape(tokens)})"
    for path in text_files:  # each one readable, even if the budget stops before it
        with open_regular(path, "text file"):
            pass
    default = not text_files and not texts and config.vocab == GROK1_VOCAB
    if default:
        text_files = (DEFAULT_TEXT,)
    if text_files or texts:
        max_chars = seq_len * CHARS_PER_TOKEN + 256
        documents: Iterable[str] = itertools.chain(
            *(_documents_of(f, max_chars) for f in text_files), texts)
        if default:
            documents = itertools.islice(documents, batch)
        tokens = usable_tokens(config, text_tokens(documents, config, max_len=seq_len,
                                                   max_tokens=max_tokens))
        names = [("the shipped natural-text set" if Path(f) == DEFAULT_TEXT else Path(f).name)
                 for f in text_files] + (["--text"] if texts else [])
        real = int((tokens != config.pad_token).sum())
        stopped = f", stopped at --max-tokens {max_tokens}" if real >= max_tokens else ""
        return tokens, (f"text: {', '.join(names)} ({len(tokens)} documents, {real} tokens, "
                        f"at most {seq_len} each{stopped})")
    tokens = random_tokens(config.vocab, batch=batch, seq_len=seq_len, seed=seed)
    return tokens, f"random token ids ({_shape(tokens)}, seed {seed})"


def _documents_of(path: Path, max_chars: int) -> Iterator[str]:
    """The documents of one --text-file; a file that holds none is refused."""
    found = False
    for document in iter_documents(path, max_chars=max_chars):
        found = True
        yield document
    if not found:
        raise UsageError(f"{path}: holds no text")


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
