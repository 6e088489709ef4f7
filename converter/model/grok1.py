"""Grok-1 as an `Architecture`: its config, its parameter roles (the release's JAX tree), its
tensor names in the Hugging Face schemes engines read and in llama.cpp's GGUF, and its forward.

A sibling model (Grok-2, say) is a module like this one plus a reader for its files; nothing
that walks a checkpoint imports these tables directly.
"""

from __future__ import annotations

from converter.model.architecture import GIVEN, Architecture, ConfigKey, ConfigTable, GgufNames
from converter.model.config import Grok1Config
from converter.model.names import LayerModules, NameScheme
from converter.model.spec import ParamRole

__all__ = ["GROK1"]

_LAYER = "transformer/decoder_layer_{layer}"

ROLES: tuple[ParamRole, ...] = (
    ParamRole("embed", "language_model/in_out_embed", "embeddings", ("vocab", "emb"),
              "embed"),
    ParamRole("final_norm", "language_model/rms_norm", "scale", ("emb",), "norm"),
    ParamRole("moe_gate", f"{_LAYER}/moe/linear", "w",
              ("experts", "emb", "ffn_size"), "linear", expert=True),
    ParamRole("moe_down", f"{_LAYER}/moe/linear_1", "w",
              ("experts", "ffn_size", "emb"), "linear", expert=True, grouped=True),
    ParamRole("moe_up", f"{_LAYER}/moe/linear_v", "w",
              ("experts", "emb", "ffn_size"), "linear", expert=True),
    ParamRole("attn_k", f"{_LAYER}/multi_head_attention/key", "w",
              ("emb", "kv_dim"), "linear"),
    ParamRole("attn_o", f"{_LAYER}/multi_head_attention/linear", "w",
              ("q_dim", "emb"), "linear", grouped=True),
    ParamRole("attn_q", f"{_LAYER}/multi_head_attention/query", "w",
              ("emb", "q_dim"), "linear"),
    ParamRole("attn_v", f"{_LAYER}/multi_head_attention/value", "w",
              ("emb", "kv_dim"), "linear"),
    ParamRole("pre_attn_norm", f"{_LAYER}/rms_norm", "scale", ("emb",), "norm"),
    ParamRole("post_attn_norm", f"{_LAYER}/rms_norm_1", "scale", ("emb",), "norm"),
    ParamRole("pre_moe_norm", f"{_LAYER}/rms_norm_2", "scale", ("emb",), "norm"),
    ParamRole("post_moe_norm", f"{_LAYER}/rms_norm_3", "scale", ("emb",), "norm"),
    ParamRole("router", f"{_LAYER}/router", "w", ("emb", "experts"), "router"),
)
# In a fixed, readable order (attention, then the experts), used wherever roles are listed.
LINEAR_ROLES = ("attn_q", "attn_k", "attn_v", "attn_o", "moe_gate", "moe_up", "moe_down")
_NORMS = ("pre_attn_norm", "post_attn_norm", "pre_moe_norm", "post_moe_norm")


def _hf_modules(m: LayerModules) -> dict[str, str]:
    """Module name templates by role, with `{layer}` and `{expert}`, for one choice of the
    names inside a decoder layer."""
    layer = "model.layers.{layer}"
    attn, experts = f"{layer}.{m.attention}", f"{layer}.{m.moe}.experts.{{expert}}"
    return {
        "embed": "model.embed_tokens", "final_norm": "model.norm",
        "attn_q": f"{attn}.q_proj", "attn_k": f"{attn}.k_proj",
        "attn_v": f"{attn}.v_proj", "attn_o": f"{attn}.o_proj",
        "router": f"{layer}.{m.moe}.gate",
        "moe_gate": f"{experts}.{m.gate}", "moe_up": f"{experts}.{m.up}",
        "moe_down": f"{experts}.{m.down}",
        **{norm: f"{layer}.{norm}" for norm in _NORMS},
    }


def _scheme(name: str, modules: LayerModules, tied_lm_head: str | None = None,
            presharded_moe: bool | None = None) -> NameScheme:
    return NameScheme(name=name, modules=_hf_modules(modules), norm_suffix=modules.norm,
                      roles={r.role: r for r in ROLES}, linear_roles=LINEAR_ROLES,
                      tied_lm_head=tied_lm_head, presharded_moe=presharded_moe,
                      layer_modules=modules)


SCHEMES: dict[str, NameScheme] = {
    # vLLM <= 0.24 and hpcai-tech's Grok-1 port
    "hpcai": _scheme("hpcai", LayerModules(attention="attn", moe="moe_block", gate="linear",
                                           up="linear_v", down="linear_1", norm="scale")),
    # SGLang's Grok1ForCausalLM (Mixtral's expert names, an explicit lm_head)
    "sglang": _scheme("sglang", LayerModules(attention="self_attn", moe="block_sparse_moe",
                                             gate="w1", up="w3", down="w2", norm="weight"),
                      tied_lm_head="lm_head.weight", presharded_moe=False),
}

# llama.cpp's grok: its tensor names (src/llama-arch.cpp, LLM_ARCH_GROK) and every config key
# its loader reads (vocabulary size comes from the tokenizer's tokens)
GGUF = GgufNames(arch="grok", names={
    "embed": "token_embd", "final_norm": "output_norm", "pre_attn_norm": "attn_norm",
    "attn_q": "attn_q", "attn_k": "attn_k", "attn_v": "attn_v", "attn_o": "attn_output",
    "post_attn_norm": "attn_output_norm", "pre_moe_norm": "ffn_norm",
    "router": "ffn_gate_inp", "moe_gate": "ffn_gate_exps", "moe_up": "ffn_up_exps",
    "moe_down": "ffn_down_exps", "post_moe_norm": "layer_output_norm"},
    config=ConfigTable(prefix="grok.", keys=(
        ConfigKey("context_length", "max_seq_len"),
        ConfigKey("embedding_length", "emb"),
        ConfigKey("block_count", "layers"),
        ConfigKey("feed_forward_length", "ffn_size", fallback=True),
        ConfigKey("expert_feed_forward_length", "ffn_size"),
        ConfigKey("attention.head_count", "q_heads"),
        ConfigKey("attention.head_count_kv", "kv_heads"),
        ConfigKey("attention.key_length", "key_size"),
        ConfigKey("attention.value_length", "key_size", read=False),
        ConfigKey("rope.dimension_count", "key_size", read=False),
        ConfigKey("rope.freq_base", "rope_base"),
        ConfigKey("attention.layer_norm_rms_epsilon", "rms_norm_eps"),
        ConfigKey("expert_count", "experts"),
        ConfigKey("expert_used_count", "topk"),
        ConfigKey("embedding_scale", "emb_mult"),
        ConfigKey("logit_scale", "out_mult"),
        ConfigKey("attention.output_scale", "attn_mult"),
        ConfigKey("attn_logit_softcapping", "attn_softcap"),
    ), required=("emb", "layers", "ffn_size", "q_heads", "kv_heads", "rms_norm_eps", "experts",
                 "topk"),
        defaults={"key_size": lambda v: v["emb"] // v["q_heads"]}))  # llama.cpp's default

# config.json: what transformers (our shipped model), SGLang's grok.py and vLLM <= 0.24 read,
# each with Grok-1's values. vLLM 0.24 scales attention logits by head_dim ** -0.5 and then
# multiplies the attention output by `attn_output_multiplier` (so 1.0; hpcai's port kept
# Grok-1's multiplier there, which a reader still takes when `attention_multiplier` is absent).
HF_CONFIG = ConfigTable(keys=(
    ConfigKey("architectures", value=["Grok1ModelForCausalLM"]),
    ConfigKey("model_type", value=GIVEN),  # the architecture's name, by which it is read
    ConfigKey("auto_map", value=GIVEN),
    ConfigKey("vocab_size", "vocab"),
    ConfigKey("hidden_size", "emb"),
    ConfigKey("intermediate_size", "ffn_size"),
    ConfigKey("num_hidden_layers", "layers"),
    ConfigKey("num_attention_heads", "q_heads"),
    ConfigKey("num_key_value_heads", "kv_heads"),
    ConfigKey("head_dim", "key_size", empty_unset=True),
    ConfigKey("num_experts", "experts", fallback=True),
    ConfigKey("num_local_experts", "experts"),
    ConfigKey("num_experts_per_tok", "topk"),
    ConfigKey("attention_multiplier", "attn_mult"),
    ConfigKey("attn_output_multiplier", value=1.0, read_as="attn_mult", fallback=True),
    ConfigKey("attn_logit_softcapping", "attn_softcap", read=False),
    ConfigKey("attn_logit_softcapping_method", value="tanh"),
    ConfigKey("attn_temperature_len", value=-1),
    ConfigKey("max_attn_value", "attn_softcap"),
    ConfigKey("router_logit_softcapping", value=0.0),
    ConfigKey("moe_router_renormalize", value=False),
    ConfigKey("residual_moe", value=False),
    ConfigKey("embedding_multiplier_scale", "emb_mult"),
    ConfigKey("output_multiplier_scale", "out_mult"),
    ConfigKey("rms_norm_eps", "rms_norm_eps"),
    ConfigKey("rope_theta", "rope_base"),
    ConfigKey("rope_rotate_half_dims", value=False),
    ConfigKey("max_position_embeddings", "max_seq_len"),
    ConfigKey("tie_word_embeddings", value=GIVEN),
    ConfigKey("torch_dtype", value=GIVEN),
    ConfigKey("pad_token_id", "pad_token"),
    ConfigKey("bos_token_id", "bos_token"),
    ConfigKey("eos_token_id", "eos_token"),
    ConfigKey("load_presharded_attn", value=False),
    ConfigKey("load_presharded_mlp", value=False),
    ConfigKey("load_presharded_embedding", value=False),
), required=("vocab", "emb", "ffn_size", "layers", "q_heads", "kv_heads"),
    defaults={"key_size": lambda v: (v["emb"] // v["q_heads"] if isinstance(v["emb"], int)
                                     and isinstance(v["q_heads"], int) and v["q_heads"] else 0)})

GROK1 = Architecture(name="grok-1", title="Grok-1", config_type=Grok1Config, roles=ROLES,
                     linear_roles=LINEAR_ROLES, name_schemes=SCHEMES, default_scheme="hpcai",
                     hf_config=HF_CONFIG, gguf=GGUF, forward="grok-1",
                     fused_linears=(("attn_q", "attn_k", "attn_v"), ("moe_gate", "moe_up")))
