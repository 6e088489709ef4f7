"""Grok-1's tokenizer: our tokenizer.json (through `tokenizers` and transformers' AutoTokenizer)
gives exactly SentencePiece's ids on natural and adversarial text, decodes back, adds no BOS;
`grok1 tokenizer` writes it; bad models are refused."""

import hashlib
import inspect
import json
import random
import re

import pytest

from converter.errors import MalformedFileError, UsageError
from converter.tokenizer import GROK1_MODEL, encoder, read_pieces, resolve_tokenizer
from tests.conftest import bad_input
from verify.tokens import DEFAULT_TEXT, read_documents

spm = pytest.importorskip("sentencepiece")
transformers = pytest.importorskip("transformers")

PROMPT = "The answer to life the universe and everything is of course"
PROMPT_IDS = [422, 3033, 356, 1180, 333, 9072, 360, 2175, 391, 359, 1805]


def natural_corpus():
    """Prose in six languages (documents, sentences, words) and Python source lines."""
    documents = read_documents(DEFAULT_TEXT)
    sentences = [s for d in documents for s in re.split(r"(?<=[.!?。])\s*", d) if s]
    words = DEFAULT_TEXT.read_text().split()
    modules = (json, random, inspect, re, hashlib)
    code = [line for m in modules for line in inspect.getsource(m).splitlines() if line.strip()]
    return documents + sentences + words[:400] + code[:1200]


PARTS = ["  ", "   ", "\t", "\t\t", "\r\n", "\n", "\n\n\n", "2024-11-23", "3.14159", "007",
         "12:45", "😀", "👩\u200d💻", "漢字かな", "안녕하세요", "café", "naïve", "Ærø", "\u200b",
         "\u00a0", "\u3000", "[PAD]", "[BOS]", "[EOS]", "[UNK]", "</s>", "<s>", "<|separator|>",
         "<|mask|>", "<|control12|>", "<0x41>", "\u2581", "\u2581\u2581", "ﬁ", "ẞ", "\x00",
         "\x7f", "word", "The", " the", "a", "1", "-", "\u2019", "\u201cquoted\u201d", "def f(x):",
         "    return x", "e\u0301", "🇫🇷", "¯\\_(ツ)_/¯"]


def adversarial_corpus(count=1500):
    rng = random.Random(1234)
    return ["".join(rng.choice(PARTS) for _ in range(rng.randint(1, 9))) for _ in range(count)]


@pytest.fixture(scope="module")
def sentencepiece():
    return spm.SentencePieceProcessor(model_file=str(GROK1_MODEL))


@pytest.fixture(scope="module")
def auto(tmp_path_factory):
    from click.testing import CliRunner

    from grok1.cli import main

    folder = tmp_path_factory.mktemp("tokenizer")
    done = CliRunner().invoke(main, ["tokenizer", str(folder)])
    assert done.exit_code == 0, done.output
    return transformers.AutoTokenizer.from_pretrained(folder), folder


def mismatches(texts, sentencepiece, encode):
    return [t for t in texts if encode(t) != sentencepiece.encode(t)]


def test_corpus_is_large(sentencepiece):
    assert len(natural_corpus()) + len(adversarial_corpus()) >= 2000


@pytest.mark.parametrize("corpus", ["natural", "adversarial"])
def test_tokenizers_gives_sentencepiece_ids(sentencepiece, corpus):
    texts = natural_corpus() if corpus == "natural" else adversarial_corpus()
    tokenizer = encoder()
    bad = mismatches(texts, sentencepiece,
                     lambda t: tokenizer.encode(t, add_special_tokens=False).ids)
    assert bad == [], f"{len(bad)} of {len(texts)} differ, e.g. {bad[:3]!r}"


@pytest.mark.parametrize("corpus", ["natural", "adversarial"])
def test_auto_tokenizer_gives_sentencepiece_ids_and_decodes_back(sentencepiece, auto, corpus):
    tokenizer, _ = auto
    texts = natural_corpus() if corpus == "natural" else adversarial_corpus(500)
    bad = mismatches(texts, sentencepiece, lambda t: tokenizer(t)["input_ids"])
    assert bad == [], f"{len(bad)} of {len(texts)} differ, e.g. {bad[:3]!r}"
    if corpus == "natural":
        undecoded = [t for t in texts if tokenizer.decode(tokenizer(t)["input_ids"]) != t]
        assert undecoded == []


def test_specials_no_bos_and_the_original_prompt(auto):
    tokenizer, folder = auto
    assert tokenizer(PROMPT)["input_ids"] == PROMPT_IDS  # as the release's run.py encodes it
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id,
            tokenizer.unk_token_id) == (0, 1, 2, 3)
    assert len(tokenizer) == 131072
    assert tokenizer("[PAD]")["input_ids"] != [0]  # literal special-token text is text
    assert hashlib.sha256((folder / "tokenizer.model").read_bytes()).hexdigest() == (
        "5c69d7cbad192fa2c9d14e2a77fbfdc11597c68907b043ddb0260e3d28eddd7f")
    assert {p.name for p in folder.iterdir()} == {"tokenizer.json", "tokenizer_config.json",
                                                  "special_tokens_map.json", "tokenizer.model"}


def test_tokenizer_command_refuses_to_replace_without_overwrite(auto):
    _, folder = auto
    assert "--overwrite" in bad_input("tokenizer", folder)
    assert "is a file" in bad_input("tokenizer", folder / "tokenizer.json")


def test_bad_models_are_refused(tmp_path):
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff")
    with pytest.raises(MalformedFileError, match=r"junk\.model: not a SentencePiece model"):
        read_pieces(junk)
    with pytest.raises(UsageError, match="a 131072-token tokenizer for a model of 256 tokens"):
        resolve_tokenizer(GROK1_MODEL, 256)
    assert resolve_tokenizer(None, 256) is None and resolve_tokenizer("none", 131072) is None
    assert resolve_tokenizer(None, 131072) == GROK1_MODEL
