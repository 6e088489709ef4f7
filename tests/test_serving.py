"""Serving contracts: what SGLang 0.5.23 and vLLM 0.24.0 read from config.json (read from their
released source: `sglang/srt/models/grok.py`, `vllm/model_executor/models/grok1.py`; neither runs
without CUDA GPUs here), and the serving table that the README, the model cards and the
warnings of `quantize` and `pipeline` come from."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from converter.hub.client import model_card
from converter.layouts.base import TargetOptions
from converter.model.config import Grok1Config
from converter.report.serving import ENGINES, OutputKind, kind_of, serving_engines, serving_table
from grok1.cli import main
from grok1.sizes import real_model_sizes
from tests.conftest import REPO, bad_input

transformers = pytest.importorskip("transformers")

# Every config key SGLang 0.5.23's grok.py reads, with the value Grok-1 needs. SGLang reads the
# config through AutoConfig (our shipped configuration class), then getattr(config, key[, default]).
SGLANG_READS = {
    "hidden_size": lambda c: c.emb, "num_hidden_layers": lambda c: c.layers,
    "num_attention_heads": lambda c: c.q_heads, "num_key_value_heads": lambda c: c.kv_heads,
    "head_dim": lambda c: c.key_size, "vocab_size": lambda c: c.vocab,
    "intermediate_size": lambda c: c.ffn_size, "num_local_experts": lambda c: c.experts,
    "num_experts_per_tok": lambda c: c.topk, "rms_norm_eps": lambda c: c.rms_norm_eps,
    "rope_theta": lambda c: c.rope_base, "max_position_embeddings": lambda c: c.max_seq_len,
    "embedding_multiplier_scale": lambda c: c.emb_mult,
    "output_multiplier_scale": lambda c: c.out_mult, "pad_token_id": lambda c: c.pad_token,
    "attn_logit_softcapping": lambda c: c.attn_softcap,
    "attn_logit_softcapping_method": lambda c: "tanh",
    "attn_temperature_len": lambda c: -1,  # no length-dependent temperature
    "rope_rotate_half_dims": lambda c: False,  # RoPE over the whole head
    "residual_moe": lambda c: False,  # no dense MLP beside the experts (that is Grok-2)
    "load_presharded_moe": lambda c: False, "load_presharded_attn": lambda c: False,
    "load_presharded_mlp": lambda c: False, "load_presharded_embedding": lambda c: False,
}
# Keys SGLang reads whose absence means what Grok-1 needs (plain RoPE, one expert width, the
# embedding and head split over tensor-parallel ranks).
SGLANG_ABSENT = ("rope_type", "rope_parameters", "scaling_factor", "moe_intermediate_size",
                 "replicate_embedding", "replicate_lm_head", "merge_gate_up")
# What vLLM 0.24.0's grok1.py reads to compute Grok-1 rather than its own variant: it scales
# attention logits by head_dim ** -0.5 and multiplies the attention output by
# attn_output_multiplier; soft-caps router logits by router_logit_softcapping (default 30);
# renormalises the top-2 gates unless told not to; takes Grok-2 when residual_moe is set.
VLLM_024 = {"attn_output_multiplier": 1.0, "router_logit_softcapping": 0.0,
            "moe_router_renormalize": False, "residual_moe": False}
# SGLang's weight loader: stacked q/k/v, experts w1 (gate) w3 (up) w2 (down) through
# FusedMoE.make_expert_params_mapping, an explicit lm_head, norms and router as `.weight`.
SGLANG_NAMES = re.compile(
    r"model\.embed_tokens\.weight|model\.norm\.weight|lm_head\.weight|"
    r"model\.layers\.\d+\.(self_attn\.[qkvo]_proj\.weight|block_sparse_moe\.gate\.weight|"
    r"block_sparse_moe\.experts\.\d+\.w[123]\.weight|(pre|post)_(attn|moe)_norm\.weight)")


# What each consumer's own loader reads each role from, as written in its released source (not
# derived from our tables): SGLang 0.5.23's grok.py (make_expert_params_mapping with
# ckpt_gate_proj_name "w1", ckpt_up_proj_name "w3", ckpt_down_proj_name "w2"; `self_attn`,
# `block_sparse_moe`) and vLLM 0.24.0's grok1.py (gate "linear", up "linear_v", down "linear_1";
# `attn`, `moe_block`), which our vLLM plugin also reads. Values are [out, in].
CONSUMER_NAMES = {
    "sglang": {"moe_gate": "block_sparse_moe.experts.{e}.w1", "moe_up":
               "block_sparse_moe.experts.{e}.w3", "moe_down": "block_sparse_moe.experts.{e}.w2",
               "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
               "attn_v": "self_attn.v_proj", "attn_o": "self_attn.o_proj",
               "router": "block_sparse_moe.gate"},
    "hpcai": {"moe_gate": "moe_block.experts.{e}.linear", "moe_up":
              "moe_block.experts.{e}.linear_v", "moe_down": "moe_block.experts.{e}.linear_1",
              "attn_q": "attn.q_proj", "attn_k": "attn.k_proj", "attn_v": "attn.v_proj",
              "attn_o": "attn.o_proj", "router": "moe_block.gate"},
}


@pytest.mark.parametrize("names", list(CONSUMER_NAMES))
def test_each_consumer_reads_each_role_from_the_right_tensor(small_ckpt, tmp_path, names):
    from safetensors import safe_open

    from converter.convert import convert
    from converter.layouts import open_checkpoint
    from converter.tensors import dense

    convert(small_ckpt, tmp_path / "out", to="hf", quiet=True,
            options=TargetOptions(dtype="f32", names=names, tokenizer="none"))
    release = open_checkpoint(small_ckpt)
    with safe_open(tmp_path / "out" / "model.safetensors", "np") as f:
        for spec in (s for s in release.specs if s.layer == 1 and s.role in CONSUMER_NAMES[names]):
            value = dense(release.read(spec))
            for e in range(value.shape[0]) if spec.role.startswith("moe_") else [None]:
                name = (f"model.layers.1.{CONSUMER_NAMES[names][spec.role].format(e=e)}"
                        ".weight")
                expected = (value[e] if e is not None else value).T
                np.testing.assert_array_equal(f.get_tensor(name), expected, err_msg=name)


@pytest.fixture(scope="module")
def sglang_out(small_ckpt, tmp_path_factory):
    from converter.convert import convert

    folder = tmp_path_factory.mktemp("sg") / "out"
    convert(small_ckpt, folder, to="hf", quiet=True,
            options=TargetOptions(dtype="bf16", names="sglang", tokenizer="none"))
    return folder


def test_sglang_reads_grok1_values_through_autoconfig(sglang_out):
    config = transformers.AutoConfig.from_pretrained(sglang_out, trust_remote_code=True)
    grok = Grok1Config.preset("small")
    found = {key: getattr(config, key, "absent") for key in SGLANG_READS}
    assert found == {key: value(grok) for key, value in SGLANG_READS.items()}
    assert [k for k in SGLANG_ABSENT if hasattr(config, k)] == []
    # SGLang scales attention logits by head_dim ** -0.5, whatever the config says
    assert config.head_dim ** -0.5 == pytest.approx(grok.attn_mult, rel=1e-12)
    assert config.architectures[0] in ("Grok1ForCausalLM", "Grok1ModelForCausalLM")


def test_sglang_tensor_names_are_the_ones_its_loader_takes(sglang_out):
    index = json.loads((sglang_out / "model.safetensors.index.json").read_text()) if (
        sglang_out / "model.safetensors.index.json").exists() else None
    from safetensors import safe_open

    if index:
        names = set(index["weight_map"])
    else:
        with safe_open(sglang_out / "model.safetensors", "np") as f:
            names = set(f.keys())
    assert [n for n in names if not SGLANG_NAMES.fullmatch(n)] == []
    assert "lm_head.weight" in names


def test_vllm_024_computes_grok1_from_the_config(tmp_path, small_ckpt):
    from converter.convert import convert

    convert(small_ckpt, tmp_path / "out", to="hf", quiet=True,
            options=TargetOptions(dtype="bf16", tokenizer="none"))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert {k: config[k] for k in VLLM_024} == VLLM_024
    assert "moe_intermediate_size" not in config  # vLLM would take it for Grok-2
    assert config["head_dim"] ** -0.5 == pytest.approx(config["attention_multiplier"])


def test_readme_shows_the_serving_table():
    table = "\n".join(serving_table(real_model_sizes()))
    assert table in (REPO / "README.md").read_text(), "regenerate with `grok1 serving`"


def test_table_rows_follow_the_engines_contracts():
    def names_of(kind):
        return {e.name for e in serving_engines(kind)}

    assert names_of(OutputKind("hf", "sglang", "int4")) == {"transformers"}
    assert names_of(OutputKind("hf", "sglang", "fp8")) == {"SGLang", "transformers"}
    assert "vLLM 0.24" not in names_of(OutputKind("hf", "sglang", "bf16"))
    for names in ("sglang", "hpcai"):  # the plugin reads either name table; dense weights only
        assert "vLLM + the grok1 plugin" in names_of(OutputKind("hf", names, "bf16"))
        assert "vLLM + the grok1 plugin" not in names_of(OutputKind("hf", names, "int4"))
    assert "SGLang" not in names_of(OutputKind("hf", "hpcai", "bf16"))
    assert names_of(OutputKind("gguf", None, "q8_0")) == {"llama.cpp"}
    # FP4: SGLang serves NVFP4 W4A4 (Blackwell) under its names; its weight-only FP4 MoE paths
    # refuse GELU, so NVFP4A16 and MXFP4 load in transformers only
    assert names_of(OutputKind("hf", "sglang", "nvfp4")) == {"SGLang", "transformers"}
    assert names_of(OutputKind("hf", "hpcai", "nvfp4")) == {"transformers"}
    for weights in ("nvfp4-a16", "mxfp4"):
        assert names_of(OutputKind("hf", "sglang", weights)) == {"transformers"}
    assert "Blackwell" in ENGINES["sglang"].hardware
    assert not ENGINES["vllm-0.24"].serves  # removed after 0.24: not a maintained engine
    sizes = real_model_sizes()
    assert 600e9 < sizes["bf16"] < 650e9 and sizes["int4"] < sizes["int8"] < sizes["bf16"]
    assert sizes["mxfp4"] < sizes["nvfp4-a16"] < sizes["nvfp4"] < sizes["int8"]


@pytest.mark.parametrize(("names", "weights", "engine", "command"), [
    ("sglang", "fp8", "SGLang", "python -m sglang.launch_server --model-path me/x --tp 8"),
    ("hpcai", "int4", "transformers", "AutoModelForCausalLM.from_pretrained(\"me/x\""),
])
def test_cards_say_how_to_serve(tmp_path, sglang_out, small_ckpt, names, weights, engine,
                                command):
    from quant.registry import quantize_checkpoint

    folder = tmp_path / "out"
    quantize_checkpoint(small_ckpt, folder, weights, names=names, tokenizer="none", quiet=True)
    card = model_card(folder, "me/x", command=["grok1"])
    assert "library_name: transformers" in card
    assert f"**{engine}**" in card and command in card
    assert "llama-cli" not in card
    assert kind_of(folder) == OutputKind("hf", names, weights)
    for other in set(e.name for e in ENGINES.values()) - {
            e.name for e in serving_engines(kind_of(folder))}:
        assert f"**{other}**" not in card


def test_quantize_warns_when_no_maintained_engine_serves_the_output(small_ckpt, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["quantize", str(small_ckpt), str(tmp_path / "a"), "--scheme",
                                  "int4", "--names", "sglang", "--quiet"])
    assert result.exit_code == 0
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "assert SiLU" in warnings[0]
    result = runner.invoke(main, ["quantize", str(small_ckpt), str(tmp_path / "b"), "--scheme",
                                  "fp8", "--names", "sglang", "--quiet", "--json"])
    assert result.exit_code == 0 and "warning" not in result.stderr
    assert json.loads(result.stdout)["serving_warning"] is None


def test_serving_command(sglang_out, tmp_path):
    result = CliRunner().invoke(main, ["serving", str(sglang_out)])
    assert result.exit_code == 0
    assert "sglang.launch_server --model-path" in result.output
    assert "| output |" in CliRunner().invoke(main, ["serving"]).output
    (tmp_path / "notes").mkdir()
    assert "not an output of grok1-toolchain" in bad_input("serving", tmp_path / "notes")


def test_a_config_without_our_grok1_block_reads_the_logit_scale_from_its_own_key(sglang_out,
                                                                                  tmp_path):
    import shutil

    from converter.layouts import open_checkpoint

    folder = tmp_path / "stripped"
    shutil.copytree(sglang_out, folder)
    config = json.loads((folder / "config.json").read_text())
    del config["grok1"]
    (folder / "config.json").write_text(json.dumps(config))
    assert open_checkpoint(folder).config == open_checkpoint(sglang_out).config
