"""The transformers configuration of Grok-1, shipped in every Hugging Face output of
grok1-toolchain (`auto_map` in config.json points here).

Every value the forward needs is a plain config key. Two keys exist for other engines and are
not read by this model: `attn_output_multiplier` (vLLM <= 0.24 multiplies the attention *output*
by it after scaling logits by head_dim ** -0.5, so it is 1.0 here; Grok-1's logit scale is
`attention_multiplier`) and `router_logit_softcapping` (0.0: Grok-1 has none).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from transformers import PretrainedConfig

__all__ = ["Grok1Config"]

HPCAI_MODULES = {"attention": "attn", "moe": "moe_block", "gate": "linear", "up": "linear_v",
                 "down": "linear_1", "norm": "scale"}


class Grok1Config(PretrainedConfig):
    """Grok-1's dimensions and constants; the defaults are the released 314B model's."""

    model_type = "grok-1"
    keys_to_ignore_at_inference: ClassVar[list[str]] = ["past_key_values"]
    attribute_map: ClassVar[dict[str, str]] = {"num_experts": "num_local_experts"}

    def __init__(self, vocab_size: int = 131072, hidden_size: int = 6144,
                 intermediate_size: int = 32768, num_hidden_layers: int = 64,
                 num_attention_heads: int = 48, num_key_value_heads: int = 8,
                 head_dim: int = 128, num_local_experts: int = 8, num_experts_per_tok: int = 2,
                 attention_multiplier: float | None = None, attn_logit_softcapping: float = 30.0,
                 embedding_multiplier_scale: float = math.sqrt(6144),
                 output_multiplier_scale: float = 0.5773502691896257,
                 rms_norm_eps: float = 1e-5, rope_theta: float = 10000.0,
                 max_position_embeddings: int = 8192,
                 grok1_modules: dict[str, str] | None = None, use_cache: bool = True,
                 tie_word_embeddings: bool = True, pad_token_id: int = 0, bos_token_id: int = 1,
                 eos_token_id: int = 2, **kwargs: Any) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.num_local_experts = num_local_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.attention_multiplier = (head_dim ** -0.5 if attention_multiplier is None
                                     else attention_multiplier)
        self.attn_logit_softcapping = attn_logit_softcapping
        self.embedding_multiplier_scale = embedding_multiplier_scale
        self.output_multiplier_scale = output_multiplier_scale
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.max_position_embeddings = max_position_embeddings
        self.grok1_modules = dict(grok1_modules or HPCAI_MODULES)
        self.use_cache = use_cache
        super().__init__(tie_word_embeddings=tie_word_embeddings, pad_token_id=pad_token_id,
                         bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)
