"""Grok-1 as a transformers model: the files every Hugging Face output ships, and `register()`.

`configuration_grok1.py`, `modeling_grok1.py` and `grok1_layers.py` are copied into each output
beside an `auto_map` in config.json, so `AutoModelForCausalLM.from_pretrained(DIR,
trust_remote_code=True)` needs nothing but transformers. With this package installed,
`register()` makes the same classes known to transformers without remote code.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from converter.files.atomic import atomic_open

__all__ = ["AUTO_MAP", "MODEL_FILES", "register", "write_model_files"]

MODEL_FILES = ("configuration_grok1.py", "modeling_grok1.py", "grok1_layers.py")
AUTO_MAP = {
    "AutoConfig": "configuration_grok1.Grok1Config",
    "AutoModel": "modeling_grok1.Grok1Model",
    "AutoModelForCausalLM": "modeling_grok1.Grok1ForCausalLM",
}


def write_model_files(folder: Path) -> list[str]:
    """Copy the model's source files into `folder` (atomically, each); returns their names."""
    for name in MODEL_FILES:
        with atomic_open(Path(folder) / name) as f:
            f.write(resources.files(__package__).joinpath(name).read_bytes())
    return list(MODEL_FILES)


def register() -> None:
    """Make `model_type: grok-1` known to transformers' Auto classes in this process, so an
    output loads without `trust_remote_code` (needs transformers installed)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from converter.hf_model.configuration_grok1 import Grok1Config
    from converter.hf_model.modeling_grok1 import Grok1ForCausalLM, Grok1Model

    AutoConfig.register(Grok1Config.model_type, Grok1Config, exist_ok=True)
    AutoModel.register(Grok1Config, Grok1Model, exist_ok=True)
    AutoModelForCausalLM.register(Grok1Config, Grok1ForCausalLM, exist_ok=True)
