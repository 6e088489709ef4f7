"""NVFP4 and MXFP4: our bytes are compressed-tensors 0.20.0's, computed by its own functions
(the observer's min/max, generate_gparam, calculate_qparams, the compressors) on the same
weights; its decompressors read our output back; the shared global scale of fused Linears;
verification passes the profiles and catches mutations."""

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from converter.files.shards import SafetensorsReader
from converter.formats import MXFP4Linear, NVFP4Linear
from converter.formats.fp4 import e2m1_codes, e2m1_values, unpack_nibbles
from converter.layouts import open_checkpoint
from converter.layouts.linears import dense_transposed
from converter.tensors import round_to_bf16
from grok1.cli import main
from quant.cpu import NotFinite
from quant.fp4 import linear_amax, mx_exponents, quantize_mxfp4, quantize_nvfp4
from tests.conftest import bad_input
from tests.test_fp8 import mutate
from tests.test_quant import release_matrix

PRESETS = {"nvfp4": "NVFP4A16", "mxfp4": "MXFP4A16"}


def ct_args(kind):
    from compressed_tensors.quantization import QuantizationScheme
    from compressed_tensors.quantization.quant_scheme import preset_name_to_scheme

    scheme = preset_name_to_scheme(PRESETS[kind], ["Linear"])
    assert isinstance(scheme, QuantizationScheme)
    return scheme


def ct_compress(kind, weight, fused=()):
    """compressed-tensors' parts of one [out, in] weight (a torch tensor in the model's dtype),
    as llm-compressor's weight calibration computes them: min/max per group in the weight's
    dtype, the global scale over the weight and the ones fused with it, then the compressor."""
    from compressed_tensors.compressors.mxfp4.base import MXFP4PackedCompressor
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam

    scheme = ct_args(kind)
    args = scheme.weights
    groups = weight.reshape(weight.shape[0], -1, args.group_size)
    low, high = torch.amin(groups, dim=-1), torch.amax(groups, dim=-1)
    state = {"weight": weight}
    global_scale = None
    if kind == "nvfp4":
        amax = torch.max(torch.stack([w.abs().max() for w in (weight, *fused)]))
        global_scale = generate_gparam(-amax.reshape(1), amax.reshape(1))
        state["weight_global_scale"] = global_scale
    scale, _ = calculate_qparams(low, high, args, global_scale=global_scale)
    state["weight_scale"] = scale
    compressor = NVFP4PackedCompressor if kind == "nvfp4" else MXFP4PackedCompressor
    return {k: v.numpy() if v.dtype != torch.float8_e4m3fn else v.view(torch.uint8).numpy()
            for k, v in compressor.compress(state, scheme).items()}


def ct_decompress(kind, parts):
    """compressed-tensors' decompressed weight (its dtype: bf16) of our parts, as float32."""
    from compressed_tensors.compressors.mxfp4.base import MXFP4PackedCompressor
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor

    state = {"weight_packed": torch.from_numpy(parts["weight_packed"])}
    if kind == "nvfp4":
        state["weight_scale"] = torch.from_numpy(parts["weight_scale"]).view(torch.float8_e4m3fn)
        state["weight_global_scale"] = torch.from_numpy(parts["weight_global_scale"])
        compressor = NVFP4PackedCompressor
    else:
        state["weight_scale"] = torch.from_numpy(parts["weight_scale"])
        compressor = MXFP4PackedCompressor
    return compressor.decompress(state, ct_args(kind))["weight"].float().numpy()


def weights(rng, shape=(48, 256)):
    """[out, in] float32 weights with the edge cases: an all-zero group, a zero row, exact
    e2m1 ties after scaling, -0.0, a huge outlier, subnormals, group maxima just below and at
    the MX round-up mantissa 1.75."""
    x = (rng.standard_normal(shape) * np.exp(rng.uniform(-6, 3, (shape[0], 1)))).astype(
        np.float32)
    x[0, :32] = 0
    x[1] = 0
    x[2, :16] = np.array([6, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5, -0.25, -0.75, -1.25,
                          -1.75, -2.5, -3.5, -5, -6], np.float32)
    x[3, :16] = -0.0
    x[3, 16] = -1e-3
    x[4, 5] = 3e4
    x[5, :32] = 1e-40
    x[6, :32] = np.float32(1.75)
    x[7, :32] = np.nextafter(np.float32(1.75), np.float32(0))
    x[8, 32:64] = np.float32(1.75 * 2.0**-100)
    return x


@pytest.mark.parametrize("arithmetic", ["f32", "bf16"])
def test_nvfp4_bytes_are_compressed_tensors(arithmetic):
    rng = np.random.default_rng(0)
    for trial in range(3):
        x = weights(rng)
        partner = weights(rng) * np.float32(3 if trial == 1 else 0.5)
        if arithmetic == "bf16":  # what llm-compressor quantizes: a bf16 model
            x, partner = round_to_bf16(x), round_to_bf16(partner)
        dtype = torch.bfloat16 if arithmetic == "bf16" else torch.float32
        theirs = ct_compress("nvfp4", torch.from_numpy(x).to(dtype),
                             [torch.from_numpy(partner).to(dtype)])
        fused = max(linear_amax(x.T.copy()), linear_amax(partner.T.copy()))
        ours, stats = quantize_nvfp4(np.ascontiguousarray(x.T), fused, arithmetic)
        for part in ("weight_packed", "weight_scale", "weight_global_scale"):
            assert ours[part].dtype == theirs[part].dtype, part
            np.testing.assert_array_equal(ours[part], theirs[part], err_msg=part)
        back = ct_decompress("nvfp4", ours)
        mine = NVFP4Linear(ours["weight_packed"], ours["weight_scale"],
                           ours["weight_global_scale"][0]).dequantize().T
        np.testing.assert_array_equal(back, round_to_bf16(mine))
        error = mine - x
        assert stats["rel_rms"] == pytest.approx(
            np.sqrt((error.astype(np.float64) ** 2).sum() / (x.astype(np.float64) ** 2).sum()),
            rel=1e-6)


def test_mxfp4_bytes_are_compressed_tensors():
    rng = np.random.default_rng(1)
    for dtype in (torch.float32, torch.bfloat16):
        x = weights(rng)
        if dtype == torch.bfloat16:
            x = round_to_bf16(x)
        theirs = ct_compress("mxfp4", torch.from_numpy(x).to(dtype))
        ours, _ = quantize_mxfp4(np.ascontiguousarray(x.T))
        for part in ("weight_packed", "weight_scale"):
            assert ours[part].dtype == theirs[part].dtype, part
            np.testing.assert_array_equal(ours[part], theirs[part], err_msg=part)
        back = ct_decompress("mxfp4", ours)
        mine = MXFP4Linear(ours["weight_packed"], ours["weight_scale"]).dequantize().T
        np.testing.assert_array_equal(back, round_to_bf16(mine))


def test_mx_exponents_round_up_at_mantissa_one_and_three_quarters():
    """compressed-tensors' rule, not ggml's: 1.75 * 2^k takes the exponent of 2^(k+1)."""
    amax = np.array([1.75, np.nextafter(np.float32(1.75), np.float32(0)), 1.0, 0.0, 1e-40,
                     6.0, 6.5, 7.0, 8.0], np.float32)
    assert list(mx_exponents(amax)) == [126, 125, 125, 0, 0, 127, 127, 128, 128]


def test_e2m1_rounding_is_cast_to_fp4():
    from compressed_tensors.compressors.nvfp4.helpers import pack_fp4_to_uint8
    from compressed_tensors.quantization.utils.fp4_utils import cast_to_fp4

    grid = np.array([0, .5, 1, 1.5, 2, 3, 4, 6], np.float32)
    ties = (grid[1:] + grid[:-1]) / 2
    values = np.concatenate([grid, ties, np.nextafter(ties, 0), np.nextafter(ties, 9),
                             [7, 100, -0.0, 1e-30]])
    values = np.concatenate([values, -values]).astype(np.float32)
    values = values[: len(values) // 2 * 2].reshape(1, -1)
    theirs = pack_fp4_to_uint8(cast_to_fp4(torch.from_numpy(values.copy()))).numpy()
    codes = e2m1_codes(values)
    assert np.array_equal(codes[:, 0::2] | (codes[:, 1::2] << 4), theirs)
    assert np.array_equal(unpack_nibbles(theirs), codes)
    assert np.array_equal(np.abs(e2m1_values(codes)), np.abs(cast_to_fp4(
        torch.from_numpy(values.copy())).numpy()))


def test_release_int8_source_equals_its_dense_copy():
    """The release's int8 (extremes from its codes, rows filled band by band) gives the bytes
    of the same weights given densely."""
    rng = np.random.default_rng(2)
    codes = rng.integers(-127, 128, (256, 40)).astype(np.int8)
    codes[:32, 3] = 0
    value = release_matrix(rng, 256, 40, 8, codes=codes)
    dense = dense_transposed(value).T.copy()
    amax = linear_amax(value)
    assert amax == np.abs(dense).max()
    for got, expected in ((quantize_nvfp4(value, amax * 2), quantize_nvfp4(dense, amax * 2)),
                          (quantize_mxfp4(value), quantize_mxfp4(dense))):
        for part in got[0]:
            np.testing.assert_array_equal(got[0][part], expected[0][part])


def test_nan_and_inf_are_refused():
    x = np.ones((32, 8), np.float32)
    x[3, 2] = np.nan
    for quantize in (lambda v: quantize_nvfp4(v, 1.0), quantize_mxfp4, linear_amax):
        with pytest.raises(NotFinite):
            quantize(x)
        with pytest.raises(NotFinite):
            quantize(np.full((32, 8), np.inf, np.float32))


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def test_widths_groups_do_not_cover_are_refused(small_ckpt, tmp_path):
    for scheme in ("nvfp4-a16", "mxfp4"):
        line = bad_input("quantize", small_ckpt, tmp_path / scheme, "--scheme", scheme)
        assert "input width 1368 is not a multiple of" in line
        assert not (tmp_path / scheme).exists()


@pytest.fixture(scope="module")
def fp4(fp4_ckpt, tmp_path_factory):
    small_ckpt = fp4_ckpt
    root = tmp_path_factory.mktemp("fp4")
    for scheme in ("nvfp4-a16", "mxfp4", "nvfp4"):
        result = run("quantize", small_ckpt, root / scheme, "--scheme", scheme, "--quiet")
        assert result.exit_code == 0, result.output
    for scheme in ("nvfp4-a16", "nvfp4"):
        result = run("quantize", small_ckpt, root / f"{scheme}-sglang", "--scheme", scheme,
                     "--names", "sglang", "--quiet")
        assert result.exit_code == 0, result.output
    return root


@pytest.mark.parametrize("scheme,kind", [("nvfp4-a16", "nvfp4"), ("mxfp4", "mxfp4")])
def test_compressed_tensors_reads_our_output(fp4_ckpt, fp4, scheme, kind):
    from compressed_tensors.quantization import QuantizationConfig

    config = json.loads((fp4 / scheme / "config.json").read_text())["quantization_config"]
    QuantizationConfig.model_validate(config)
    assert config["format"] == f"{kind}-pack-quantized"
    group = config["config_groups"]["group_0"]
    assert group["weights"] == ct_args(kind).weights.model_dump(mode="json")
    assert group["input_activations"] is None
    reader = SafetensorsReader(fp4 / scheme / "model.safetensors")
    release = open_checkpoint(fp4_ckpt)
    spec = next(s for s in release.specs if s.role == "moe_down" and s.layer == 1)
    base = "model.layers.1.moe_block.experts.2.linear_1"
    parts = {p: reader.get(f"{base}.{p}") for p in (
        "weight_packed", "weight_scale", "weight_global_scale") if f"{base}.{p}" in reader.entries}
    exact = release.read(spec)[2].dequantize().T
    back = ct_decompress(kind, parts)
    assert back.shape == exact.shape
    error = np.abs(back - exact).max() / np.abs(exact).max()
    assert 0 < error < 0.2


def test_fused_linears_share_one_global_scale(fp4_ckpt, fp4):
    reader = SafetensorsReader(fp4 / "nvfp4-a16" / "model.safetensors")
    release = open_checkpoint(fp4_ckpt)
    for layer in range(2):
        qkv = {reader.get(f"model.layers.{layer}.attn.{p}_proj.weight_global_scale")[0]
               for p in "qkv"}
        assert len(qkv) == 1
        o = reader.get(f"model.layers.{layer}.attn.o_proj.weight_global_scale")[0]
        spec = next(s for s in release.specs if s.role == "attn_o" and s.layer == layer)
        assert o == np.float32(448 * 6) / np.float32(linear_amax(release.read(spec)))
        for expert in range(2):
            base = f"model.layers.{layer}.moe_block.experts.{expert}"
            gate, up = (reader.get(f"{base}.{n}.weight_global_scale")[0]
                        for n in ("linear", "linear_v"))
            assert gate == up


def test_sglang_names_are_what_llm_compressor_fuses(fp4):
    """llm-compressor's model_free_ptq fuses `self_attn.q/k/v_proj` and `w1`/`w3` (its
    DEFAULT_FUSED_MAPPINGS, 0.14): with --names sglang our global scales are shared as its."""
    reader = SafetensorsReader(fp4 / "nvfp4-a16-sglang" / "model.safetensors")
    base = "model.layers.0.block_sparse_moe.experts.1"
    assert reader.get(f"{base}.w1.weight_global_scale") == reader.get(
        f"{base}.w3.weight_global_scale")
    qkv = {reader.get(f"model.layers.0.self_attn.{p}_proj.weight_global_scale")[0]
           for p in "qkv"}
    assert len(qkv) == 1


def verify(fp4_ckpt, folder):
    return run("verify", fp4_ckpt, folder, "--profile", "fp4", "--seq-len", "48",
               "--batch", "4", "--json", "-")


@pytest.mark.parametrize("scheme", ["nvfp4-a16", "mxfp4", "nvfp4"])
def test_fp4_passes_its_profile(fp4_ckpt, fp4, scheme):
    result = verify(fp4_ckpt, fp4 / scheme)
    assert result.exit_code == 0, result.output


def _swap_nibbles(name, array):
    return (array >> 4) | (array << 4) if name.endswith("weight_packed") else array


def _bump_exponent(name, array):
    return array + np.uint8(1) if name.endswith("weight_scale") else array


def _scale_global(name, array):
    """q/k/v's shared global scale a quarter of what it was (their weights 4x: a uniform factor
    on every Linear, or on one that a norm follows, would be undone by Grok-1's norms)."""
    attention = ".attn." in name and ".o_proj." not in name
    return array * np.float32(0.25) if attention and name.endswith("weight_global_scale") \
        else array


def _unshare_gate_global(name, array):
    """The gate's global scale no longer the up's: the weight is the same (scale / global),
    but an engine that fuses gate and up computes the up with the gate's global."""
    return array * np.float32(1.5) if name.endswith(".linear.weight_global_scale") else array


def _scale_attention_inputs(name, array):
    """q/k/v's inputs quantized with a global scale 100x too large (their 16-value blocks'
    scales saturate e4m3: the inputs are clipped)."""
    attention = ".attn." in name and ".o_proj." not in name
    return array * np.float32(100) if attention and name.endswith("input_global_scale") \
        else array


@pytest.mark.parametrize("scheme,transform", [
    ("nvfp4-a16", _swap_nibbles), ("nvfp4-a16", _scale_global),
    ("nvfp4", _scale_attention_inputs),
    ("mxfp4", _swap_nibbles), ("mxfp4", _bump_exponent)], ids=lambda v: getattr(
        v, "__name__", v))
def test_mutations_fail_verification(fp4_ckpt, fp4, tmp_path, scheme, transform):
    mutate(fp4 / scheme, tmp_path / "bad", transform)
    assert verify(fp4_ckpt, tmp_path / "bad").exit_code == 1


def test_an_unshared_gate_global_scale_is_refused(fp4_ckpt, fp4, tmp_path):
    mutate(fp4 / "nvfp4-a16", tmp_path / "bad", _unshare_gate_global)
    result = run("verify", fp4_ckpt, tmp_path / "bad", "--seq-len", "8", "--batch", "1")
    assert result.exit_code == 2 and "global_scale of fused Linears differ" in result.output


def test_activation_quantization_is_compressed_tensors():
    """The forward's NVFP4 input quantization (W4A4) is compressed-tensors' dynamic local
    fake quantization with the stored input global scale."""
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.quant_scheme import preset_name_to_scheme
    from compressed_tensors.quantization.utils.helpers import compute_dynamic_scales_and_zp

    from converter.forward.activations import nvfp4_activations
    from quant.fp4 import nvfp4_global_scale

    args = preset_name_to_scheme("NVFP4", ["Linear"]).input_activations
    x = weights(np.random.default_rng(5), (40, 128))
    x[9] = 0
    for amax in (float(np.abs(x).max()), float(np.abs(x).max()) / 50, 1e-30):
        g = torch.tensor([nvfp4_global_scale(amax)])
        value = torch.from_numpy(x)
        scale, zero = compute_dynamic_scales_and_zp(value=value, args=args, module=None,
                                                   global_scale=g)
        theirs = fake_quantize(value, scale, zero, args, global_scale=g)
        np.testing.assert_array_equal(nvfp4_activations(value, float(g[0])).numpy(),
                                      theirs.numpy())


def test_calibration_takes_real_rows_only():
    from quant.calibrate import _Observed

    seen = _Observed({})
    x = torch.ones(4, 8)
    x[2] = 1000
    seen.linear_input(0, "attn_q", None, x, torch.tensor([True, True, False, True]))
    seen.linear_input(0, "moe_gate", 3, x[:2], torch.tensor([False, False]))
    assert seen.amax == {(0, "attn_q", -1): 1.0}


def test_w4a4_output(fp4_ckpt, fp4):
    """NVFP4 W4A4: compressed-tensors' NVFP4 preset; an input global scale per Linear, from
    the calibration it records, shared by q/k/v and by every expert of a layer per role."""
    from compressed_tensors.quantization import QuantizationConfig

    from quant.fp4 import nvfp4_global_scale

    folder = fp4 / "nvfp4"
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    QuantizationConfig.model_validate(config)
    group = config["config_groups"]["group_0"]
    preset = ct_args("nvfp4").__class__.model_validate(
        {"targets": ["Linear"], **__import__(
            "compressed_tensors.quantization.quant_scheme", fromlist=["NVFP4"]).NVFP4})
    assert group["input_activations"] == preset.input_activations.model_dump(mode="json")
    calibration = json.loads((folder / "calibration.json").read_text())
    assert not (folder / "calibration_state.npz").exists()
    reader = SafetensorsReader(folder / "model.safetensors")
    amax = calibration["input_amax"]
    for layer in range(2):
        q = reader.get(f"model.layers.{layer}.attn.q_proj.input_global_scale")
        assert q[0] == nvfp4_global_scale(amax[f"transformer/decoder_layer_{layer}/"
                                               "multi_head_attention/query/w"])
        for p in "kv":
            assert reader.get(f"model.layers.{layer}.attn.{p}_proj.input_global_scale") == q
        for role in ("linear", "linear_v", "linear_1"):
            scales = {float(reader.get(f"model.layers.{layer}.moe_block.experts.{e}.{role}."
                                       "input_global_scale")[0]) for e in range(8)}
            assert len(scales) == 1
        gate = reader.get(f"model.layers.{layer}.moe_block.experts.0.linear.input_global_scale")
        assert gate == reader.get(
            f"model.layers.{layer}.moe_block.experts.0.linear_v.input_global_scale")


def test_calibration_resumes_after_an_interruption(fp4_ckpt, fp4, tmp_path, monkeypatch):
    """Cut short after two layers, `--resume` continues from the third with the saved hidden
    states: the same bytes as an uninterrupted run."""
    import quant.calibrate as calibrate

    save, starts, count = calibrate._save_state, [], [0]

    def interrupted(*args, **kwargs):
        save(*args, **kwargs)
        count[0] += 1
        if count[0] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(calibrate, "_save_state", interrupted)
    out = tmp_path / "w4a4"
    result = run("quantize", fp4_ckpt, out, "--scheme", "nvfp4", "--quiet")
    assert result.exit_code != 0 and (out / "calibration_state.npz").is_file()
    monkeypatch.setattr(calibrate, "_save_state", save)
    observe = calibrate.observe
    monkeypatch.setattr(calibrate, "observe", lambda *a, **k: (starts.append(k["first"]),
                                                               observe(*a, **k)))
    assert run("quantize", fp4_ckpt, out, "--scheme", "nvfp4", "--quiet").exit_code == 2
    result = run("quantize", fp4_ckpt, out, "--scheme", "nvfp4", "--quiet", "--resume")
    assert result.exit_code == 0, result.output
    assert starts == [2]
    for name in ("model.safetensors", "calibration.json"):
        assert (out / name).read_bytes() == (fp4 / "nvfp4" / name).read_bytes()


def test_calibration_text_is_for_w4a4_only(fp4_ckpt, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("some words\n")
    line = bad_input("quantize", fp4_ckpt, tmp_path / "out", "--scheme", "nvfp4",
                     "--text-file", tmp_path)
    assert "a folder, not a text file" in line
    line = bad_input("quantize", fp4_ckpt, tmp_path / "out", "--scheme", "mxfp4",
                     "--text-file", text)
    assert "--text-file calibrates activation scales" in line


# What SGLang 0.5.23 creates for NVFP4 W4A4 (its released source, not run: it needs a Blackwell
# GPU): compressed_tensors_w4a4_nvfp4.py for Linears (weight_packed uint8 [out, in/2],
# weight_scale e4m3 [out, in/16], weight_global_scale and input_global_scale float32, one per
# fused part; it keeps the max of each over q/k/v and does not rescale the block scales, so
# they must be equal) and compressed_tensors_w4a4_nvfp4_moe.py for the experts (w13_* from
# each expert's w1 and w3, w2_* from w2: the same per-expert parts; it scales w1 and w3 by w1's
# weight_global_scale and, on its FlashInfer TRT-LLM path, quantizes every expert's inputs
# with the smallest input_global_scale of the layer).
SGLANG_NVFP4_PARTS = {"weight_packed": ("U8", lambda o, i: (o, i // 2)),
                      "weight_scale": ("F8_E4M3", lambda o, i: (o, i // 16)),
                      "weight_global_scale": ("F32", lambda o, i: (1,)),
                      "input_global_scale": ("F32", lambda o, i: (1,))}


def test_w4a4_with_sglang_names_is_what_sglang_creates(fp4_ckpt, fp4):
    from converter.model import GROK1
    from tests.test_serving import CONSUMER_NAMES

    folder = fp4 / "nvfp4-sglang"
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization_config"]["format"] == "nvfp4-pack-quantized"
    assert "lm_head" in config["quantization_config"]["ignore"]
    release = open_checkpoint(fp4_ckpt)
    reader = SafetensorsReader(folder / "model.safetensors")
    names = set(reader.entries)
    for spec in (s for s in release.specs if s.layer == 1 and s.role in GROK1.linear_roles):
        out, cols = spec.shape[-1], spec.shape[-2]
        for e in range(spec.shape[0]) if spec.param.expert else [None]:
            module = f"model.layers.1.{CONSUMER_NAMES['sglang'][spec.role].format(e=e)}"
            for part, (dtype, shape) in SGLANG_NVFP4_PARTS.items():
                entry = reader.entries[f"{module}.{part}"][0]
                assert (entry.dtype, tuple(entry.shape)) == (dtype, shape(out, cols)), module
                names.discard(f"{module}.{part}")
            if e is not None:
                gate, up = (reader.get(f"model.layers.1.block_sparse_moe.experts.{e}.{w}."
                                       "weight_global_scale") for w in ("w1", "w3"))
                assert gate == up
    assert not [n for n in names if n.startswith("model.layers.1.") and "_proj." in n]


@pytest.mark.parametrize("scheme,part,value,message", [
    ("nvfp4-a16", "weight_global_scale", np.float32(0), "weight_global_scale must be one positive"),
    ("nvfp4-a16", "weight_global_scale", np.float32(np.nan), "weight_global_scale must be one"),
    ("nvfp4", "input_global_scale", np.float32(-1), "input_global_scale must be one positive"),
    ("mxfp4", "weight_scale", np.uint8(255), "scale exponent of 255")], ids=str)
def test_impossible_scales_are_refused(fp4, tmp_path, scheme, part, value, message):
    """One Linear's scale made impossible (zero, NaN, negative, E8M0's NaN): a one-line error
    naming the tensor, exit 2."""
    target = f"model.layers.1.attn.o_proj.{part}"
    mutate(fp4 / scheme, tmp_path / "bad",
           lambda n, a: np.full_like(a, value) if n == target else a)
    line = bad_input("convert", tmp_path / "bad", tmp_path / "out", "--to", "hf", "--dtype",
                     "f32")
    assert message in line
    assert "o_proj" in line or "multi_head_attention/linear/" in line


def test_the_code_table_is_the_rounding_rule():
    """e2m1_codes looks codes up by a float's top 16 bits (a low bit set: bit 16 set); the
    same codes as the thresholds themselves, at the ties, beside them and on random bits."""
    from converter.formats.fp4 import _rounded

    rng = np.random.default_rng(6)
    grid = np.array([0, .25, .5, .75, 1, 1.25, 1.5, 1.75, 2, 2.5, 3, 3.5, 4, 5, 6, 7, 1e30],
                    np.float32)
    beside = np.concatenate([grid, np.nextafter(grid, 0), np.nextafter(grid, np.float32(99))])
    bits = rng.integers(0, 2**32, 1 << 20, dtype=np.uint64).astype(np.uint32).view(np.float32)
    spread = (rng.standard_normal(1 << 20) * np.exp(rng.uniform(-20, 5, 1 << 20))).astype(
        np.float32)
    for values in (np.concatenate([beside, -beside, [-1e-45, 1e-45]]).astype(np.float32),
                   bits[np.isfinite(bits)], spread):
        assert np.array_equal(e2m1_codes(values), _rounded(values))


def test_w4a4_calibrates_on_the_given_text(tmp_path):
    """--text-file: the documents' real tokens are what calibration counts (a model with
    Grok-1's vocabulary, so text is tokenized), and the library verb takes the same."""
    import grok1
    from converter.generate import generate_checkpoint
    from converter.model.config import Grok1Config

    source = tmp_path / "ckpt"
    generate_checkpoint(source, Grok1Config.preset("text", ffn_size=256), seed=4, quiet=True)
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog.\n\nA second, longer document "
                    "about nothing in particular, to be padded against the first.\n")
    result = run("quantize", source, tmp_path / "cli", "--scheme", "nvfp4", "--text-file", text,
                 "--quiet")
    assert result.exit_code == 0, result.output
    calibration = json.loads((tmp_path / "cli" / "calibration.json").read_text())
    assert calibration["sequences"] == 2
    assert 20 < calibration["real_tokens"] < calibration["positions"]  # the first is padded
    grok1.quantize(source, tmp_path / "api", "nvfp4", text_files=[text], quiet=True)
    for name in ("model.safetensors", "calibration.json"):
        assert (tmp_path / "api" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes()


@pytest.mark.parametrize("kind,arithmetic", [("nvfp4", "f32"), ("nvfp4", "bf16"),
                                             ("mxfp4", "f32")])
def test_kernel_equals_the_cpu_path(kind, arithmetic):
    """The Triton kernel (run here by TRITON_INTERPRET=1 on CPU tensors, the release's codes
    copied as they are by device_matrix) gives the CPU path's bytes and statistics."""
    from quant.fp4 import nvfp4_global_scale
    from quant.kernels import device_matrix, fp4_triton

    rng = np.random.default_rng(7)
    codes = rng.integers(-127, 128, (256, 48)).astype(np.int8)
    codes[:32, 5] = 0
    sources = [release_matrix(rng, 256, 48, 8, codes=codes),
               np.ascontiguousarray(weights(rng, (40, 256)).T)]
    for value in sources:
        own = linear_amax(value)
        for amax in (own, own * 3):
            if kind == "nvfp4":
                expected, stats = quantize_nvfp4(value, amax, arithmetic)
            else:
                expected, stats = quantize_mxfp4(value)
            got, got_stats = fp4_triton(device_matrix(value, "cpu"), kind,
                                        nvfp4_global_scale(amax, arithmetic), arithmetic,
                                        block_elems=256)
            assert sorted(got) == sorted(expected)
            for part in expected:
                assert got[part].dtype == expected[part].dtype, part
                np.testing.assert_array_equal(got[part], expected[part], err_msg=part)
            assert got_stats["clipped_pct"] == stats["clipped_pct"]
            assert got_stats["max_abs_err"] == pytest.approx(stats["max_abs_err"], rel=1e-6)
            assert got_stats["rel_rms"] == pytest.approx(stats["rel_rms"], rel=1e-5)


def test_pipeline_to_w4a4_calibrates_verifies_and_publishes(fp4_ckpt, tmp_path):
    """`grok1 pipeline --to nvfp4` downloads from the local Hub, calibrates (default tokens),
    verifies against the fp4 profile and publishes the calibration beside the weights."""
    from tests.test_hub import Server, grok1

    root = tmp_path / "hub"
    shutil.copytree(fp4_ckpt, root / "xai-org" / "grok-1")
    server = Server(root, tmp_path)
    try:
        done = grok1(server, tmp_path, "pipeline", "--to", "nvfp4", "--work-dir",
                     tmp_path / "work", "--upload", "me/grok-1-nvfp4", "--batch", "2",
                     "--seq-len", "16", check=0)
    finally:
        server.stop()
    assert "profile: fp4" in done.stdout and "PASS" in done.stdout
    published = root / "me" / "grok-1-nvfp4"
    assert (published / "calibration.json").is_file()
    assert "Blackwell" in (published / "README.md").read_text()
