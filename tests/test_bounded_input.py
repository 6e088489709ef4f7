"""Input that used to cost memory in proportion to its size, hang, or end in exit 70: every case
is one line and exit 2, or a run whose memory does not grow with the input."""

import json
import os
import shutil
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from click.testing import CliRunner

from converter.errors import MalformedFileError
from converter.files.safe_read import read_json
from grok1.cli import main
from tests.conftest import bad_input
from verify.tokens import DEFAULT_TEXT, iter_documents, read_documents


def ok(*args):
    result = CliRunner().invoke(main, [*map(str, args), "--quiet"])
    assert result.exit_code == 0, result.output
    return result


def peak_rss_mb(*args):
    """Run `grok1 ARGS` in a child; its exit code and peak RSS in MB."""
    probe = ("import resource, subprocess, sys; "
             "code = subprocess.run([sys.executable, '-m', 'grok1', *sys.argv[1:]], "
             "stdout=subprocess.DEVNULL).returncode; "
             "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", probe, *map(str, args)], capture_output=True,
                          text=True, check=True)
    code, kb = done.stdout.split()
    return int(code), int(kb) / 1024


# ---- text --------------------------------------------------------------------------------

@pytest.mark.parametrize(("content", "message"), [
    (b"hello\n\nworld\0\n", "not text (a NUL byte at byte 12)"),
    (b"caf\xc3\xa9 \xff\xfe", "not UTF-8 text (invalid start byte at byte 6)"),
    (b"ends mid-character \xe2\x82", "truncated character at the end"),
    (b"\n \n\t\n", "holds no text"),
])
def test_text_that_is_not_text_is_refused(real_vocab_ckpt, tmp_path, content, message):
    path = tmp_path / "input.txt"
    path.write_bytes(content)
    line = bad_input("logits", real_vocab_ckpt, "--text-file", path, "--out", tmp_path / "l.npy")
    assert message in line and "input.txt" in line


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_a_device_is_not_a_text_file(real_vocab_ckpt, tmp_path, device):
    line = bad_input("verify", real_vocab_ckpt, real_vocab_ckpt, "--text-file", device)
    assert f"{device}: not a regular file" in line


def test_a_fifo_is_refused_without_hanging(real_vocab_ckpt, tmp_path):
    os.mkfifo(tmp_path / "fifo")
    line = bad_input("logits", real_vocab_ckpt, "--text-file", tmp_path / "fifo", "--out",
                     tmp_path / "l.npy")
    assert "not a regular file" in line


def test_documents_are_read_incrementally_and_cut(tmp_path):
    path = tmp_path / "long.txt"
    with open(path, "w") as f:
        f.write("first paragraph\n  \t\n")
        f.write("x" * (10 << 20) + "\n\nthird\n")
    tracemalloc.start()
    documents = list(iter_documents(path, max_chars=1000))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert documents == ["first paragraph", "x" * 1000, "third"]
    assert peak < 2 << 20, peak
    assert read_documents(DEFAULT_TEXT) == list(iter_documents(DEFAULT_TEXT))


def test_cutting_a_document_keeps_the_ids_of_its_first_tokens():
    from converter.tokenizer import encoder
    from verify.tokens import CHARS_PER_TOKEN

    whole = " ".join(read_documents(DEFAULT_TEXT))
    tokenizer = encoder()
    for seq_len in (8, 64, 300):
        cut = whole[:seq_len * CHARS_PER_TOKEN + 256]
        assert (tokenizer.encode(cut, add_special_tokens=False).ids[:seq_len]
                == tokenizer.encode(whole, add_special_tokens=False).ids[:seq_len])


def test_a_huge_paragraph_costs_what_its_tokens_need(real_vocab_ckpt, tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("A short paragraph of text.\n")
    huge = tmp_path / "huge.txt"
    huge.write_text("word " * (4 << 20) + "\n")  # one 20 MB paragraph
    code, base = peak_rss_mb("logits", real_vocab_ckpt, "--text-file", small, "--seq-len",
                             "64", "--out", tmp_path / "a.npy")
    assert code == 0
    code, peak = peak_rss_mb("logits", real_vocab_ckpt, "--text-file", huge, "--seq-len", "64",
                             "--out", tmp_path / "b.npy")
    assert code == 0 and peak - base < 60, (base, peak)
    assert np.load(tmp_path / "b.npy", mmap_mode="r").shape == (1, 64, 131072)


def test_verify_memory_does_not_grow_with_the_text(real_vocab_ckpt, tmp_path):
    """Each position's logits are reduced before the next chunk: 200 paragraphs (3,200
    positions, 1.7 GB of float32 logits per model, about 46 GB in the old float64 reduction)
    cost what 4 do."""
    sentences = read_documents(DEFAULT_TEXT)
    few, many = tmp_path / "few.txt", tmp_path / "many.txt"
    few.write_text("\n\n".join(sentences[:4]) + "\n")
    many.write_text("\n\n".join(sentences[i % len(sentences)] for i in range(200)) + "\n")
    args = ["verify", real_vocab_ckpt, real_vocab_ckpt, "--seq-len", "16", "--no-check-tensors"]
    code, base = peak_rss_mb(*args, "--text-file", few)
    assert code == 0
    code, peak = peak_rss_mb(*args, "--text-file", many)
    assert code == 0 and peak - base < 150, (base, peak)


def test_text_stops_at_max_tokens(real_vocab_ckpt, tmp_path):
    many = tmp_path / "many.txt"
    many.write_text("\n\n".join(["Some words in a paragraph."] * 1000) + "\n")
    result = CliRunner().invoke(main, ["verify", str(real_vocab_ckpt), str(real_vocab_ckpt),
                                       "--text-file", str(many), "--max-tokens", "40",
                                       "--no-check-tensors", "--json", "-"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["metrics"]["positions"] == 40
    assert "stopped at --max-tokens 40" in report["tokens"]


# ---- JSON sidecars -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_out(tiny_ckpt, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "hf"
    ok("convert", tiny_ckpt, folder, "--dtype", "f32", "--shard-size", "4MB")
    return folder


HOSTILE_JSON = {
    "deeply nested": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "a 5,000-digit integer": ('{"a": ' + "9" * 5000 + "}", "unreadable JSON"),
    "not JSON": ("{not json", "not valid JSON"),
}


@pytest.mark.parametrize("name", ["config.json", "model.safetensors.index.json",
                                  "grok1-manifest.json"])
@pytest.mark.parametrize("case", list(HOSTILE_JSON))
def test_hostile_json_in_any_sidecar(hf_out, tmp_path, name, case):
    folder = tmp_path / "hf"
    shutil.copytree(hf_out, folder)
    text, message = HOSTILE_JSON[case]
    (folder / name).write_text(text)
    if name == "grok1-manifest.json":
        line = bad_input("convert", hf_out, folder, "--dtype", "f32", "--shard-size", "4MB",
                         "--resume")
    else:
        line = bad_input("inspect", folder)
    assert name in line and message in line


@pytest.mark.parametrize("kind", ["fifo", "link to /dev/zero", "huge"])
def test_config_json_must_be_a_small_regular_file(hf_out, tmp_path, kind):
    folder = tmp_path / "hf"
    shutil.copytree(hf_out, folder)
    config = folder / "config.json"
    config.unlink()
    if kind == "fifo":
        os.mkfifo(config)
    elif kind == "huge":
        with open(config, "wb") as f:
            f.truncate(65 << 20)
    else:
        config.symlink_to("/dev/zero")
    line = bad_input("convert", folder, tmp_path / "out")
    assert "config.json" in line
    assert ("larger than" in line) if kind == "huge" else ("not a regular file" in line)


def test_read_json_bounds_what_it_reads(tmp_path):
    path = tmp_path / "big.json"
    path.write_text("[" + "1," * 600 + "1]")
    tracemalloc.start()
    with pytest.raises(MalformedFileError, match="larger than 1,000 bytes"):
        read_json(path, limit=1000)
    assert tracemalloc.get_traced_memory()[1] < 10_000
    tracemalloc.stop()


def test_a_gguf_config_key_nested_too_deeply(tmp_path, small_ckpt, monkeypatch):
    from converter.layouts import gguf as layout

    original = layout.metadata

    def nested(*args):
        keys = original(*args)
        keys["grok1.config"] = "[" * 100_000 + "]" * 100_000
        return keys

    monkeypatch.setattr(layout, "metadata", nested)
    ok("convert", small_ckpt, tmp_path / "g", "--to", "gguf", "--dtype", "f32")
    monkeypatch.undo()
    assert "grok1.config: JSON nested too deeply" in bad_input("inspect", tmp_path / "g")


def test_pipeline_json_without_a_commit(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "pipeline.json").write_text(json.dumps({
        "settings": {}, "steps": {"download": {"done": True}}}))
    line = bad_input("pipeline", "--to", "int8", "--work-dir", work, "--endpoint",
                     "http://127.0.0.1:9")
    assert "pipeline.json" in line and "records no commit" in line


# ---- quantization configs and tokenizer models -------------------------------------------

@pytest.fixture(scope="module")
def fp8_block(small_ckpt, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fp8") / "fp8-block"
    ok("quantize", small_ckpt, folder, "--scheme", "fp8-block")
    return folder


def _edit_config(src, dst, change):
    shutil.copytree(src, dst)
    (dst / "grok1-manifest.json").unlink()
    config = json.loads((dst / "config.json").read_text())
    change(config)
    (dst / "config.json").write_text(json.dumps(config))


def test_an_fp8_block_larger_than_its_matrix_is_refused(fp8_block, tmp_path):
    def huge(config):
        config["quantization_config"]["config_groups"]["group_0"]["weights"][
            "block_structure"] = [1, 4194304]

    _edit_config(fp8_block, tmp_path / "bad", huge)
    tracemalloc.start()
    line = bad_input("verify", tmp_path / "bad", tmp_path / "bad")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "block_structure [1, 4194304] is larger than" in line
    assert peak < 200 << 20, peak


def test_a_bf16_weight_under_an_fp8_config_is_refused(small_ckpt, tmp_path):
    ok("convert", small_ckpt, tmp_path / "bf16", "--dtype", "bf16")
    fp8 = tmp_path / "fp8"
    ok("quantize", small_ckpt, fp8, "--scheme", "fp8")
    config = json.loads((fp8 / "config.json").read_text())

    def as_fp8(c):
        c["quantization_config"] = config["quantization_config"]

    _edit_config(tmp_path / "bf16", tmp_path / "bad", as_fp8)
    line = bad_input("inspect", tmp_path / "bad")
    assert "is BF16, expected F8_E4M3" in line or "weight_scale" in line


def _model(pieces):
    """A SentencePiece ModelProto holding `pieces` (text, score)."""
    import struct

    def field(number, payload):
        return bytes([number << 3 | 2]) + _varint(len(payload)) + payload

    body = b""
    for text, score in pieces:
        body += field(1, field(1, text.encode()) + bytes([2 << 3 | 5]) + struct.pack("<f", score))
    return body


def _varint(n):
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


@pytest.mark.parametrize(("pieces", "message"), [
    ([("a", 0.0), ("x" * 2_000_000, 0.0)], "piece 1 is 2,000,000 characters long"),
    ([("", 0.0)] * 600_000, "more than 524,288 pieces"),
])
def test_a_tokenizer_model_is_bounded(tmp_path, pieces, message):
    from converter.tokenizer import read_pieces

    path = tmp_path / "t.model"
    path.write_bytes(_model(pieces))
    tracemalloc.start()
    with pytest.raises(MalformedFileError, match=message):
        read_pieces(path)
    assert tracemalloc.get_traced_memory()[1] < 200 << 20
    tracemalloc.stop()


def test_an_error_line_is_bounded_however_much_input_it_echoes(hf_out, tmp_path):
    folder = tmp_path / "hf"
    shutil.copytree(hf_out, folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    name = next(iter(index["weight_map"]))
    index["weight_map"][name] = "x" * (30 << 20)
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    line = bad_input("convert", folder, tmp_path / "out")
    assert "model.safetensors.index.json" in line and len(line) <= 420, len(line)


def test_a_system_error_without_a_file_keeps_its_message():
    from grok1.cli import _os_error

    assert str(_os_error(OSError("the device went away"))) == "the device went away"
