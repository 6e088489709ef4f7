"""grok1 convert: lossless cycles, layouts readable by their ecosystems, nothing lost."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from converter.layouts import open_checkpoint
from converter.layouts.hf import plan_outputs
from converter.layouts.linears import ReleaseInt8Linears
from converter.model import GROK1 as ARCH
from converter.tensors import round_to_bf16
from grok1.cli import main
from tests.conftest import bad_input, file_digests, output_digests

GROK1 = [sys.executable, "-m", "grok1"]


def convert(*args):
    result = CliRunner().invoke(main, ["convert", *map(str, args), "--quiet"])
    return result


def ok(*args):
    result = convert(*args)
    assert result.exit_code == 0, result.output
    return result


def assert_same_release_files(a, b):
    names = sorted(p.name for p in (Path(a) / "ckpt-0").iterdir())
    assert names == sorted(p.name for p in (Path(b) / "ckpt-0").iterdir())
    for name in names:
        assert (Path(a) / "ckpt-0" / name).read_bytes() == \
            (Path(b) / "ckpt-0" / name).read_bytes(), name


@pytest.mark.parametrize("source", ["upstream", "small_ckpt"])
def test_cycle_original_hf_int8_torch_original_is_byte_identical(source, request, tmp_path):
    src = request.getfixturevalue(source)
    ok(src, tmp_path / "hf8", "--to", "hf", "--dtype", "int8", "--shard-size", "3MB")
    ok(tmp_path / "hf8", tmp_path / "pt", "--to", "torch", "--dtype", "int8",
       "--names", "sglang", "--shard-size", "4MB")
    ok(tmp_path / "pt", tmp_path / "back", "--to", "xai")
    assert_same_release_files(src, tmp_path / "back")


def test_hf_f32_gives_the_same_logits(upstream, tmp_path):
    ok(upstream, tmp_path / "hf", "--dtype", "f32")
    result = CliRunner().invoke(main, ["verify", str(upstream), str(tmp_path / "hf"),
                                       "--profile", "lossless", "--seq-len", "16"])
    assert result.exit_code == 0, result.output


def test_hf_layout_matches_design(upstream, tmp_path):
    ok(upstream, tmp_path / "hf", "--dtype", "bf16", "--shard-size", "2MB")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "num_experts",
                "num_local_experts", "num_experts_per_tok", "attn_output_multiplier",
                "max_attn_value", "embedding_multiplier_scale", "output_multiplier_scale",
                "rms_norm_eps", "rope_theta", "max_position_embeddings", "tie_word_embeddings",
                "torch_dtype"):
        assert key in config, key
    assert config["architectures"] == ["Grok1ModelForCausalLM"]
    assert config["model_type"] == "grok-1" and config["head_dim"] == 16
    assert config["hidden_size"] == 64 != config["num_attention_heads"] * config["head_dim"]
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    total = 0
    seen = {}
    for shard in shards:
        with safe_open(tmp_path / "hf" / shard, framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                tensor = f.get_tensor(key)
                total += tensor.numel() * tensor.element_size()
                seen[key] = tensor
    assert index["metadata"]["total_size"] == total
    assert set(seen) == set(index["weight_map"])
    assert seen["model.embed_tokens.weight"].dtype == torch.float32
    assert seen["model.layers.10.pre_moe_norm.scale"].dtype == torch.float32
    assert seen["model.layers.10.moe_block.gate.weight"].shape == (8, 64)
    assert seen["model.layers.10.moe_block.gate.weight"].dtype == torch.float32
    down = seen["model.layers.10.moe_block.experts.3.linear_1.weight"]
    assert down.dtype == torch.bfloat16 and down.shape == (64, 344)
    original = open_checkpoint(upstream)
    spec = next(s for s in original.specs if s.layer == 10 and s.role == "moe_down")
    expected = round_to_bf16(original.read(spec).dequantize()[3].T.copy())
    np.testing.assert_array_equal(down.float().numpy(), expected)


def test_int8_output_is_compressed_tensors(upstream, tmp_path):
    ok(upstream, tmp_path / "hf8", "--dtype", "int8")
    config = json.loads((tmp_path / "hf8" / "config.json").read_text())
    quant = config["quantization_config"]
    assert quant["quant_method"] == "compressed-tensors" and quant["format"] == "pack-quantized"
    assert quant["quantization_status"] == "compressed"
    sizes = {g["weights"]["group_size"] for g in quant["config_groups"].values()}
    assert sizes == {64, 1, 32}  # gcd(128, rows per scale block) for 64, 344/8 and 256/8 rows
    assert all(g["weights"]["num_bits"] == 8 and g["weights"]["symmetric"]
               for g in quant["config_groups"].values())
    with safe_open(tmp_path / "hf8" / "model.safetensors", framework="pt") as f:
        packed = f.get_tensor("model.layers.0.attn.o_proj.weight_packed")
        scale = f.get_tensor("model.layers.0.attn.o_proj.weight_scale")
        shape = f.get_tensor("model.layers.0.attn.o_proj.weight_shape")
    assert packed.dtype == torch.int32 and packed.shape == (64, 64)
    assert scale.dtype == torch.bfloat16 and scale.shape == (64, 8)
    assert shape.tolist() == [64, 256]


def test_sglang_names(upstream, tmp_path):
    ok(upstream, tmp_path / "sg", "--names", "sglang", "--dtype", "f32")
    config = json.loads((tmp_path / "sg" / "config.json").read_text())
    assert config["load_presharded_moe"] is False
    with safe_open(tmp_path / "sg" / "model.safetensors", framework="pt") as f:
        keys = set(f.keys())
    assert "lm_head.weight" in keys and "model.norm.weight" in keys
    assert "model.layers.3.block_sparse_moe.experts.7.w2.weight" in keys
    assert "model.layers.3.self_attn.o_proj.weight" in keys
    result = CliRunner().invoke(main, ["verify", str(upstream), str(tmp_path / "sg"),
                                       "--seq-len", "12"])
    assert result.exit_code == 0, result.output


def test_torch_shards_load_with_weights_only(upstream, tmp_path):
    ok(upstream, tmp_path / "pt", "--to", "torch", "--dtype", "bf16", "--shard-size", "3MB")
    index = json.loads((tmp_path / "pt" / "pytorch_model.bin.index.json").read_text())
    for shard in set(index["weight_map"].values()):
        path = tmp_path / "pt" / shard
        assert zipfile.ZipFile(path).testzip() is None
        state = torch.load(path, weights_only=True)
        assert all(index["weight_map"][k] == shard for k in state)


def test_workers_give_the_same_bytes(small_ckpt, tmp_path):
    ok(small_ckpt, tmp_path / "one", "--workers", "1", "--shard-size", "8MB")
    ok(small_ckpt, tmp_path / "two", "--workers", "2", "--shard-size", "8MB")
    a, b = file_digests(tmp_path / "one"), file_digests(tmp_path / "two")
    a.pop("grok1-manifest.json"), b.pop("grok1-manifest.json")
    assert a == b


def test_existing_output_rules(upstream, tmp_path):
    ok(upstream, tmp_path / "out", "--dtype", "f32")
    assert "--resume" in bad_input("convert", upstream, tmp_path / "out", "--dtype", "f32")
    assert "other settings" in bad_input("convert", upstream, tmp_path / "out", "--dtype",
                                         "bf16", "--resume")
    ok(upstream, tmp_path / "out", "--dtype", "bf16", "--overwrite")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x").write_text("mine")
    bad_input("convert", upstream, tmp_path / "junk", "--resume")
    assert (tmp_path / "junk" / "x").read_text() == "mine"


def test_dry_run_writes_nothing(upstream, tmp_path):
    result = ok(upstream, tmp_path / "plan", "--dry-run", "--shard-size", "2MB")
    assert "model-00001-of-" in result.output
    assert not (tmp_path / "plan").exists()


def test_lossy_sources_cannot_become_int8_or_original(upstream, tmp_path):
    ok(upstream, tmp_path / "f32", "--dtype", "f32")
    for args in (("--dtype", "int8"), ("--to", "xai")):
        assert "int8" in bad_input("convert", tmp_path / "f32", tmp_path / f"bad{args[1]}", *args)


def test_unmapped_and_missing_names_are_listed(upstream, tmp_path):
    ok(upstream, tmp_path / "hf", "--dtype", "f32", "--shard-size", "1MB")
    index_path = tmp_path / "hf" / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = index["weight_map"].pop("model.layers.4.moe_block.experts.2.linear_v.weight")
    index["weight_map"]["model.layers.4.moe_block.experts.9.linear_v.weight"] = shard
    index_path.write_text(json.dumps(index))
    line = bad_input("convert", tmp_path / "hf", tmp_path / "again", "--dtype", "f32")
    assert "1 unmapped tensors: model.layers.4.moe_block.experts.9.linear_v.weight" in line
    assert "1 missing tensors: model.layers.4.moe_block.experts.2.linear_v.weight" in line


def test_truncated_shard_is_named(upstream, tmp_path):
    ok(upstream, tmp_path / "hf", "--dtype", "f32", "--shard-size", "2MB")
    victim = tmp_path / "hf" / "model-00002-of-00015.safetensors"
    victim.write_bytes(victim.read_bytes()[:100000])
    assert "model-00002-of-00015.safetensors" in bad_input("convert", tmp_path / "hf",
                                                           tmp_path / "again", "--to", "torch")


def test_preflight_refuses_a_small_disk(upstream, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 0, 10**6))
    assert "GB free" in bad_input("convert", upstream, tmp_path / "out")


def test_disk_full_mid_run_leaves_nothing_that_looks_complete(small_ckpt, tmp_path,
                                                              monkeypatch):
    import converter.files.shards as containers
    calls = {"n": 0}
    original = containers._raw

    def failing(entry, array, path):
        calls["n"] += 1
        if calls["n"] == 40:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(entry, array, path)

    monkeypatch.setattr(containers, "_raw", failing)
    assert "disk full" in bad_input("convert", small_ckpt, tmp_path / "out", "--workers", "1",
                                    "--shard-size", "4MB", "--quiet")
    out = tmp_path / "out"
    assert not list(out.rglob("*.incomplete"))
    manifest = json.loads((out / "grok1-manifest.json").read_text())
    assert manifest["complete"] is False
    assert not (out / "model.safetensors.index.json").exists()
    for path, info in manifest["units"].items():
        assert (out / path).stat().st_size == info["bytes"]
    monkeypatch.setattr(containers, "_raw", original)
    ok(small_ckpt, out, "--workers", "1", "--shard-size", "4MB", "--resume")
    ok(small_ckpt, tmp_path / "clean", "--workers", "1", "--shard-size", "4MB")
    assert output_digests(out) == output_digests(tmp_path / "clean")


def _wait_for_units(dst, count, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            units = json.loads((dst / "grok1-manifest.json").read_text())["units"]
            if len(units) >= count:
                return
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        if proc.poll() is not None:
            return
        time.sleep(0.02)


@pytest.mark.parametrize("to", ["hf", "xai"])
def test_killed_conversion_resumes_to_identical_output(small_ckpt, tmp_path, to):
    """Kill a real `grok1 convert` process twice mid-run; --resume ends byte-identical."""
    src = small_ckpt
    if to == "xai":
        ok(small_ckpt, tmp_path / "int8", "--dtype", "int8", "--shard-size", "4MB")
        src = tmp_path / "int8"
    args = ["convert", str(src), str(tmp_path / "out"), "--to", to, "--quiet",
            "--workers", "1", "--shard-size", "2MB"]
    if to == "hf":
        args += ["--dtype", "bf16"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    kills = 0
    for wanted in (2, 6):
        proc = subprocess.Popen([*GROK1, *args, *(["--resume"] if kills else [])], env=env)
        _wait_for_units(tmp_path / "out", wanted, proc)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills == 2, "the conversion finished before it could be killed"
    manifest = json.loads((tmp_path / "out" / "grok1-manifest.json").read_text())
    assert not manifest["complete"]
    final = subprocess.run([*GROK1, *args, "--resume", "--json"], env=env,
                           capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    assert json.loads(final.stdout)["resumed_units"] >= 2
    clean_args = [a if a != str(tmp_path / "out") else str(tmp_path / "clean") for a in args]
    subprocess.run([*GROK1, *clean_args], env=env, check=True)
    assert output_digests(tmp_path / "out") == output_digests(tmp_path / "clean")
    recorded = json.loads((tmp_path / "out" / "grok1-manifest.json").read_text())["command"]
    assert recorded.startswith("grok1 convert") and "--resume" not in recorded


def test_inspect_reads_hf_and_torch_layouts(upstream, tmp_path):
    ok(upstream, tmp_path / "hf", "--dtype", "int8", "--shard-size", "2MB")
    ok(upstream, tmp_path / "pt", "--to", "torch", "--names", "sglang")
    for folder, layout, names in ((tmp_path / "hf", "hf", "hpcai"),
                                  (tmp_path / "pt", "torch", "sglang")):
        result = CliRunner().invoke(main, ["inspect", str(folder), "--json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        assert (report["layout"], report["names"], report["problems"]) == (layout, names, [])
        specs = open_checkpoint(upstream).specs
        assert report["totals"]["parameters"] == sum(s.numel for s in specs)
    planned = plan_outputs(specs, ARCH.scheme("hpcai"),
                           ReleaseInt8Linears.for_specs(specs).formats)
    assert json.loads(CliRunner().invoke(main, ["inspect", str(tmp_path / "hf"), "--json"])
                      .output)["totals"]["tensors"] == len(planned)
    victim = tmp_path / "hf" / "model-00003-of-00006.safetensors"
    victim.write_bytes(victim.read_bytes()[:5000])
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "hf")])
    assert result.exit_code == 2
    assert "model-00003-of-00006.safetensors" in result.output and "truncated" in result.output


def test_generation_config_and_tokenizer_choices(upstream, tmp_path):
    ok(upstream, tmp_path / "hf", "--dtype", "f32")
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (1, 2)
    assert "nope.model" in bad_input("convert", upstream, tmp_path / "hf2", "--tokenizer",
                                     tmp_path / "nope.model")
    fake = tmp_path / "tokenizer.model"
    fake.write_bytes(b"\x0a\x05[PAD]sentencepiece-model-bytes")
    assert "not a SentencePiece model" in bad_input("convert", upstream, tmp_path / "hf3",
                                                    "--tokenizer", fake)


def test_hf_tensor_with_the_wrong_shape_is_named(upstream, tmp_path):
    from converter.files.shards import SafetensorsReader, SafetensorsWriter
    ok(upstream, tmp_path / "hf", "--dtype", "f32")
    path = tmp_path / "hf" / "model.safetensors"
    reader = SafetensorsReader(path)
    entries = [entry for entry, _ in reader.entries.values()]
    arrays = {e.name: reader.get(e.name) for e in entries}
    victim = "model.layers.7.attn.k_proj.weight"
    arrays[victim] = np.ascontiguousarray(arrays[victim].T)
    entries = [type(e)(e.name, e.dtype, arrays[e.name].shape) for e in entries]
    with SafetensorsWriter(path, entries) as writer:
        for entry in entries:
            writer.write(entry.name, arrays[entry.name])
    assert f"{victim} has shape [64, 128], the config implies [128, 64]" in bad_input(
        "convert", tmp_path / "hf", tmp_path / "again", "--dtype", "f32")


@pytest.mark.parametrize("writer", ["safetensors", "torch"])
def test_shard_writers_enforce_the_plan(writer, tmp_path):
    from converter.errors import UsageError
    from converter.files.shards import Entry, SafetensorsWriter, TorchShardWriter
    cls = {"safetensors": SafetensorsWriter, "torch": TorchShardWriter}[writer]
    plan = [Entry("a", "F32", (2,)), Entry("b", "I32", (3,))]
    path = tmp_path / "shard"
    with pytest.raises(UsageError, match="finished after 1 of 2 tensors"), cls(path, plan) as w:
        w.write("a", np.zeros(2, np.float32))
    with pytest.raises(UsageError, match="wrote b, expected a"), cls(path, plan) as w:
        w.write("b", np.zeros(3, np.int32))
    with pytest.raises(UsageError, match="planned twice"):
        cls(path, plan + plan[:1])
    assert list(tmp_path.iterdir()) == []


def test_verify_judges_a_bf16_conversion_as_lossy_and_says_so(small_ckpt, tmp_path):
    out = tmp_path / "bf16"
    assert CliRunner().invoke(main, ["convert", str(small_ckpt), str(out), "--to", "hf",
                                     "--quiet"]).exit_code == 0
    args = ["verify", str(small_ckpt), str(out), "--seq-len", "16", "--batch", "2"]
    inferred = CliRunner().invoke(main, args)
    assert inferred.exit_code == 0, inferred.output
    assert "profile: int8 (inferred: made by `convert --dtype bf16`)" in inferred.output
    strict = CliRunner().invoke(main, [*args, "--profile", "lossless"])
    assert strict.exit_code == 1
    fail = next(line for line in strict.output.splitlines() if line.startswith("FAIL: "))
    assert "the candidate is lossy" in fail and "--dtype f32 or int8 is lossless" in fail


def test_check_hashes_finds_a_flipped_byte_in_a_converted_folder(small_ckpt, tmp_path):
    out = tmp_path / "hf"
    assert CliRunner().invoke(main, ["convert", str(small_ckpt), str(out), "--to", "hf",
                                     "--dtype", "f32", "--quiet"]).exit_code == 0
    clean = CliRunner().invoke(main, ["inspect", str(out), "--check-hashes"])
    assert clean.exit_code == 0, clean.output
    shard = out / "model.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x01
    shard.write_bytes(bytes(data))
    flipped = CliRunner().invoke(main, ["inspect", str(out), "--check-hashes"])
    assert flipped.exit_code == 2 and "model.safetensors: sha256" in flipped.output
