"""Grok-1 for current vLLM (>= 0.25, which removed its own): the original's numerics on vLLM's
layers.

What differs from vLLM 0.24's in-tree model, on purpose: the experts use tanh-approximated GELU
(as the original's `jax.nn.gelu`), the router has no soft cap and its top-2 probabilities are the
gates (not renormalised), it runs in float32 whatever the model's dtype, and the attention
multiplier scales the logits once (never the attention output). The module tree is named by the
checkpoint's own `grok1_modules` (config.json), so one class loads both the vLLM/hpcai names and
SGLang's, and compressed-tensors' ignore lists match the layer names as written.

Imported only by vLLM, through `converter.vllm_grok1.register`.
"""

from collections.abc import Iterable
from itertools import islice
from typing import ClassVar

import torch
from torch import nn
from vllm.compilation.decorators import support_torch_compile
from vllm.config import CacheConfig, VllmConfig
from vllm.distributed import get_pp_group, get_tensor_model_parallel_world_size
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.fused_moe import FusedMoEFactory
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import (
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.quantization import QuantizationConfig
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.layers.vocab_parallel_embedding import (
    ParallelLMHead,
    VocabParallelEmbedding,
)
from vllm.model_executor.models.interfaces import SupportsPP
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    WeightsMapper,
    make_empty_intermediate_tensors_factory,
    make_layers,
    maybe_prefix,
)
from vllm.sequence import IntermediateTensors

__all__ = ["Grok1ForCausalLM"]

NORMS = ("pre_attn_norm", "post_attn_norm", "pre_moe_norm", "post_moe_norm")


class Grok1Attention(nn.Module):
    """Grouped-query attention with rotate-half RoPE; logits times `attention_multiplier`,
    then soft-capped at `attn_logit_softcapping`."""

    def __init__(self, config, cache_config: CacheConfig | None,
                 quant_config: QuantizationConfig | None, prefix: str) -> None:
        super().__init__()
        tp_size = get_tensor_model_parallel_world_size()
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        if heads % tp_size or (kv_heads % tp_size and tp_size % kv_heads):
            raise ValueError(f"Grok-1 with {heads} query and {kv_heads} key/value heads does "
                             f"not split over tensor parallel size {tp_size}")
        self.head_dim = config.head_dim
        self.num_heads = heads // tp_size
        self.num_kv_heads = max(1, kv_heads // tp_size)
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim, heads, kv_heads,
                                          bias=False, quant_config=quant_config,
                                          prefix=f"{prefix}.qkv_proj")
        self.o_proj = RowParallelLinear(heads * self.head_dim, config.hidden_size, bias=False,
                                        quant_config=quant_config, prefix=f"{prefix}.o_proj")
        self.rotary_emb = get_rope(self.head_dim, max_position=config.max_position_embeddings,
                                   is_neox_style=True, rope_parameters={
                                       "rope_type": "default", "rope_theta": config.rope_theta})
        self.attn = Attention(self.num_heads, self.head_dim, config.attention_multiplier,
                              num_kv_heads=self.num_kv_heads, cache_config=cache_config,
                              quant_config=quant_config,
                              logits_soft_cap=config.attn_logit_softcapping,
                              prefix=f"{prefix}.attn")

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        qkv, _ = self.qkv_proj(hidden_states)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = self.rotary_emb(positions, q, k)
        output, _ = self.o_proj(self.attn(q, k, v))
        return output


class Grok1MoE(nn.Module):
    """Float32 softmax router, top-k probabilities as gates, experts gelu_tanh(x W_gate) *
    (x W_up) W_down in vLLM's fused MoE."""

    def __init__(self, config, quant_config: QuantizationConfig | None, prefix: str) -> None:
        super().__init__()
        names = config.grok1_modules
        self.hidden_size = config.hidden_size
        self.gate = ReplicatedLinear(config.hidden_size, config.num_local_experts, bias=False,
                                     params_dtype=torch.float32, quant_config=None,
                                     prefix=f"{prefix}.gate")
        self.experts = FusedMoEFactory(
            num_experts=config.num_local_experts, top_k=config.num_experts_per_tok,
            hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
            renormalize=False, scoring_func="softmax", quant_config=quant_config,
            activation="gelu_tanh", router_logits_dtype=torch.float32,
            ckpt_names=(names["gate"], names["down"], names["up"]),
            prefix=f"{prefix}.experts")

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        hidden_states = hidden_states.view(-1, self.hidden_size)
        router_logits, _ = self.gate(hidden_states.float())
        return self.experts(hidden_states, router_logits).view(shape)


class Grok1DecoderLayer(nn.Module):
    """x + post_norm(attention(pre_norm(x))), then the same around the MoE; the module names
    are the checkpoint's."""

    def __init__(self, config, cache_config: CacheConfig | None,
                 quant_config: QuantizationConfig | None, prefix: str) -> None:
        super().__init__()
        names = config.grok1_modules
        self.attention_name, self.moe_name = names["attention"], names["moe"]
        self.add_module(self.attention_name, Grok1Attention(
            config, cache_config, quant_config, f"{prefix}.{self.attention_name}"))
        self.add_module(self.moe_name, Grok1MoE(config, quant_config,
                                                f"{prefix}.{self.moe_name}"))
        for norm in NORMS:
            self.add_module(norm, RMSNorm(config.hidden_size, eps=config.rms_norm_eps))

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor,
                residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual = hidden_states
            hidden_states = self.pre_attn_norm(hidden_states)
        else:
            hidden_states, residual = self.pre_attn_norm(hidden_states, residual)
        hidden_states = getattr(self, self.attention_name)(positions, hidden_states)
        hidden_states = self.post_attn_norm(hidden_states)
        hidden_states, residual = self.pre_moe_norm(hidden_states, residual)
        hidden_states = getattr(self, self.moe_name)(hidden_states)
        return self.post_moe_norm(hidden_states), residual


@support_torch_compile
class Grok1Model(nn.Module):
    """Embedding (times `embedding_multiplier_scale`), the decoder layers, the final norm."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.start_layer, self.end_layer, self.layers = make_layers(
            config.num_hidden_layers,
            lambda prefix: Grok1DecoderLayer(config, vllm_config.cache_config,
                                             vllm_config.quant_config, prefix),
            prefix=f"{prefix}.layers")
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.make_empty_intermediate_tensors = make_empty_intermediate_tensors_factory(
            ["hidden_states", "residual"], config.hidden_size)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Embedding rows times Grok-1's embedding multiplier."""
        return self.embed_tokens(input_ids) * self.config.embedding_multiplier_scale

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors: IntermediateTensors | None,
                inputs_embeds: torch.Tensor | None = None
                ) -> torch.Tensor | IntermediateTensors:
        if get_pp_group().is_first_rank:
            hidden_states = (inputs_embeds if inputs_embeds is not None
                             else self.embed_input_ids(input_ids))
            residual = None
        else:
            assert intermediate_tensors is not None
            hidden_states = intermediate_tensors["hidden_states"]
            residual = intermediate_tensors["residual"]
        for layer in islice(self.layers, self.start_layer, self.end_layer):
            hidden_states, residual = layer(positions, hidden_states, residual)
        if not get_pp_group().is_last_rank:
            return IntermediateTensors({"hidden_states": hidden_states, "residual": residual})
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


class Grok1ForCausalLM(nn.Module, SupportsPP):
    """Grok-1 with the tied unembedding times `output_multiplier_scale`."""

    packed_modules_mapping: ClassVar[dict[str, list[str]]] = {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"]}
    fall_back_to_pt_during_load = False

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        self.model = Grok1Model(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"))
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size,
                                      quant_config=vllm_config.quant_config,
                                      prefix=maybe_prefix(prefix, "lm_head"))
        self.lm_head = self.lm_head.tie_weights(self.model.embed_tokens)
        self.logits_processor = LogitsProcessor(config.vocab_size,
                                                scale=config.output_multiplier_scale)
        self.make_empty_intermediate_tensors = self.model.make_empty_intermediate_tensors
        norm = config.grok1_modules["norm"]
        self.hf_to_vllm_mapper = WeightsMapper(
            orig_to_new_stacked={".q_proj": (".qkv_proj", "q"), ".k_proj": (".qkv_proj", "k"),
                                 ".v_proj": (".qkv_proj", "v")},
            orig_to_new_suffix={f"norm.{norm}": "norm.weight"})

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The scaled embedding rows of `input_ids`."""
        return self.model.embed_input_ids(input_ids)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors: IntermediateTensors | None = None,
                inputs_embeds: torch.Tensor | None = None
                ) -> torch.Tensor | IntermediateTensors:
        return self.model(input_ids, positions, intermediate_tensors, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        """Logits against the tied embedding, times Grok-1's output multiplier."""
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load the checkpoint's tensors (an explicit `lm_head.weight`, as SGLang's names
        carry, is the tied embedding again: vLLM loads one of the two)."""
        return AutoWeightsLoader(self).load_weights(weights, mapper=self.hf_to_vllm_mapper)
