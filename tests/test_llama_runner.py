"""llama.cpp runs in a child process: when it dies (as ggml's AMX kernels do on some Intel
CPUs), the toolchain says so in one line and leaves no unverified K-quant under a final name.
A stand-in `llama_cpp` package that kills itself with SIGSEGV plays the crashing engine, so
these tests run with or without llama-cpp-python."""

import json
import signal

import pytest
from click.testing import CliRunner

from converter.errors import EngineError
from grok1.cli import main
from tests.conftest import bad_input
from verify import kquant, llama_runner

FAKE = '''
import os, shutil, signal, sys

llama_cpp = sys.modules[__name__]  # the runner patches llama_cpp.llama_cpp

class _Params:
    pass

def llama_model_default_params():
    return _Params()

def llama_model_quantize_default_params():
    return _Params()

def llama_model_quantize(source, target, params):
    if os.environ["FAKE_LLAMA"] == "crash-quantize":
        os.kill(os.getpid(), signal.SIGSEGV)
    shutil.copyfile(source, target)
    return 0

class Llama:
    def __init__(self, **kwargs):
        os.kill(os.getpid(), signal.SIGSEGV)
'''


@pytest.fixture
def crashing_llama(tmp_path, monkeypatch):
    """Child processes import the stand-in instead of llama-cpp-python."""
    package = tmp_path / "fake" / "llama_cpp"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE)
    monkeypatch.setenv("PYTHONPATH", str(package.parent))
    monkeypatch.setattr(llama_runner, "available", lambda: True)
    monkeypatch.setattr(kquant, "available", lambda: True)
    return monkeypatch


@pytest.fixture(scope="module")
def bf16_gguf(small_ckpt, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf") / "bf16"
    result = CliRunner().invoke(main, ["convert", str(small_ckpt), str(folder), "--to", "gguf",
                                       "--dtype", "bf16", "--quiet"])
    assert result.exit_code == 0, result.output
    return folder


def test_a_crash_is_one_error_naming_the_signal_and_the_file(crashing_llama, tmp_path):
    crashing_llama.setenv("FAKE_LLAMA", "crash-run")
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    with pytest.raises(EngineError, match=r"crashed \(SIGSEGV\) running .*model\.gguf"):
        llama_runner.llama_logits(model, [[1, 2, 3]])


def test_a_k_quant_whose_run_crashes_is_not_verified_and_not_named_final(
        crashing_llama, bf16_gguf, tmp_path):
    crashing_llama.setenv("FAKE_LLAMA", "crash-run")
    result = CliRunner().invoke(main, ["gguf-quantize", str(bf16_gguf), str(tmp_path / "q"),
                                       "--type", "Q4_K_M"])
    assert result.exit_code == 1, result.output
    assert "NOT verified" in result.output and "SIGSEGV" in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == [
        "grok-1-Q4_K_M.gguf.unverified", "kquant_report.json"]
    report = json.loads((tmp_path / "q" / "kquant_report.json").read_text())
    assert report["verified"] is False and report["file"] == "grok-1-Q4_K_M.gguf.unverified"


def test_a_quantizer_crash_is_one_line_and_leaves_no_model(crashing_llama, bf16_gguf,
                                                           tmp_path):
    crashing_llama.setenv("FAKE_LLAMA", "crash-quantize")
    line = bad_input("gguf-quantize", bf16_gguf, tmp_path / "q", "--type", "Q4_K_M")
    assert f"crashed ({signal.Signals.SIGSEGV.name}) quantizing" in line
    assert not list((tmp_path / "q").glob("*.gguf*"))
