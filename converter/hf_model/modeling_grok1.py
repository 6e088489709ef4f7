"""Grok-1 for transformers (4.57 and 5.x), shipped in every Hugging Face output of
grok1-toolchain: `AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`.

The layer math is `grok1_layers.py`, the same code the toolchain verifies against the original
xAI release. The module tree follows the checkpoint's names (`grok1_modules` in config.json), so
one class loads both the vLLM/hpcai names and SGLang's. Experts are plain `nn.Linear`s, so
transformers' compressed-tensors support loads the quantized outputs unchanged.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_grok1 import Grok1Config
from .grok1_layers import attend, gated_gelu, rms_norm, rope, route, unembed_logits

__all__ = ["Grok1ForCausalLM", "Grok1Model", "Grok1PreTrainedModel"]

NORMS = ("pre_attn_norm", "post_attn_norm", "pre_moe_norm", "post_moe_norm")


class Grok1RMSNorm(nn.Module):
    """RMSNorm whose scale parameter has the checkpoint's name (`scale` or `weight`)."""

    def __init__(self, size: int, eps: float, param: str) -> None:
        super().__init__()
        self.eps, self.param = eps, param
        self.register_parameter(param, nn.Parameter(torch.ones(size)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, getattr(self, self.param), self.eps)


class Grok1Attention(nn.Module):
    """Grouped-query attention with RoPE and Grok-1's soft-capped logits."""

    def __init__(self, config: Grok1Config, layer_idx: int) -> None:
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        emb, d = config.hidden_size, config.head_dim
        self.q_proj = nn.Linear(emb, config.num_attention_heads * d, bias=False)
        self.k_proj = nn.Linear(emb, config.num_key_value_heads * d, bias=False)
        self.v_proj = nn.Linear(emb, config.num_key_value_heads * d, bias=False)
        self.o_proj = nn.Linear(config.num_attention_heads * d, emb, bias=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                cache: Cache | None) -> torch.Tensor:
        c = self.config
        b, t, _ = x.shape
        kv, d = c.num_key_value_heads, c.head_dim
        q = rope(self.q_proj(x).view(b, t, c.num_attention_heads, d), positions, c.rope_theta)
        k = rope(self.k_proj(x).view(b, t, kv, d), positions, c.rope_theta)
        v = self.v_proj(x).view(b, t, kv, d)
        if cache is not None:  # the cache holds [B, heads, S, D]
            k, v = cache.update(k.transpose(1, 2), v.transpose(1, 2), self.layer_idx)
            k, v = k.transpose(1, 2), v.transpose(1, 2)
        q = q.view(b, t, kv, c.num_attention_heads // kv, d)
        out = attend(q, k.to(q.dtype), v.to(q.dtype), mask, c.attention_multiplier,
                     c.attn_logit_softcapping)
        return self.o_proj(out.reshape(b, t, c.num_attention_heads * d))


class Grok1Expert(nn.Module):
    """One expert: gelu_tanh(x W_gate) * (x W_up), then W_down; Linears named as stored."""

    def __init__(self, config: Grok1Config) -> None:
        super().__init__()
        names = config.grok1_modules
        self.names = (names["gate"], names["up"], names["down"])
        emb, ffn = config.hidden_size, config.intermediate_size
        for name, (i, o) in zip(self.names, ((emb, ffn), (emb, ffn), (ffn, emb)), strict=True):
            self.add_module(name, nn.Linear(i, o, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up, down = (getattr(self, n) for n in self.names)
        return down(gated_gelu(gate(x), up(x)))


class Grok1MoE(nn.Module):
    """Top-k routing over the experts; the router runs in float32."""

    def __init__(self, config: Grok1Config) -> None:
        super().__init__()
        self.topk = config.num_experts_per_tok
        self.gate = nn.Linear(config.hidden_size, config.num_local_experts, bias=False)
        self.experts = nn.ModuleList(Grok1Expert(config)
                                     for _ in range(config.num_local_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        logits = nn.functional.linear(flat.float(), self.gate.weight.float())
        gates, chosen = route(logits, self.topk)
        out = torch.zeros(flat.shape, dtype=torch.float32, device=x.device)
        for e, expert in enumerate(self.experts):
            token, slot = torch.nonzero(chosen == e, as_tuple=True)
            if token.numel():
                ye = expert(flat[token]).float() * gates[token, slot, None]
                out.index_add_(0, token, ye)
        return out.to(x.dtype).view_as(x)


class Grok1DecoderLayer(nn.Module):
    """Attention and MoE, each between a pre-norm and a post-norm (Grok-1's sandwich)."""

    def __init__(self, config: Grok1Config, layer_idx: int) -> None:
        super().__init__()
        names = config.grok1_modules
        self.attention, self.moe = names["attention"], names["moe"]
        self.add_module(self.attention, Grok1Attention(config, layer_idx))
        self.add_module(self.moe, Grok1MoE(config))
        for norm in NORMS:
            self.add_module(norm, Grok1RMSNorm(config.hidden_size, config.rms_norm_eps,
                                               names["norm"]))

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                cache: Cache | None) -> torch.Tensor:
        attn = getattr(self, self.attention)(self.pre_attn_norm(hidden), positions, mask, cache)
        hidden = hidden + self.post_attn_norm(attn)
        moe = getattr(self, self.moe)(self.pre_moe_norm(hidden))
        return hidden + self.post_moe_norm(moe)


class Grok1PreTrainedModel(PreTrainedModel):
    """Shared settings: norms and router stay float32 whatever dtype the model loads in."""

    config_class = Grok1Config
    base_model_prefix = "model"
    _no_split_modules: ClassVar[list[str]] = ["Grok1DecoderLayer"]
    # module names (transformers 4.57 checks each is one; 5.x searches parameter names for them)
    _keep_in_fp32_modules_strict: ClassVar[list[str]] = ["norm", *NORMS, "gate"]
    _supports_cache_class = True

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, Grok1RMSNorm):
            nn.init.ones_(getattr(module, module.param))


class Grok1Model(Grok1PreTrainedModel):
    """The decoder stack: scaled embeddings, the layers, the final norm."""

    def __init__(self, config: Grok1Config) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Grok1DecoderLayer(config, i)
                                    for i in range(config.num_hidden_layers))
        self.norm = Grok1RMSNorm(config.hidden_size, config.rms_norm_eps,
                                 config.grok1_modules["norm"])
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(self, input_ids: torch.LongTensor | None = None,
                attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None,
                past_key_values: Cache | None = None,
                inputs_embeds: torch.Tensor | None = None, use_cache: bool | None = None,
                cache_position: torch.LongTensor | None = None,
                **kwargs: object) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        dtype = self.embed_tokens.weight.dtype  # the dtype activations run in
        hidden = inputs_embeds.to(dtype) * self.config.embedding_multiplier_scale
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        cache = past_key_values if use_cache else None
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        b, t = hidden.shape[:2]
        if cache_position is None:
            cache_position = torch.arange(past, past + t, device=hidden.device)
        if position_ids is None:
            position_ids = cache_position[None].expand(b, t)
        mask = _attention_mask(attention_mask, cache_position, past + t, b)
        for layer in self.layers:
            hidden = layer(hidden, position_ids, mask, cache)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden),
                                       past_key_values=past_key_values if use_cache else None)


def _attention_mask(attention_mask: torch.Tensor | None, cache_position: torch.Tensor,
                    keys: int, batch: int) -> torch.Tensor:
    """[B, T, S] booleans: query t (at cache_position[t]) sees key s when s <= its position and
    the 2-D padding mask, if any, keeps s."""
    key = torch.arange(keys, device=cache_position.device)
    mask = (key[None, :] <= cache_position[:, None])[None].expand(batch, -1, -1)
    if attention_mask is not None:
        mask = mask & attention_mask[:, None, :keys].bool()
    return mask


class Grok1ForCausalLM(Grok1PreTrainedModel, GenerationMixin):
    """Grok-1 with its tied unembedding scaled by `output_multiplier_scale`; float32 logits."""

    def __init__(self, config: Grok1Config) -> None:
        super().__init__(config)
        self.model = Grok1Model(config)
        if not config.tie_word_embeddings:  # SGLang's names carry an explicit copy
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def forward(self, input_ids: torch.LongTensor | None = None,
                attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None,
                past_key_values: Cache | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, cache_position: torch.LongTensor | None = None,
                logits_to_keep: int = 0, **kwargs: object) -> CausalLMOutputWithPast:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, past_key_values=past_key_values,
                         inputs_embeds=inputs_embeds, use_cache=use_cache,
                         cache_position=cache_position)
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        table = (self.lm_head if not self.config.tie_word_embeddings
                   else self.model.embed_tokens).weight
        logits = unembed_logits(hidden, table, self.config.output_multiplier_scale)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                               labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits,
                                      past_key_values=out.past_key_values)
