"""`quantize --scheme w8a8-int8`: SGLang's own int8 format. Its contract, read in SGLang
0.5.23's `srt/layers/quantization/w8a8_int8.py` (SGLang needs CUDA or AMX kernels; not run
here): config.json's quantization_config is `{"quant_method": "w8a8_int8"}`; every Linear and
each expert's w1 / w3 / w2 has `weight` int8 [out, in] and `weight_scale` float32 [out, 1]
(`create_weights` of its Linear and MoE methods); the router, embeddings and LM head are built
without a quantization method and stay float32."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors import safe_open

from converter.layouts import open_checkpoint
from converter.model import GROK1
from converter.tensors import QuantizedWeight8bit
from grok1.cli import main
from quant.cpu import quantize_cpu
from quant.schemes import QuantScheme
from tests.test_serving import CONSUMER_NAMES


@pytest.fixture(scope="module")
def w8a8(small_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("w8a8") / "out"
    result = CliRunner().invoke(main, ["quantize", str(small_ckpt), str(out), "--scheme",
                                       "w8a8-int8", "--tokenizer", "none", "--quiet"])
    assert result.exit_code == 0, result.output
    return out


def test_config_and_every_linear_are_what_sglang_creates(small_ckpt, w8a8):
    config = json.loads((w8a8 / "config.json").read_text())
    assert config["quantization_config"] == {"quant_method": "w8a8_int8"}
    assert config["torch_dtype"] == "bfloat16"
    release = open_checkpoint(small_ckpt)
    with safe_open(w8a8 / "model.safetensors", "np") as f:
        names = set(f.keys())
        for spec in (s for s in release.specs if s.layer == 1):
            module = f"model.layers.1.{CONSUMER_NAMES['sglang'][spec.role]}" \
                if spec.role in CONSUMER_NAMES["sglang"] else None
            if spec.role not in GROK1.linear_roles:
                continue
            out, cols = spec.shape[-1], spec.shape[-2]
            for e in range(spec.shape[0]) if spec.role.startswith("moe_") else [None]:
                name = module.format(e=e)
                weight, scale = f.get_tensor(f"{name}.weight"), f.get_tensor(f"{name}.weight_scale")
                assert (weight.dtype, weight.shape) == (np.int8, (out, cols)), name
                assert (scale.dtype, scale.shape) == (np.float32, (out, 1)), name
                names -= {f"{name}.weight", f"{name}.weight_scale"}
        router = f.get_tensor("model.layers.1.block_sparse_moe.gate.weight")
        assert router.dtype == np.float32
    assert not any(n.startswith("model.layers.1.") and n.endswith("_scale") for n in names)


def test_per_channel_release_linears_keep_their_codes_others_are_requantized(small_ckpt,
                                                                             w8a8):
    release, ours = open_checkpoint(small_ckpt), open_checkpoint(w8a8)
    kept = requantized = 0
    for spec in (s for s in release.specs if s.role in GROK1.linear_roles and s.layer == 2):
        source, written = release.read(spec), ours.read(spec)
        if spec.scale_groups == 1:
            assert isinstance(written, QuantizedWeight8bit), spec.name
            assert np.array_equal(written.weight, source.weight), spec.name
            assert np.array_equal(written.scales, source.scales), spec.name
            kept += 1
        else:
            expert = source[0] if spec.role.startswith("moe_") else source
            packed, _ = quantize_cpu(expert, QuantScheme(8, None))
            got = written[0] if spec.role.startswith("moe_") else written
            assert np.array_equal(got.codes, packed.codes()), spec.name
            assert np.array_equal(got.scale, packed.scale_f32()), spec.name
            requantized += 1
    assert kept >= 4 and requantized >= 2


def test_it_verifies_against_the_release_as_int8(small_ckpt, w8a8):
    result = CliRunner().invoke(main, ["verify", str(small_ckpt), str(w8a8), "--json", "-"])
    report = json.loads(result.output)
    assert result.exit_code == 0, result.output
    assert report["profile"] == "int8"


def test_the_release_layout_refuses_it_in_one_line(w8a8, tmp_path):
    """Two Linears per layer were re-quantized per channel: the release's grouped int8 cannot
    hold them, and convert says so instead of inventing scales."""
    result = CliRunner().invoke(main, ["convert", str(w8a8), str(tmp_path / "x"), "--to", "xai",
                                       "--quiet"])
    assert result.exit_code == 2, result.output
    assert "needs the release's int8 codes and scales" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("args", [["--names", "hpcai"], ["--group-size", "64"],
                                  ["--asymmetric"], ["--arithmetic", "bf16"]], ids=" ".join)
def test_options_it_does_not_take_are_refused(small_ckpt, tmp_path, args):
    result = CliRunner().invoke(main, ["quantize", str(small_ckpt), str(tmp_path / "o"),
                                       "--scheme", "w8a8-int8", *args])
    assert result.exit_code == 2, result.output
    assert "w8a8-int8" in result.output and not (tmp_path / "o").exists()


def test_serving_names_sglang_and_why_not_the_others(w8a8):
    result = CliRunner().invoke(main, ["serving", str(w8a8)])
    assert result.exit_code == 0, result.output
    assert "SGLang" in result.output and "Xeon CPUs with AMX" in result.output
    assert "Not transformers: it has no w8a8_int8 quantization method" in result.output


def test_a_scale_off_by_a_factor_fails_verification(small_ckpt, w8a8, tmp_path):
    """Every weight_scale times 1.25 must not pass as int8: the scales are read and used."""
    import shutil

    from safetensors.numpy import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(w8a8, broken)
    tensors = load_file(broken / "model.safetensors")
    for name in tensors:
        if name.endswith(".weight_scale"):
            tensors[name] = tensors[name] * np.float32(1.25)
    save_file(tensors, broken / "model.safetensors")
    result = CliRunner().invoke(main, ["verify", str(small_ckpt), str(broken), "--profile",
                                       "int8", "--quiet"])
    assert result.exit_code == 1, result.output
