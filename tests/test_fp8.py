"""FP8 (e4m3): the numpy reference, torch's cast and the Triton kernel agree bit for bit;
compressed-tensors decompresses our output; verify passes its profile and catches mutations."""

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from converter.files.shards import SafetensorsReader, SafetensorsWriter
from converter.formats import FP8Linear, e4m3_to_f32, expand_scale
from converter.layouts import open_checkpoint
from converter.layouts.linears import dense_transposed
from grok1.cli import main
from quant.cpu import NotFinite
from quant.fp8 import e4m3_bits, quantize_fp8, quantize_fp8_cpu
from tests.conftest import bad_input
from tests.test_quant import release_matrix


def adversarial_values():
    grid = e4m3_to_f32(np.arange(256, dtype=np.uint8))
    finite = np.sort(grid[np.isfinite(grid)])
    midpoints = (finite[1:] + finite[:-1]) / 2  # exact ties: round to even
    rng = np.random.default_rng(0)
    spread = (rng.standard_normal(20000) * np.exp(rng.uniform(-12, 6, 20000))).astype(np.float32)
    edges = np.array([0.0, -0.0, 448.0, -448.0, 2.0**-6, 2.0**-9, 2.0**-10, 2.0**-6 * 0.999,
                      1.0625, 1.1875, 2.0**-9 * 1.5], np.float32)
    values = np.concatenate([finite, midpoints, np.nextafter(midpoints, 0),
                             np.nextafter(midpoints, 1000), spread, edges]).astype(np.float32)
    return np.clip(values, -448, 448)


def test_reference_equals_torchs_cast():
    values = adversarial_values()
    theirs = torch.from_numpy(values).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
    assert np.array_equal(e4m3_bits(values), theirs)


@pytest.mark.parametrize("block", [None, (128, 128), (16, 32)], ids=str)
def test_kernel_equals_the_cpu_path(block):
    from quant.kernels import fp8_triton

    rng = np.random.default_rng(1)
    for shape in ((40, 344), (256, 130)):
        x = (rng.standard_normal(shape) * np.exp(rng.uniform(-8, 4, (shape[0], 1)))).astype(
            np.float32)
        x[3] = 0  # an all-zero channel (scale 1)
        ours, stats = quantize_fp8(x, block)
        got, got_stats = fp8_triton(x, block, device="cpu")
        assert np.array_equal(got.bits, ours.bits) and np.array_equal(got.scale, ours.scale)
        assert got_stats["max_abs_err"] == pytest.approx(stats["max_abs_err"], rel=1e-6)
        assert got_stats["rel_rms"] == pytest.approx(stats["rel_rms"], rel=1e-5)


def fp8_sources(rng):
    """Release matrices (scale blocks of 43 rows across 128-row FP8 blocks, an outlier, a zero
    channel, subnormal weights whose scale underflows to 0) and dense float32 ones."""
    codes = rng.integers(-127, 128, (344, 300)).astype(np.int8)
    codes[:, 7] = 0
    codes[5, 9] = 127
    sources = [release_matrix(rng, 344, 300, 8, codes=codes),
               release_matrix(rng, 130, 40, 1),
               release_matrix(rng, 256, 16, 2, scales=np.full((2, 16), 1e-45, np.float32))]
    dense = (rng.standard_normal((256, 130)) * np.exp(rng.uniform(-8, 4, (1, 130)))).astype(
        np.float32)
    dense[:, 3] = 0
    tiny = np.zeros((128, 8), np.float32)
    tiny[0, :] = 1e-44
    return [*sources, dense, tiny]


@pytest.mark.parametrize("block", [None, (128, 128), (16, 32)], ids=str)
def test_cpu_path_equals_the_reference_and_torch(block):
    rng = np.random.default_rng(2)
    for value in fp8_sources(rng):
        x = dense_transposed(value)
        expected, stats = quantize_fp8(x, block)
        got, got_stats = quantize_fp8_cpu(value, block)
        assert np.array_equal(got.bits, expected.bits) and got.bits.shape == x.shape
        assert np.array_equal(got.scale, expected.scale)
        assert got_stats["max_abs_err"] == stats["max_abs_err"]
        if np.dot(x.reshape(-1), x.reshape(-1)):  # (the reference's float32 norm may underflow)
            assert got_stats["rel_rms"] == pytest.approx(stats["rel_rms"], rel=1e-6)
        per = torch.from_numpy(np.ascontiguousarray(expand_scale(expected.scale, x.shape,
                                                                 block)))
        with np.errstate(all="ignore"):
            ratio = (torch.from_numpy(x) / per).clamp(-448, 448)
        torch_bits = ratio.to(torch.float8_e4m3fn).view(torch.uint8).numpy()
        finite = per.numpy() > 0  # torch turns 0 / 0 into NaN's code; we (and 448's) into 0
        assert np.array_equal(got.bits[finite], torch_bits[finite])


@pytest.mark.parametrize("block", [None, (128, 128)], ids=str)
def test_kernel_on_release_codes_copied_as_they_are(block):
    """The CUDA path copies the release's int8 codes and scales to the device and dequantizes
    there (`device_matrix`; run here on CPU tensors): the same float32 matrix, the same bits."""
    from quant.kernels import device_matrix, fp8_triton

    for value in fp8_sources(np.random.default_rng(4))[:2]:
        matrix = device_matrix(value, "cpu")
        assert np.array_equal(matrix.numpy(), dense_transposed(value))
        got, _ = fp8_triton(matrix, block, device="cpu")
        expected, _ = quantize_fp8_cpu(value, block)
        assert np.array_equal(got.bits, expected.bits)
        assert np.array_equal(got.scale, expected.scale)


def test_cpu_path_refuses_nan_and_inf():
    rng = np.random.default_rng(3)
    nan = rng.uniform(1e-3, 1e-2, (1, 8)).astype(np.float32)
    nan[0, 2] = np.nan
    for value in (release_matrix(rng, 128, 8, 1, scales=nan),
                  np.full((128, 8), np.inf, np.float32)):
        with pytest.raises(NotFinite):
            quantize_fp8_cpu(value, None)


def quantize(src, dst, scheme):
    result = CliRunner().invoke(main, ["quantize", str(src), str(dst), "--scheme", scheme,
                                       "--quiet"])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def fp8(small_ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("fp8")
    quantize(small_ckpt, root / "fp8", "fp8")
    quantize(small_ckpt, root / "fp8-block", "fp8-block")
    return root


@pytest.mark.parametrize("name", ["fp8", "fp8-block"])
def test_compressed_tensors_reads_our_fp8(small_ckpt, fp8, name):
    from compressed_tensors.compressors.naive_quantized.base import FloatQuantizationCompressor
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme

    whole = json.loads((fp8 / name / "config.json").read_text())
    assert whole["torch_dtype"] == "bfloat16"  # what engines compute in, not the scales' f32
    config = whole["quantization_config"]
    QuantizationConfig.model_validate(config)
    assert config["format"] == "float-quantized"
    assert "re:model\\.layers\\.\\d+\\.moe_block\\.gate$" in config["ignore"]
    group = config["config_groups"]["group_0"]
    reader = SafetensorsReader(fp8 / name / "model.safetensors")
    base = "model.layers.1.moe_block.experts.2.linear_1"
    bits = reader.get(f"{base}.weight")
    scale = reader.get(f"{base}.weight_scale")
    state = {"weight": torch.from_numpy(bits).view(torch.float8_e4m3fn),
             "weight_scale": torch.from_numpy(scale)}
    scheme = QuantizationScheme(targets=group["targets"], weights=group["weights"])
    theirs = FloatQuantizationCompressor.decompress(state, scheme)["weight"].float().numpy()
    block = tuple(group["weights"].get("block_structure") or ()) or None
    ours = FP8Linear(bits, scale, block).dequantize().T
    np.testing.assert_array_equal(theirs, ours)
    release = open_checkpoint(small_ckpt)
    spec = next(s for s in release.specs if s.role == "moe_down" and s.layer == 1)
    exact = release.read(spec)[2].dequantize().T
    per = np.abs(ours - exact) / np.maximum(np.abs(exact), 1e-30)
    assert per[np.abs(exact) > scale.max() * 2**-6].max() <= 2**-4  # e4m3: 3 mantissa bits


@pytest.mark.parametrize("name", ["fp8", "fp8-block"])
def test_fp8_passes_its_profile(small_ckpt, fp8, name):
    result = CliRunner().invoke(main, ["verify", str(small_ckpt), str(fp8 / name), "--profile",
                                       "fp8", "--seq-len", "48", "--batch", "4", "--json", "-"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["metrics"]["kl_mean"] < 0.005


def mutate(src, dst, transform):
    shutil.copytree(src, dst)
    reader = SafetensorsReader(src / "model.safetensors")
    entries = [e for e, _ in reader.entries.values()]
    arrays = {e.name: transform(e.name, reader.get(e.name)) for e in entries}
    entries = [type(e)(e.name, e.dtype, arrays[e.name].shape) for e in entries]
    with SafetensorsWriter(dst / "model.safetensors", entries) as writer:
        for entry in entries:
            writer.write(entry.name, arrays[entry.name])


def test_a_scale_off_by_a_factor_fails(small_ckpt, fp8, tmp_path):
    mutate(fp8 / "fp8", tmp_path / "bad",
           lambda n, a: a * np.float32(1.5) if n.endswith("weight_scale") else a)
    result = CliRunner().invoke(main, ["verify", str(small_ckpt), str(tmp_path / "bad"),
                                       "--profile", "fp8", "--seq-len", "48", "--batch", "4"])
    assert result.exit_code == 1, result.output


def test_a_transposed_block_grid_is_refused(fp8, tmp_path):
    """A writer that lays the [out/128, in/128] grid out as [in/128, out/128] is caught by
    shape wherever the grid is not square (on `small`, the expert matrices)."""
    mutate(fp8 / "fp8-block", tmp_path / "bad",
           lambda n, a: np.ascontiguousarray(a.T) if n.endswith("weight_scale") else a)
    line = bad_input("convert", tmp_path / "bad", tmp_path / "out")
    assert "weight_scale has shape" in line


def test_fp8_options_and_card(small_ckpt, fp8, tmp_path):
    assert "--scheme fp8 takes no --group-size" in bad_input(
        "quantize", small_ckpt, tmp_path / "x", "--scheme", "fp8", "--group-size", "64")
    from converter.hub.client import model_card
    card = model_card(fp8 / "fp8-block", "me/grok-1-fp8")
    assert "FP8 e4m3 weights (128x128 blocks)" in card and "Hopper" in card
