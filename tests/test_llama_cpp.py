"""Our GGUFs in llama.cpp itself (llama-cpp-python, run in a child process by
verify.llama_runner): logits against `grok1 logits` (which matches the original JAX code to
1e-4), a split Q8_0 set loaded from its first file, the GGUF tokenizer against SentencePiece,
and broken GGUFs (swapped experts, a wrong attention output scale) that must fail the same
bounds."""

import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from converter.files.gguf_file import GGUFReader
from converter.forward.drive import torch_logits
from converter.layouts import open_checkpoint
from grok1.cli import main
from verify.llama_runner import available, llama_logits, llama_tokenize
from verify.metrics import ReferenceLogits, compare_logits
from verify.tokens import DEFAULT_TEXT, read_documents

pytestmark = pytest.mark.skipif(not available(), reason="needs llama-cpp-python")

F32_BOUNDS = {"max_abs_diff": 0.01, "kl_mean": 1e-5, "top1_agreement": 1.0}
Q8_BOUNDS = {"kl_mean": 0.01, "top1_agreement": 0.95}


def gguf(src, dst, dtype, *extra):
    result = CliRunner().invoke(main, ["convert", str(src), str(dst), "--to", "gguf", "--dtype",
                                       dtype, "--quiet", *extra])
    assert result.exit_code == 0, result.output
    return sorted(dst.glob("*.gguf"))[0]


def metrics(checkpoint, path, ids):
    ours = torch_logits(open_checkpoint(checkpoint), np.array([ids]))
    reference = ReferenceLogits.from_logits(ours, np.array([ids]), pad_token=0)
    return compare_logits(reference, llama_logits(path, [ids], threads=2)[0][None])


def within(found, bounds):
    return all(found[k] >= v if k == "top1_agreement" else found[k] <= v
               for k, v in bounds.items())


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(0).integers(3, 4096, 32)


@pytest.fixture(scope="module")
def small_f32(small_ckpt, tmp_path_factory):
    return gguf(small_ckpt, tmp_path_factory.mktemp("f32") / "g", "f32")


def test_f32_gguf_matches_our_forward_tightly(small_ckpt, small_f32, ids):
    found = metrics(small_ckpt, small_f32, ids)
    assert within(found, F32_BOUNDS), found


def test_split_q8_0_gguf_loads_from_its_first_file(small_ckpt, tmp_path, ids):
    first = gguf(small_ckpt, tmp_path / "q8", "q8_0", "--shard-size", "20MB")
    assert re.fullmatch(r"grok-1-Q8_0-00001-of-0000[2-9]\.gguf", first.name)
    found = metrics(small_ckpt, first, ids)
    assert within(found, Q8_BOUNDS), found


def test_second_shape_with_grok_1_vocabulary_and_tokenizer(real_vocab_ckpt, tmp_path):
    spm = pytest.importorskip("sentencepiece")
    from converter.tokenizer import GROK1_MODEL

    path = gguf(real_vocab_ckpt, tmp_path / "g", "f32")
    documents = read_documents(DEFAULT_TEXT)
    sentencepiece = spm.SentencePieceProcessor(model_file=str(GROK1_MODEL))
    texts = documents + [s for d in documents for s in re.split(r"(?<=[.!?])\s+", d)]
    ids_by_llama = llama_tokenize(path, texts)
    differ = [t for t, ids in zip(texts, ids_by_llama, strict=True)
              if ids != sentencepiece.encode(t)]
    assert differ == [], f"{len(differ)} of {len(texts)} differ, e.g. {differ[:2]!r}"
    ids = np.array(sentencepiece.encode(documents[0])[:40])
    assert within(metrics(real_vocab_ckpt, path, ids), F32_BOUNDS)


def reverse_experts(path):
    """Store every layer's experts in reverse order (all three projections alike), as a
    converter that got the expert axis wrong would."""
    reader = GGUFReader(path)
    data = bytearray(path.read_bytes())
    for name, (info, start) in reader.tensors.items():
        if name.endswith("_exps.weight"):
            per = info.nbytes // info.shape[0]
            blocks = [data[start + e * per:start + (e + 1) * per] for e in range(info.shape[0])]
            data[start:start + info.nbytes] = b"".join(reversed(blocks))
    path.write_bytes(bytes(data))


def test_a_wrong_expert_order_fails(small_ckpt, small_f32, tmp_path, ids):
    broken = tmp_path / "broken.gguf"
    shutil.copy(small_f32, broken)
    reverse_experts(broken)
    found = metrics(small_ckpt, broken, ids)
    assert not within(found, Q8_BOUNDS), found


def test_a_wrong_attention_output_scale_fails(small_ckpt, tmp_path, ids, monkeypatch):
    from converter.layouts import gguf as layout

    original = layout.metadata

    def wrong(*args):
        keys = original(*args)
        keys["grok.attention.output_scale"] = 1.0  # instead of 1/sqrt(head size)
        return keys

    monkeypatch.setattr(layout, "metadata", wrong)
    path = gguf(small_ckpt, tmp_path / "g", "f32")
    found = metrics(small_ckpt, path, ids)
    assert not within(found, Q8_BOUNDS), found


def test_k_quants_are_made_by_llama_cpp_and_verified(small_ckpt, tmp_path, monkeypatch):
    import json

    from verify import kquant

    gguf(small_ckpt, tmp_path / "bf16", "bf16")
    result = CliRunner().invoke(main, ["gguf-quantize", str(tmp_path / "bf16"),
                                       str(tmp_path / "q4"), "--type", "Q4_K_M"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "q4" / "kquant_report.json").read_text())
    assert report["verified"] and report["metrics"]["kl_mean"] < 0.03
    # the file as people have it: by path, its K-quant tensors read through the gguf package
    path = tmp_path / "q4" / "grok-1-Q4_K_M.gguf"
    inspected = CliRunner().invoke(main, ["inspect", str(path), "--json"])
    assert inspected.exit_code == 0, inspected.output
    assert "Q4_K" in {t["dtype"] for t in json.loads(inspected.output)["tensors"]}
    checked = CliRunner().invoke(main, ["verify", str(small_ckpt), str(path), "--profile",
                                        "int4", "--seq-len", "16", "--batch", "2", "--json",
                                        "-", "--quiet"])
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.output)["metrics"]["kl_mean"] < 0.03
    monkeypatch.setitem(kquant.KQUANTS, "Q4_K_S", (14, "lossless"))  # a bar it cannot clear
    refused = CliRunner().invoke(main, ["gguf-quantize", str(tmp_path / "bf16"),
                                        str(tmp_path / "q4s"), "--type", "Q4_K_S"])
    assert refused.exit_code == 1 and "NOT verified" in refused.output
    assert json.loads((tmp_path / "q4s" / "kquant_report.json").read_text())["verified"] is False
    assert sorted(p.name for p in (tmp_path / "q4s").iterdir()) == [
        "grok-1-Q4_K_S.gguf.unverified", "kquant_report.json"]


def swap_mxfp4_nibbles(path):
    """Swap the two 4-bit values of every byte of every MXFP4 block (the first half of a block
    with its second), as a packer that got the nibble order wrong would."""
    reader = GGUFReader(path)
    data = bytearray(path.read_bytes())
    for info, start in reader.tensors.values():
        if info.kind == "MXFP4":
            blocks = np.frombuffer(data, np.uint8, info.nbytes, start).reshape(-1, 17).copy()
            blocks[:, 1:] = (blocks[:, 1:] >> 4) | (blocks[:, 1:] << 4)
            data[start:start + info.nbytes] = blocks.tobytes()
    path.write_bytes(bytes(data))


def test_mxfp4_moe_gguf_runs_in_llama_cpp_as_we_read_it(small_ckpt, tmp_path, ids):
    path = gguf(small_ckpt, tmp_path / "m", "mxfp4")
    kinds = {name: info.kind for name, (info, _) in GGUFReader(path).tensors.items()}
    assert kinds["blk.0.ffn_gate_exps.weight"] == "MXFP4"
    assert kinds["blk.0.attn_q.weight"] == "Q8_0"
    found = metrics(path, path, ids)  # llama.cpp against our forward on the same file
    assert within(found, {"kl_mean": 1e-4, "top1_agreement": 0.95}), found  # measured 1e-5
    assert within(metrics(small_ckpt, path, ids), {"kl_mean": 0.03, "top1_agreement": 0.9})
    swap_mxfp4_nibbles(path)
    assert not within(metrics(small_ckpt, path, ids), Q8_BOUNDS)
