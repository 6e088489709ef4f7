"""Text in and tokenizers out: outputs of a real-vocabulary model carry Grok-1's tokenizer,
`logits` and `verify` take text and say which, toy vocabularies refuse text in one line."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from converter.tokenizer import TOKENIZER_FILES, encoder
from grok1.cli import main
from tests.conftest import bad_input
from verify.tokens import DEFAULT_TEXT, read_documents

transformers = pytest.importorskip("transformers")


def ok(*args):
    result = CliRunner().invoke(main, [*map(str, args)])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("command", [["convert", "--to", "hf", "--dtype", "f32"],
                                     ["convert", "--to", "torch", "--dtype", "bf16"],
                                     ["quantize", "--scheme", "int8"]], ids=" ".join)
def test_real_vocabulary_outputs_carry_the_tokenizer(real_vocab_ckpt, tmp_path, command):
    verb, *options = command
    ok(verb, real_vocab_ckpt, tmp_path / "out", *options, "--quiet")
    assert all((tmp_path / "out" / name).is_file() for name in TOKENIZER_FILES)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tokenizer("Hello world")["input_ids"] == encoder().encode("Hello world").ids
    ok(verb, real_vocab_ckpt, tmp_path / "bare", *options, "--quiet", "--tokenizer", "none")
    assert not any((tmp_path / "bare" / name).exists() for name in TOKENIZER_FILES)


def test_toy_vocabularies_carry_none_and_refuse_a_mismatched_one(upstream, tmp_path):
    ok("convert", upstream, tmp_path / "out", "--quiet")
    assert not (tmp_path / "out" / "tokenizer.json").exists()
    from converter.tokenizer import GROK1_MODEL
    assert "131072-token tokenizer for a model of 256" in bad_input(
        "convert", upstream, tmp_path / "x", "--tokenizer", GROK1_MODEL)


def test_verify_on_text_reports_the_text(real_vocab_ckpt, tmp_path):
    ok("convert", real_vocab_ckpt, tmp_path / "hf", "--dtype", "f32", "--quiet")
    essay = tmp_path / "essay.txt"
    essay.write_text("First paragraph, about rivers and the sea.\n\nSecond one: 42 apples.\n")
    report = tmp_path / "r.json"
    ok("verify", real_vocab_ckpt, tmp_path / "hf", "--text-file", essay, "--text",
       "An inline document.", "--seq-len", "12", "--json", report)
    data = json.loads(report.read_text())
    assert data["passed"] and data["tokens"].startswith("text: essay.txt, --text (3 documents")
    assert data["metrics"]["positions"] == sum(
        min(len(encoder().encode(d, add_special_tokens=False).ids), 12)
        for d in ["First paragraph, about rivers and the sea.", "Second one: 42 apples.",
                  "An inline document."])
    default = tmp_path / "d.json"
    ok("verify", real_vocab_ckpt, tmp_path / "hf", "--batch", "2", "--seq-len", "16",
       "--json", default, "--markdown", tmp_path / "d.md")
    assert json.loads(default.read_text())["tokens"].startswith(
        "text: the shipped natural-text set (2 documents")
    assert "Evaluated on text: the shipped natural-text set" in (tmp_path / "d.md").read_text()


def test_logits_on_text_writes_the_ids_beside(real_vocab_ckpt, tmp_path):
    out = tmp_path / "l.npy"
    ok("logits", real_vocab_ckpt, "--text", "The answer to life", "--text", "Hi", "--out", out)
    tokens = np.load(f"{out}.tokens.npy")
    (hi,) = encoder().encode("Hi", add_special_tokens=False).ids
    assert tokens.tolist() == [[422, 3033, 356, 1180], [hi, 0, 0, 0]]  # no BOS, padded with 0
    assert np.load(out).shape == (2, 4, 131072)


def test_text_on_a_toy_vocabulary_is_one_line(upstream, tmp_path):
    line = bad_input("verify", upstream, upstream, "--text", "Hello there, world")
    assert "vocabulary has 256 tokens" in line
    assert "random token ids" in json.loads(
        ok("verify", upstream, upstream, "--seq-len", "8", "--json", "-").output)["tokens"]


def test_text_files_bad_input(real_vocab_ckpt, tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    assert "not UTF-8" in bad_input("verify", real_vocab_ckpt, real_vocab_ckpt, "--text-file",
                                    tmp_path / "latin1.txt")
    (tmp_path / "blank.txt").write_text("\n \n\n")
    assert "holds no text" in bad_input("verify", real_vocab_ckpt, real_vocab_ckpt,
                                        "--text-file", tmp_path / "blank.txt")
    np.save(tmp_path / "t.npy", np.ones((1, 4), np.int64))
    assert "not both" in bad_input("verify", real_vocab_ckpt, real_vocab_ckpt, "--tokens",
                                   tmp_path / "t.npy", "--text", "x")


def test_the_shipped_text_is_natural_and_sizable():
    documents = read_documents(DEFAULT_TEXT)
    assert len(documents) >= 20 and all(len(d) > 40 for d in documents)


def test_pipeline_verifies_on_text_and_publishes_the_tokenizer(real_vocab_ckpt, tmp_path):
    import shutil

    from tests.test_hub import Server, grok1

    root = tmp_path / "hub"
    shutil.copytree(real_vocab_ckpt, root / "xai-org" / "grok-1")
    server = Server(root, tmp_path)
    try:
        done = grok1(server, tmp_path, "pipeline", "--to", "hf-f32", "--work-dir",
                     tmp_path / "work", "--upload", "me/grok-1-text", "--batch", "2",
                     "--seq-len", "16", check=0)
    finally:
        server.stop()
    assert "tokens: text: the shipped natural-text set" in done.stdout
    repo = root / "me" / "grok-1-text"
    assert all((repo / name).is_file() for name in TOKENIZER_FILES)
    card = (repo / "README.md").read_text()
    assert "- Tokenizer: Grok-1's SentencePiece tokenizer" in card
    assert "Evaluated on text: the shipped natural-text set (2 documents" in card
