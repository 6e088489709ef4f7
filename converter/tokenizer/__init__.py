"""Grok-1's tokenizer: the original SentencePiece model, and Hugging Face files built from it
that give exactly its ids.

`tokenizer.model` is byte for byte the file of the GitHub repository xai-org/grok-1 (Apache-2.0;
see NOTICE beside it). `tokenizer.json` is built from it here, without the sentencepiece package:
the model's protobuf is read directly (its pieces, scores and types), and the HF tokenizer is a
BPE over those pieces with `ignore_merges`, merges ranked by the merged piece's score, byte
fallback, the 65 user-defined pieces as literal added tokens, the four control pieces as special
tokens, a metaspace pre-tokenizer that prepends "▁" to the first section only, and no BOS (the
original runners encode with none). `tokenizer_config.json` sets `split_special_tokens`, so
literal "[PAD]" text is text, as in SentencePiece.
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from converter.errors import MalformedFileError, UsageError
from converter.files.atomic import atomic_open
from converter.files.safe_read import read_capped

__all__ = ["GROK1_MODEL", "GROK1_VOCAB", "TOKENIZER_FILES", "Piece", "encoder", "read_pieces",
           "resolve_tokenizer", "tokenizer_json", "write_tokenizer"]

GROK1_MODEL = Path(__file__).with_name("tokenizer.model")
GROK1_VOCAB = 131072
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model")
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
# Pieces SentencePiece never makes from text: special tokens here.
_SPECIAL = (_UNKNOWN, _CONTROL)
_MAX_MODEL = 64 << 20
# Bounds on what is read from a model file (Grok-1's: 131072 pieces of at most 16 characters):
# building the merges takes time linear in pieces x length, memory linear in pieces.
MAX_PIECES = 1 << 19
MAX_PIECE_CHARS = 64


@dataclasses.dataclass(frozen=True)
class Piece:
    """One SentencePiece vocabulary entry."""

    text: str
    score: float
    kind: int


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _fields(data: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one protobuf message, in order, one at a time."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated field")
        yield field, wire, value


def read_pieces(path: Path) -> list[Piece]:
    """The pieces of a SentencePiece model file, in id order (ModelProto field 1)."""
    path = Path(path)
    data = read_capped(path, _MAX_MODEL, "SentencePiece model")
    try:
        pieces = []
        for field, wire, value in _fields(data):
            if field != 1 or wire != 2:
                continue
            text, score, kind = "", 0.0, _NORMAL
            for sub, sub_wire, sub_value in _fields(value):
                if sub == 1 and sub_wire == 2:
                    text = sub_value.decode("utf-8")
                elif sub == 2 and sub_wire == 5:
                    (score,) = struct.unpack("<f", sub_value)
                elif sub == 3 and sub_wire == 0:
                    kind = sub_value
            if len(text) > MAX_PIECE_CHARS:
                raise ValueError(f"piece {len(pieces)} is {len(text):,} characters long (at "
                                 f"most {MAX_PIECE_CHARS} are read)")
            pieces.append(Piece(text, score, kind))
            if len(pieces) > MAX_PIECES:
                raise ValueError(f"more than {MAX_PIECES:,} pieces")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise MalformedFileError(f"{path}: not a SentencePiece model ({exc})") from None
    if not pieces:
        raise MalformedFileError(f"{path}: not a SentencePiece model (no pieces)")
    return pieces


def _merges(pieces: list[Piece]) -> list[list[str]]:
    """BPE merges from the vocabulary: every split of a normal piece into two pieces of the
    vocabulary, ranked by the merged piece's score (best first), ties by the halves' ids."""
    ids = {p.text: i for i, p in enumerate(pieces)}
    found = []
    for piece in pieces:
        if piece.kind != _NORMAL:
            continue
        text = piece.text
        local = [(ids[text[:i]], ids[text[i:]]) for i in range(1, len(text))
                 if text[:i] in ids and text[i:] in ids]
        found += [(-piece.score, left, right) for left, right in sorted(local)]
    found.sort()
    return [[pieces[left].text, pieces[right].text] for _, left, right in found]


def _whole_special(pieces: list[Piece]) -> str:
    """A pattern matching the last character of a pre-token that is exactly a special piece's
    text (a literal "[PAD]" after a newline): split off, so that BPE's whole-word lookup cannot
    turn text into the special id, which SentencePiece never does."""
    return "|".join(f"(?<=^{re.escape(p.text[:-1])}){re.escape(p.text[-1])}$"
                    for p in pieces if p.kind in _SPECIAL and len(p.text) > 1)


def _added(index: int, piece: Piece) -> dict[str, Any]:
    return {"id": index, "content": piece.text, "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": False, "special": True}


@lru_cache(maxsize=4)
def _built(path: str, stamp: tuple[int, int]) -> str:
    pieces = read_pieces(Path(path))
    literal = sorted((p.text for p in pieces if p.kind == _USER_DEFINED and " " not in p.text),
                     key=lambda text: (-len(text), text))
    data = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [_added(i, p) for i, p in enumerate(pieces) if p.kind in _SPECIAL],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "|".join(re.escape(s) for s in literal)},
             "behavior": "Isolated", "invert": False},
            {"type": "Split", "pattern": {"Regex": _whole_special(pieces)},
             "behavior": "Isolated", "invert": False}]},
        "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": True, "byte_fallback": True, "ignore_merges": True,
                  "vocab": {p.text: i for i, p in enumerate(pieces)},
                  "merges": _merges(pieces)},
    }
    return json.dumps(data, ensure_ascii=False)


def tokenizer_json(model: Path = GROK1_MODEL) -> str:
    """tokenizer.json for a SentencePiece BPE model, as text (built once per file version)."""
    stat = Path(model).stat()
    return _built(str(Path(model).resolve()), (stat.st_size, stat.st_mtime_ns))


def _special(pieces: list[Piece], index: int) -> str | None:
    return pieces[index].text if index < len(pieces) else None


def write_tokenizer(dst: Path, model: Path = GROK1_MODEL, *, max_length: int = 8192
                    ) -> list[str]:
    """Write the Hugging Face tokenizer files (and the model itself) into `dst`, atomically;
    returns their names."""
    dst = Path(dst)
    pieces = read_pieces(model)
    specials = {"pad_token": _special(pieces, 0), "bos_token": _special(pieces, 1),
                "eos_token": _special(pieces, 2), "unk_token": _special(pieces, 3)}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length,
              "add_bos_token": False, "add_eos_token": False, "split_special_tokens": True,
              "clean_up_tokenization_spaces": False, "legacy": False, **specials}
    texts = {"tokenizer.json": tokenizer_json(model),
             "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
             "special_tokens_map.json": json.dumps(specials, indent=2) + "\n"}
    for name, text in texts.items():
        with atomic_open(dst / name) as f:
            f.write(text.encode())
    with atomic_open(dst / "tokenizer.model") as f:
        f.write(Path(model).read_bytes())
    return list(TOKENIZER_FILES)


def encoder(model: Path = GROK1_MODEL) -> Any:
    """A `tokenizers.Tokenizer` giving the model's ids, literal special-token text as text."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(tokenizer_json(model))
    tokenizer.encode_special_tokens = True
    return tokenizer


def resolve_tokenizer(choice: str | Path | None, vocab: int) -> Path | None:
    """The tokenizer model an output of a `vocab`-token model carries: by default Grok-1's when
    the vocabulary is Grok-1's (and none for toy vocabularies), `none` for none, or a given
    SentencePiece model whose vocabulary must be the model's."""
    if choice is None:
        return GROK1_MODEL if vocab == GROK1_VOCAB else None
    if str(choice) == "none":
        return None
    path = Path(choice)
    if not path.is_file():
        raise UsageError(f"{path}: no such tokenizer file (give a SentencePiece .model, or none)")
    found = len(read_pieces(path))
    if found != vocab:
        raise UsageError(f"{path}: a {found}-token tokenizer for a model of {vocab} tokens")
    return path
