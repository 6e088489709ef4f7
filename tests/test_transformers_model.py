"""Every Hugging Face output loads in transformers (5.23 here, on the CPU) through the model
files it ships, and computes what the toolchain's forward computes: the upstream fixture's logits
within 2e-4, `grok1 logits` on each compressed-tensors output, `generate()` with its KV cache the
same as full forwards, left padding the same as none."""

from __future__ import annotations

import numpy as np
import pytest

from converter.convert import convert
from converter.forward.drive import torch_logits
from converter.generate import generate_checkpoint
from converter.hf_model import AUTO_MAP, MODEL_FILES, register
from converter.layouts import open_checkpoint
from converter.layouts.base import TargetOptions
from converter.layouts.hf import CONTAINERS
from converter.model.config import Grok1Config
from grok1.calibration import calibration_tokens
from quant.registry import quantize_checkpoint
from quant.schemes import SchemeOptions
from tests.test_forward import TOLERANCE

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")

# Dimensions serving kernels take: multiples of 128 (FP8 blocks of 128x128, dynamic group-128
# activations) and head size 128.
SERVE = Grok1Config(layers=2, emb=512, q_heads=4, kv_heads=2, key_size=128, vocab=4096,
                    ffn_size=1024, emb_mult=512 ** 0.5, attn_mult=128 ** -0.5)
TOKENS = np.random.default_rng(7).integers(3, 4096, (2, 12))


def load(folder, **kwargs):
    """The output as transformers loads it, float32 unless told otherwise."""
    kwargs.setdefault("dtype", torch.float32)
    return transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True,
                                                             **kwargs)


def hf_logits(model, tokens, **kwargs):
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(tokens)), **kwargs).logits.numpy()


@pytest.fixture(scope="module")
def serve_ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve") / "ckpt"
    generate_checkpoint(folder, SERVE, seed=3, quiet=True)
    return folder


@pytest.fixture(scope="module")
def outputs(serve_ckpt, tmp_path_factory):
    """One folder per kind of Hugging Face output the toolchain writes."""
    root = tmp_path_factory.mktemp("outputs")
    made = {}
    for dtype in ("f32", "bf16", "int8"):
        made[f"convert-{dtype}"] = root / f"convert-{dtype}"
        convert(serve_ckpt, made[f"convert-{dtype}"], to="hf", quiet=True,
                options=TargetOptions(dtype=dtype, tokenizer="none"))
    made["torch-f32"] = root / "torch-f32"
    convert(serve_ckpt, made["torch-f32"], to="torch", quiet=True,
            options=TargetOptions(dtype="f32", tokenizer="none"))
    made["sglang-f32"] = root / "sglang-f32"
    convert(serve_ckpt, made["sglang-f32"], to="hf", quiet=True,
            options=TargetOptions(dtype="f32", names="sglang", tokenizer="none"))
    for scheme in ("int8", "int4", "fp8", "fp8-block", "nvfp4-a16", "mxfp4"):
        made[scheme] = root / scheme
        quantize_checkpoint(serve_ckpt, made[scheme], scheme, tokenizer="none", quiet=True)
    made["nvfp4"] = root / "nvfp4"
    quantize_checkpoint(serve_ckpt, made["nvfp4"], "nvfp4", tokenizer="none", quiet=True,
                        calibration=calibration_tokens(serve_ckpt)[0])
    made["int4-asym"] = root / "int4-asym"
    quantize_checkpoint(serve_ckpt, made["int4-asym"], "int4", SchemeOptions(symmetric=False),
                        tokenizer="none", quiet=True)
    return made


def ours(folder):
    return torch_logits(open_checkpoint(folder), TOKENS)


@pytest.mark.parametrize("names", ["hpcai", "sglang"])
def test_fixture_logits_through_transformers(upstream, tmp_path, names):
    with np.load(upstream / "oracle.npz") as data:
        tokens, expected = data["tokens"], data["logits_f32"]
    convert(upstream, tmp_path / "out", to="hf", quiet=True,
            options=TargetOptions(dtype="f32", names=names, tokenizer="none"))
    model = load(tmp_path / "out")
    logits = hf_logits(model, tokens, attention_mask=torch.from_numpy(tokens != 0))
    assert np.abs(logits - expected)[tokens != 0].max() <= TOLERANCE


@pytest.mark.parametrize("kind", ["convert-f32", "convert-bf16", "convert-int8", "torch-f32",
                                  "sglang-f32", "int8", "int4"])
def test_output_logits_equal_grok1_logits(outputs, kind):
    logits = hf_logits(load(outputs[kind]), TOKENS)
    assert np.abs(logits - ours(outputs[kind])).max() <= 2e-5


@pytest.mark.parametrize("kind", ["fp8", "fp8-block"])
def test_fp8_weights_equal_grok1_logits_and_activations_are_quantized(outputs, kind):
    from compressed_tensors.quantization.lifecycle.helpers import disable_quantization

    model = load(outputs[kind])
    w8a8 = hf_logits(model, TOKENS)  # activations quantized to FP8 on the fly, as served
    model.apply(disable_quantization)
    weights_only = hf_logits(model, TOKENS)
    reference = ours(outputs[kind])
    assert np.abs(weights_only - reference).max() <= 2e-5
    assert 1e-4 < np.abs(w8a8 - reference).max() < 1.0


@pytest.mark.parametrize("kind", ["nvfp4-a16", "mxfp4", "nvfp4"])
def test_fp4_weights_load_in_transformers_as_ours(outputs, kind):
    """compressed-tensors decompresses FP4 to bf16 (transformers then computes in bf16 only):
    every Linear's weight is ours rounded to bf16, exactly; the bf16 logits (W4A4: with the
    inputs quantized as served) follow ours."""
    from converter.tensors import round_to_bf16

    model = load(outputs[kind], dtype=torch.bfloat16)
    logits, reference = hf_logits(model, TOKENS).astype(np.float32), ours(outputs[kind])
    assert np.abs(logits - reference).max() <= 0.05 * np.abs(reference).max()
    reader = open_checkpoint(outputs[kind])  # the weights, decompressed by the first forward
    modules = dict(model.named_modules())
    checked = 0
    for spec in reader.specs:
        if not spec.param.linear:
            continue
        for expert in range(spec.shape[0]) if spec.param.expert else (None,):
            name = reader.scheme.module(spec.role, layer=spec.layer, expert=expert)
            value = (reader.read_expert(spec, expert) if expert is not None
                     else reader.read(spec)).dequantize()
            weight = modules[name].weight.detach().float().numpy()
            assert np.array_equal(weight, round_to_bf16(np.ascontiguousarray(value.T))), name
            checked += 1
    assert checked == SERVE.layers * (4 + 3 * SERVE.experts)


def test_asymmetric_packing_is_refused_by_transformers_as_the_serving_table_says(outputs):
    from converter.report.serving import ENGINES, kind_of, serving_engines

    assert ENGINES["transformers"] not in serving_engines(kind_of(outputs["int4-asym"]))
    with pytest.raises(RuntimeError, match="mismatch"):
        load(outputs["int4-asym"])


def test_generate_with_the_cache_equals_full_forwards(outputs):
    model = load(outputs["convert-f32"])
    prompt = torch.from_numpy(TOKENS[:1, :6])
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        sequence = prompt
        for step in range(8):
            full = model(sequence, use_cache=False).logits[:, -1]
            assert torch.allclose(full, out.logits[step], atol=2e-5, rtol=0)
            sequence = torch.cat([sequence, full.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out.sequences, sequence)


def test_left_padding_generates_as_each_prompt_alone(outputs):
    model = load(outputs["convert-f32"])
    short, long = TOKENS[0, :4], TOKENS[1, :9]
    batch = torch.zeros(2, 9, dtype=torch.long)
    batch[0, 5:], batch[1] = torch.from_numpy(short), torch.from_numpy(long)
    mask = batch != 0
    with torch.no_grad():
        together = model.generate(batch, attention_mask=mask, max_new_tokens=5, do_sample=False,
                                  pad_token_id=0)
        for row, prompt in enumerate((short, long)):
            alone = model.generate(torch.from_numpy(prompt)[None], max_new_tokens=5,
                                   do_sample=False, pad_token_id=0)
            assert torch.equal(together[row, 9:], alone[0, len(prompt):])


def test_bf16_output_loads_in_bf16_with_float32_norms_and_router(outputs):
    model = load(outputs["convert-bf16"], dtype="auto")
    layer = model.model.layers[0]
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert layer.attn.q_proj.weight.dtype == torch.bfloat16
    assert layer.pre_attn_norm.scale.dtype == torch.float32
    assert layer.moe_block.gate.weight.dtype == torch.float32
    logits = hf_logits(model, TOKENS)
    agree = (logits.argmax(-1) == ours(outputs["convert-bf16"]).argmax(-1)).mean()
    assert agree >= 0.9


def test_outputs_ship_the_model_files_and_auto_map(outputs):
    from importlib import resources

    folder = outputs["int4"]
    for name in MODEL_FILES:
        shipped = (folder / name).read_bytes()
        assert shipped == resources.files("converter.hf_model").joinpath(name).read_bytes()
    config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
    assert config.to_dict()["auto_map"] == AUTO_MAP
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".py") == sorted(MODEL_FILES)
    assert CONTAINERS["hf"].single_name in {p.name for p in folder.iterdir()}


def test_register_loads_without_remote_code(outputs):
    from converter.hf_model.modeling_grok1 import Grok1ForCausalLM

    register()
    model = transformers.AutoModelForCausalLM.from_pretrained(outputs["convert-f32"],
                                                              dtype=torch.float32)
    assert type(model) is Grok1ForCausalLM
    assert np.abs(hf_logits(model, TOKENS) - ours(outputs["convert-f32"])).max() <= 2e-5
