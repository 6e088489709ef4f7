"""GGUF: our block types against gguf-py's reference, the release's Q8_0 kept exactly, split
files, the tokenizer vocabulary, and refusals."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from converter.files.gguf_file import GGUFReader, decode, encode
from converter.layouts import open_checkpoint
from converter.model import GROK1
from converter.tensors import f32_to_bf16_bits
from grok1.cli import main
from tests.conftest import bad_input

gguf = pytest.importorskip("gguf")


def ok(*args):
    result = CliRunner().invoke(main, [*map(str, args), "--quiet"])
    assert result.exit_code == 0, result.output
    return result


def arrays():
    rng = np.random.default_rng(7)
    yield "normal", rng.standard_normal((6, 256)).astype(np.float32)
    yield "wide range", (rng.standard_normal((4, 128)) * np.exp(rng.uniform(-20, 10, (4, 1)))
                         ).astype(np.float32)
    zero = rng.standard_normal((3, 64)).astype(np.float32)
    zero[1] = 0
    yield "zero block", zero
    ties = np.tile(np.array([0.5, -0.5, 1.5, -2.5, 127.0, -127.0, 3.0, 8.0], np.float32), (2, 4))
    yield "ties", ties


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "MXFP4", "F16", "BF16", "F32"])
def test_block_types_match_gguf_py(kind):
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    qtype = GGMLQuantizationType[kind]
    for name, values in arrays():
        ours = encode(values, kind)
        if kind == "BF16":
            expected = f32_to_bf16_bits(values).view(np.uint8).reshape(-1)
        else:
            expected = np.asarray(quantize(values, qtype)).view(np.uint8).reshape(-1)
        assert np.array_equal(ours, expected), (kind, name)
        theirs = dequantize(np.asarray(ours).reshape(values.shape[0], -1), qtype)
        np.testing.assert_array_equal(decode(ours, kind, values.shape),
                                      np.asarray(theirs, np.float32).reshape(values.shape))


@pytest.fixture(scope="module")
def q8(small_ckpt, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf") / "q8"
    ok("convert", small_ckpt, folder, "--to", "gguf", "--dtype", "q8_0", "--shard-size", "20MB")
    return folder


def test_q8_0_from_the_release_keeps_its_codes_and_verifies_lossless(small_ckpt, q8):
    release = open_checkpoint(small_ckpt)
    spec = next(s for s in release.specs if s.role == "moe_up" and s.layer == 3)
    reader = next(GGUFReader(p) for p in sorted(q8.glob("*.gguf"))
                  if GROK1.gguf.tensor(spec) in GGUFReader(p).tensors)
    info, _ = reader.tensors[GROK1.gguf.tensor(spec)]
    assert info.kind == "Q8_0" and info.shape == (8, spec.shape[2], spec.shape[1])
    blocks = reader.raw(info.name).reshape(-1, 34)
    codes = blocks[:, 2:].view(np.int8).reshape(8, spec.shape[2], spec.shape[1])
    value = release.read(spec)
    assert np.array_equal(codes, np.swapaxes(np.asarray(value.weight), 1, 2))
    result = CliRunner().invoke(main, ["verify", str(small_ckpt), str(q8), "--profile",
                                       "lossless", "--seq-len", "16", "--batch", "2"])
    assert result.exit_code == 0, result.output
    report = json.loads((q8 / "gguf_report.json").read_text())
    assert report["tensors"][GROK1.gguf.tensor(spec)]["made"] == "release int8 codes and scales"
    # small's expert down projection has 1368 = 8 x 171 rows: blocks of 32 cannot keep its
    # scale groups, so it is stored exactly in F32, and the report says so
    assert report["fallbacks"] == [f"blk.{i}.ffn_down_exps.weight" for i in range(5)]


def test_split_files_carry_llama_cpp_split_keys(q8):
    from gguf import GGUFReader as Theirs

    files = sorted(q8.glob("*.gguf"))
    assert len(files) > 1 and files[0].name == f"grok-1-Q8_0-00001-of-{len(files):05d}.gguf"
    total = 0
    for number, path in enumerate(files):
        fields = Theirs(path).fields
        assert fields["split.no"].parts[-1][0] == number
        assert fields["split.count"].parts[-1][0] == len(files)
        total += len(Theirs(path).tensors)
        assert ("general.architecture" in fields) == (number == 0)
    assert Theirs(files[0]).fields["split.tensors.count"].parts[-1][0] == total


def test_a_gguf_is_read_from_its_file_path_the_first_split_finding_the_rest(small_ckpt, q8,
                                                                          tmp_path):
    files = sorted(q8.glob("*.gguf"))
    folder = open_checkpoint(q8)
    by_file = open_checkpoint(files[0])
    assert by_file.files == folder.files and by_file.config == folder.config
    spec = next(s for s in folder.specs if s.role == "moe_gate" and s.layer == 2)
    assert np.array_equal(by_file.read(spec), folder.read(spec))
    np.save(tmp_path / "tokens.npy", np.array([[5, 9, 13, 7]]))
    result = CliRunner().invoke(main, ["logits", str(files[0]), "--tokens",
                                       str(tmp_path / "tokens.npy"), "--out",
                                       str(tmp_path / "l.npy")])
    assert result.exit_code == 0, result.output
    shutil.copy(files[0], tmp_path / files[0].name)  # the first file alone: the rest missing
    assert "lacks part(s)" in bad_input("inspect", tmp_path / files[0].name)


def test_retyping_a_gguf_and_hf_int8_to_gguf(small_ckpt, q8, tmp_path):
    ok("convert", q8, tmp_path / "f16", "--to", "gguf", "--dtype", "f16")
    ok("convert", small_ckpt, tmp_path / "hf8", "--dtype", "int8")
    ok("convert", tmp_path / "hf8", tmp_path / "q8", "--to", "gguf", "--dtype", "q8_0",
       "--shard-size", "20MB")
    for a, b in zip(sorted(q8.glob("*.gguf")), sorted((tmp_path / "q8").glob("*.gguf")),
                    strict=True):
        assert a.read_bytes() == b.read_bytes()  # the lossless HF int8 gives the same Q8_0


def test_the_tokenizer_inside(real_vocab_ckpt, tmp_path):
    ok("convert", real_vocab_ckpt, tmp_path / "g", "--to", "gguf", "--dtype", "f32")
    fields = gguf.GGUFReader(next((tmp_path / "g").glob("*.gguf"))).fields
    tokens = [bytes(fields["tokenizer.ggml.tokens"].parts[i]).decode()
              for i in fields["tokenizer.ggml.tokens"].data]
    types = [int(fields["tokenizer.ggml.token_type"].parts[i][0])
             for i in fields["tokenizer.ggml.token_type"].data]
    assert len(tokens) == 131072 and tokens[:4] == ["[PAD]", "[BOS]", "[EOS]", "[UNK]"]
    assert types[:4] == [3, 3, 3, 2] and types[4] == 1 and tokens[4] == "\n"
    user = [t for t, k in zip(tokens, types, strict=True) if k == 4]
    assert user and all(t.startswith("<|") for t in user)
    assert bool(fields["tokenizer.ggml.add_bos_token"].parts[-1][0]) is False


def test_models_llama_cpp_cannot_hold_are_refused(upstream, tmp_path):
    line = bad_input("convert", upstream, tmp_path / "g", "--to", "gguf")
    assert "q_heads x head size == embedding size" in line and "16 x 16 = 256 != 64" in line
    assert not (tmp_path / "g").exists()


def test_malformed_gguf_is_one_line(q8, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(q8, broken)
    (broken / "grok1-manifest.json").unlink()
    first = sorted(broken.glob("*.gguf"))[0]
    first.write_bytes(first.read_bytes()[:5000])
    assert "truncated" in bad_input("inspect", broken)
    first.write_bytes(b"GGUX" + b"\0" * 100)
    assert "bad magic" in bad_input("convert", broken, tmp_path / "out")
    sorted(broken.glob("*.gguf"))[2].unlink()
    assert "lacks part(s) [3]" in bad_input("convert", broken, tmp_path / "out")


def test_pipeline_to_gguf_verifies_lossless_and_publishes_a_llama_cpp_card(small_ckpt, tmp_path):
    from tests.test_hub import Server, grok1

    root = tmp_path / "hub"
    shutil.copytree(small_ckpt, root / "xai-org" / "grok-1")
    server = Server(root, tmp_path)
    try:
        done = grok1(server, tmp_path, "pipeline", "--to", "gguf-Q8_0", "--work-dir",
                     tmp_path / "work", "--upload", "me/grok-1-gguf", "--batch", "2",
                     "--seq-len", "16", check=0)
    finally:
        server.stop()
    assert "profile: lossless" in done.stdout and "PASS" in done.stdout
    card = (root / "me" / "grok-1-gguf" / "README.md").read_text()
    assert "library_name: gguf" in card and "base_model_relation: quantized" in card
    assert "`llama-server -m grok-1-Q8_0.gguf`" in card and "Tokenizer: inside the GGUF" in card
    assert "`--no-repack`" in card and "AMX" in card


def test_gguf_to_gguf_at_the_same_type_keeps_the_blocks(q8, tmp_path):
    ok("convert", q8, tmp_path / "again", "--to", "gguf", "--dtype", "q8_0", "--shard-size",
       "20MB")
    for a, b in zip(sorted(q8.glob("*.gguf")), sorted((tmp_path / "again").glob("*.gguf")),
                    strict=True):
        assert a.read_bytes() == b.read_bytes()
    report = json.loads((tmp_path / "again" / "gguf_report.json").read_text())
    assert report["fallbacks"] == []
    assert {e["made"] for e in report["tensors"].values()} == {"the source GGUF's blocks, kept"}


def test_every_file_of_a_run_is_the_same_however_it_ran(small_ckpt, q8, tmp_path):
    """Workers finish in any order and a resumed run records units in another order: the
    report (and every other file) must still be byte-identical to an uninterrupted run's."""
    from tests.conftest import file_digests

    skip = lambda p: p.name == "grok1-manifest.json"  # noqa: E731 (records timings)
    ok("convert", small_ckpt, tmp_path / "one", "--to", "gguf", "--shard-size", "20MB",
       "--workers", "1")
    manifest = tmp_path / "one" / "grok1-manifest.json"
    record = json.loads(manifest.read_text())
    record["complete"] = False
    record["units"] = dict(list(record["units"].items())[::-1][:2])
    manifest.write_text(json.dumps(record))
    (tmp_path / "one" / "gguf_report.json").unlink()
    ok("convert", small_ckpt, tmp_path / "one", "--to", "gguf", "--shard-size", "20MB",
       "--resume")
    assert file_digests(tmp_path / "one", skip=skip) == file_digests(q8, skip=skip)


def test_mxfp4_decides_every_tie_as_gguf_py():
    """Values on the grid's midpoints, at many exponents: MXFP4 takes the first of two equally
    near codes (the smaller magnitude, +0 for a negative zero), as gguf-py's argmin does."""
    from gguf.quants import MXFP4

    rng = np.random.default_rng(0)
    for exponent in range(-30, 8, 3):
        half = np.float32(2.0 ** exponent) / np.float32(2)
        values = rng.integers(-26, 27, (8, 64)).astype(np.float32) * half
        values[0, :32] = -0.0
        expected = MXFP4.quantize_blocks(values.reshape(-1, 32)).reshape(-1)
        assert np.array_equal(encode(values, "MXFP4"), expected), exponent
