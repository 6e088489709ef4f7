"""Quantization: Triton kernel vs CPU reference (bit for bit), packing vs an independent
decoder written from the compressed-tensors spec, and logits of quantized checkpoints."""

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from converter.errors import MalformedFileError, UsageError
from converter.files.shards import SafetensorsReader, SafetensorsWriter
from converter.formats import pack_codes, unpack_codes
from converter.layouts.linears import dense_transposed
from converter.model import GROK1
from converter.model.config import Grok1Config
from converter.tensors import QuantizedWeight8bit, bf16_bits_to_f32, f32_to_bf16_bits
from grok1.cli import main
from quant.primitives import quantize_linear
from quant.registry import scheme_for
from quant.requantize import resolve_device
from quant.schemes import QuantScheme, SchemeOptions

SCHEMES = [QuantScheme(8, None), QuantScheme(4, 128), QuantScheme(4, 128, False),
           QuantScheme(8, 64, False), QuantScheme(4, 32), QuantScheme(8, None, arithmetic="bf16"),
           QuantScheme(4, 128, False, arithmetic="bf16"), QuantScheme(8, None, grid="release"),
           QuantScheme(4, 128, grid="release")]


def release_matrix(rng, k, n, groups, codes=None, scales=None):
    codes = rng.integers(-127, 128, (k, n)).astype(np.int8) if codes is None else codes
    if scales is None:
        scales = rng.uniform(1e-3, 1e-2, (groups, n)).astype(np.float32)
    return QuantizedWeight8bit(codes, f32_to_bf16_bits(scales))


def adversarial(rng):
    """(name, release matrix) pairs that stress the edge cases."""
    k, n = 344, 40
    zero_group = rng.integers(-127, 128, (k, n)).astype(np.int8)
    zero_group[:128] = 0
    outlier = rng.integers(-3, 4, (k, n)).astype(np.int8)
    outlier[200, 7] = 127
    extreme = np.where(rng.random((k, n)) < 0.5, -128, 127).astype(np.int8)
    tiny = rng.uniform(1e-38, 1e-36, (8, n)).astype(np.float32)
    return [
        ("random", release_matrix(rng, k, n, 8)),
        ("all-zero group", release_matrix(rng, k, n, 8, codes=zero_group)),
        ("single huge outlier", release_matrix(rng, k, n, 1, codes=outlier,
                                               scales=np.full((1, n), 50.0, np.float32))),
        ("tiny scales", release_matrix(rng, k, n, 8, scales=tiny)),
        ("extreme codes", release_matrix(rng, k, n, 8, codes=extreme)),
        ("odd shape", release_matrix(rng, 72, 13, 1)),
        ("all zero", release_matrix(rng, 64, 8, 1, codes=np.zeros((64, 8), np.int8))),
        ("range below a scale", release_matrix(
            rng, 64, 8, 1, codes=-(rng.random((64, 8)) < 0.3).astype(np.int8),
            scales=np.full((1, 8), 2.0**-133, np.float32))),
    ]


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.label)
def test_kernel_is_bit_identical_to_the_cpu_reference(scheme):
    from quant.kernels import requantize_triton
    rng = np.random.default_rng(scheme.bits * 1000 + (scheme.group_size or 0))
    for name, value in adversarial(rng):
        if value.weight.shape[0] < (scheme.group_size or 0) and name == "odd shape":
            continue
        expected, reference_stats = quantize_linear(dense_transposed(value), scheme)
        for source, scales in (
                (torch.from_numpy(value.weight), torch.from_numpy(value.scales.view(np.int16))),
                (torch.from_numpy(np.ascontiguousarray(dense_transposed(value).T)), None)):
            got, stats = requantize_triton(source, scales, scheme)
            assert np.array_equal(got.packed, expected.packed), name
            for key in ("max_abs_err", "clipped_pct", "numel"):
                assert stats[key] == reference_stats[key], (name, key)
            assert stats["rel_rms"] == pytest.approx(reference_stats["rel_rms"], rel=1e-5), name
            assert np.array_equal(got.scale, expected.scale), name
            if not scheme.symmetric:
                assert np.array_equal(got.zero_point, expected.zero_point), name


def independent_unpack(words, bits, cols):
    """Decode int32 words by the compressed-tensors rule, one bit field at a time."""
    per_word = 32 // bits
    out = np.zeros((words.shape[0], cols), np.int64)
    for r in range(words.shape[0]):
        for c in range(cols):
            word = int(words[r, c // per_word]) & 0xFFFFFFFF
            out[r, c] = ((word >> (bits * (c % per_word))) & ((1 << bits) - 1)) - (
                1 << (bits - 1))
    return out


def test_packing_follows_the_spec():
    assert pack_codes(np.arange(-8, 8, dtype=np.int8)[None], 4).view(np.uint32).tolist() == \
        [[0x76543210, 0xFEDCBA98]]
    assert pack_codes(np.array([[-128, 127, 0, 1]], np.int8), 8).view(np.uint32).tolist() == \
        [[0x8180FF00]]
    rng = np.random.default_rng(0)
    for bits, cols in ((4, 37), (8, 13), (4, 8)):
        codes = rng.integers(-(1 << bits - 1), 1 << bits - 1, (5, cols)).astype(np.int8)
        packed = pack_codes(codes, bits)
        assert packed.shape == (5, -(-cols * bits // 32)) and packed.dtype == np.int32
        np.testing.assert_array_equal(independent_unpack(packed, bits, cols), codes)
        np.testing.assert_array_equal(unpack_codes(packed, bits, cols), codes)


@pytest.mark.parametrize("scheme", [QuantScheme(4, 128, False), QuantScheme(8, None)],
                         ids=lambda s: s.label)
def test_quantized_linear_decodes_independently(scheme):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((24, 344)).astype(np.float32)
    packed, _ = quantize_linear(x, scheme)
    codes = independent_unpack(packed.packed, scheme.bits, 344)
    scale = bf16_bits_to_f32(packed.scale).astype(np.float64)
    group = np.arange(344) // (scheme.group_size or 344)
    zero = np.zeros(scale.shape)
    if not scheme.symmetric:
        zero = independent_unpack(packed.zero_point.T.copy(), scheme.bits, 24).T
        assert packed.zero_point.shape == (24 // 8, 3)
    rebuilt = (codes - zero[:, group]) * scale[:, group]
    np.testing.assert_allclose(rebuilt, packed.dequantize().T, rtol=0, atol=0)
    assert np.abs(rebuilt - x).max() <= scale.max() * (1 if scheme.symmetric else 1.01)


def test_mse_reduces_error_against_rtn():
    x = np.random.default_rng(4).standard_normal((64, 512)).astype(np.float32)
    errors = {}
    for method in ("rtn", "mse"):
        packed, _ = quantize_linear(x, QuantScheme(4, 128, True, method))
        errors[method] = np.linalg.norm(packed.dequantize().T - x)
    assert errors["mse"] < 0.95 * errors["rtn"]


def test_scheme_validation():
    assert scheme_for("int4").group_size == 128
    assert scheme_for("int8").group_size is None
    assert scheme_for("int4", SchemeOptions(group_size=32, symmetric=False)).group_size == 32
    with pytest.raises(UsageError, match="multiple of 8"):
        QuantScheme(4, 12)
    with pytest.raises(UsageError):
        resolve_device("cuda") if not torch.cuda.is_available() else resolve_device("tpu")
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def quantize(src, dst, *args):
    result = CliRunner().invoke(main, ["quantize", str(src), str(dst), "--quiet", *args])
    assert result.exit_code == 0, result.output
    return result


def verify(ref, cand, profile):
    result = CliRunner().invoke(main, ["verify", str(ref), str(cand), "--profile", profile,
                                       "--seq-len", "48", "--batch", "4", "--json", "-"])
    return result.exit_code, json.loads(result.output)


@pytest.fixture(scope="module")
def quantized(small_ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("quantized")
    quantize(small_ckpt, root / "int8", "--scheme", "int8")
    quantize(small_ckpt, root / "int4", "--scheme", "int4")
    quantize(small_ckpt, root / "int4-asym", "--scheme", "int4", "--asymmetric")
    return root


@pytest.mark.parametrize("name,profile", [("int8", "int8"), ("int4", "int4"),
                                          ("int4-asym", "int4")])
def test_quantized_small_passes_its_profile(small_ckpt, quantized, name, profile):
    code, report = verify(small_ckpt, quantized / name, profile)
    assert code == 0, report["reasons"]


def test_verify_infers_the_profile_from_how_the_candidate_was_made(small_ckpt, quantized):
    result = CliRunner().invoke(main, ["verify", str(small_ckpt), str(quantized / "int4"),
                                       "--seq-len", "48", "--json", "-"])
    report = json.loads(result.output)
    assert result.exit_code == 0, report["reasons"]
    assert report["profile"] == "int4"
    assert report["profile_source"].startswith("inferred: made by `quantize --scheme int4`")
    assert report["thresholds"]["max_kl"] == 0.03


def test_quantized_output_format(quantized):
    config = json.loads((quantized / "int4" / "config.json").read_text())
    quant = config["quantization_config"]
    groups = {g["weights"]["group_size"]: g for g in quant["config_groups"].values()}
    # small's down projection is 1368 wide: compressed-tensors needs a group size dividing it
    assert set(groups) == {128, 8}
    assert groups[8]["targets"] == ["re:model\\.layers\\.\\d+\\.moe_block\\.experts\\.\\d+"
                                    "\\.linear_1$"]
    assert all(g["weights"]["strategy"] == "group" and g["weights"]["num_bits"] == 4
               for g in groups.values())
    assert "re:model\\.layers\\.\\d+\\.moe_block\\.gate$" in quant["ignore"]
    int8 = json.loads((quantized / "int8" / "config.json").read_text())["quantization_config"]
    assert int8["config_groups"]["group_0"]["weights"]["strategy"] == "channel"
    reader = SafetensorsReader(quantized / "int4" / "model.safetensors")
    assert reader.dtype("model.layers.0.moe_block.gate.weight") == "F32"
    assert reader.dtype("model.embed_tokens.weight") == "F32"
    assert reader.get("model.layers.0.moe_block.experts.5.linear_1.weight_packed").shape == \
        (256, 1368 // 8)
    report = json.loads((quantized / "int4" / "quantization_report.json").read_text())
    config = Grok1Config.preset("small")
    linears_per_layer = sum(config.experts if GROK1.role[r].expert else 1
                            for r in GROK1.linear_roles)
    assert report["summary"]["tensors"] == config.layers * linears_per_layer
    assert 0.05 < report["summary"]["mean_rel_rms"] < 0.2
    rows = report["tensors"]
    assert rows == sorted(rows, key=lambda r: -r["rel_rms"])


def rewrite_safetensors(src, dst, transform):
    shutil.copytree(src, dst)
    reader = SafetensorsReader(src / "model.safetensors")
    entries = [entry for entry, _ in reader.entries.values()]
    with SafetensorsWriter(dst / "model.safetensors", entries) as writer:
        for entry in entries:
            writer.write(entry.name, transform(entry.name, reader.get(entry.name)))


def test_wrong_nibble_order_fails(small_ckpt, quantized, tmp_path):
    def swap(name, array):
        if not name.endswith("weight_packed"):
            return array
        raw = array.view(np.uint8)
        return ((raw >> 4) | (raw << 4)).view(np.int32)

    rewrite_safetensors(quantized / "int4", tmp_path / "nibbles", swap)
    code, report = verify(small_ckpt, tmp_path / "nibbles", "int4")
    assert code == 1 and not report["passed"]


def test_zero_point_off_by_one_fails(small_ckpt, quantized, tmp_path):
    def shift(name, array):
        if not name.endswith("weight_zero_point"):
            return array
        zero = unpack_codes(array.T.copy(), 4, array.shape[0] * 8).T
        zero = np.clip(zero.astype(np.int16) + 1, -8, 7).astype(np.int8)
        return pack_codes(zero.T.copy(), 4).T.copy()

    rewrite_safetensors(quantized / "int4-asym", tmp_path / "zp", shift)
    code, report = verify(small_ckpt, tmp_path / "zp", "int4")
    assert code == 1 and not report["passed"]


def test_report_printed_and_mse_beats_rtn(small_ckpt, tmp_path):
    out = CliRunner().invoke(main, ["quantize", str(small_ckpt), str(tmp_path / "mse"),
                                    "--scheme", "int4", "--method", "mse", "--json", "--quiet"])
    assert out.exit_code == 0, out.output
    mse = json.loads(out.output)["report"]["mean_rel_rms"]
    shown = CliRunner().invoke(main, ["quantize", str(small_ckpt), str(tmp_path / "rtn"),
                                      "--scheme", "int4", "--quiet"])
    lines = [line for line in shown.output.splitlines() if line.startswith("model.")]
    assert len(lines) == 10
    rtn = json.loads((tmp_path / "rtn" / "quantization_report.json").read_text())
    assert mse < 0.95 * rtn["summary"]["mean_rel_rms"]


@pytest.mark.parametrize("scheme", ["int4", "fp8"])
def test_nan_weights_are_refused_by_name(tiny_ckpt, tmp_path, scheme):
    from converter.layouts.xai import XaiCheckpoint, value_payloads, write_leaf
    folder = tmp_path / "nan"
    shutil.copytree(tiny_ckpt, folder)
    checkpoint = XaiCheckpoint.open(folder)
    spec = next(s for s in checkpoint.specs if s.layer == 3 and s.role == "attn_v")
    value = checkpoint.read(spec)
    scales = np.array(value.scales)
    scales[0, 5] = 0x7FC0  # bf16 NaN
    write_leaf(checkpoint.path_of(spec), spec,
               value_payloads(QuantizedWeight8bit(np.array(value.weight), scales)))
    result = CliRunner().invoke(main, ["quantize", str(folder), str(tmp_path / "out"),
                                       "--scheme", scheme, "--quiet", "--workers", "1"])
    assert result.exit_code == 2
    assert "decoder_layer_3/multi_head_attention/value/w: NaN or Inf" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out" / "model.safetensors").exists()  # nothing half-written
    with pytest.raises(MalformedFileError):
        from quant.requantize import check_finite
        check_finite(spec, None, np.array([np.inf], np.float32))


def test_quantize_workers_and_resume(small_ckpt, tmp_path, monkeypatch):
    quantize(small_ckpt, tmp_path / "one", "--scheme", "int4", "--workers", "1",
             "--shard-size", "10MB")
    quantize(small_ckpt, tmp_path / "two", "--scheme", "int4", "--workers", "2",
             "--shard-size", "10MB")
    import converter.files.shards as containers
    original, calls = containers._raw, {"n": 0}

    def interrupted(entry, array, path):
        calls["n"] += 1
        if calls["n"] == 300:
            raise KeyboardInterrupt
        return original(entry, array, path)

    monkeypatch.setattr(containers, "_raw", interrupted)
    stopped = CliRunner().invoke(main, ["quantize", str(small_ckpt), str(tmp_path / "resumed"),
                                        "--scheme", "int4", "--workers", "1", "--shard-size",
                                        "10MB", "--quiet"])
    assert stopped.exit_code != 0 and calls["n"] >= 300
    manifest = json.loads((tmp_path / "resumed" / "grok1-manifest.json").read_text())
    assert not manifest["complete"] and manifest["units"]
    monkeypatch.setattr(containers, "_raw", original)
    quantize(small_ckpt, tmp_path / "resumed", "--scheme", "int4", "--workers", "1",
             "--shard-size", "10MB", "--resume")
    for name in ("two", "resumed"):
        for path in (tmp_path / "one").iterdir():
            if path.name != "grok1-manifest.json":
                assert path.read_bytes() == (tmp_path / name / path.name).read_bytes(), path


@pytest.mark.parametrize("name", ["int8", "int4", "int4-asym"])
def test_the_forward_decodes_packed_linears_band_by_band_to_the_same_bits(quantized, name):
    from converter.formats import PackedLinear
    from converter.forward.matmul import packed_bands, packed_rows
    from converter.layouts import open_checkpoint

    reader = open_checkpoint(quantized / name)
    checked = 0
    for spec in reader.specs:
        if spec.layer != 0 or not spec.quantized:
            continue
        value = reader.read_expert(spec, 3) if spec.param.expert else reader.read(spec)
        if not isinstance(value, PackedLinear):
            continue
        whole = value.dequantize()
        for first, end in packed_bands(value):
            assert np.array_equal(packed_rows(value, first, end).T.numpy(), whole[first:end])
        checked += 1
    assert checked >= 2  # int8: the Linears with one scale group decode as the release's int8


def test_the_release_grid_keeps_per_channel_release_codes(small_ckpt, tmp_path):
    """Why `--grid release` exists: int8 from the release on its own grid reproduces every
    Linear it scales per output channel exactly; compressed-tensors' grid (max / 127.5)
    rounds them again."""
    from converter.layouts import open_checkpoint

    release = open_checkpoint(small_ckpt)
    spec = next(s for s in release.specs if s.role == "attn_q" and s.layer == 0)
    assert spec.scale_groups == 1
    exact = {}
    for grid in ("release", "compressed-tensors"):
        out = tmp_path / grid
        result = CliRunner().invoke(main, ["quantize", str(small_ckpt), str(out), "--scheme",
                                           "int8", "--grid", grid, "--tokenizer", "none",
                                           "--quiet"])
        assert result.exit_code == 0, result.output
        exact[grid] = np.array_equal(dense_transposed(open_checkpoint(out).read(spec)),
                                     dense_transposed(release.read(spec)))
    assert exact == {"release": True, "compressed-tensors": False}
