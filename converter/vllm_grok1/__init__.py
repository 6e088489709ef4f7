"""The vLLM plugin: registers Grok-1 with vLLM >= 0.25, which removed its own.

Installed as the entry point `grok1` of the group `vllm.general_plugins`, so every vLLM process
(server, engine workers) calls `register()` at start-up. Both architecture names our outputs
carry (`Grok1ModelForCausalLM`, vLLM/hpcai names; `Grok1ForCausalLM`, SGLang's) map to our model
class; a registered name wins over vLLM's "supported until v0.24.0" refusal, which only answers
names nothing registered. The config class is registered with transformers too, so `vllm serve
DIR` needs no `--trust-remote-code`.
"""

from __future__ import annotations

__all__ = ["ARCHITECTURES", "MODEL_CLASS", "register"]

ARCHITECTURES = ("Grok1ModelForCausalLM", "Grok1ForCausalLM")
MODEL_CLASS = "converter.vllm_grok1.model:Grok1ForCausalLM"


def register() -> None:
    """Register Grok-1's config with transformers and its model with vLLM's registry."""
    from vllm import ModelRegistry

    from converter.hf_model import register as register_transformers

    register_transformers()
    for architecture in ARCHITECTURES:
        ModelRegistry.register_model(architecture, MODEL_CLASS)
