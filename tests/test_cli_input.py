"""Every remaining bad-input case of the CLI: one line, exit 2, no traceback, nothing written."""

import json
import shutil
from collections import namedtuple

import numpy as np
import pytest
from click.testing import CliRunner

from grok1.cli import main
from tests.conftest import bad_input


def ok(*args):
    result = CliRunner().invoke(main, [*map(str, args)])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize(("write", "words"), [
    (lambda p: p.write_bytes(b""), "cannot read tokens"),
    (lambda p: np.save(p, np.zeros((2, 5), np.int64)), "every token is padding"),
    (lambda p: np.save(p, np.zeros((0, 5), np.int64)), "non-empty"),
    (lambda p: np.savez(p, tokens=np.ones((1, 4), np.int64)), "npz"),
    (lambda p: np.save(p, np.ones((1, 9000), np.int64)), "exceed the model's context"),
])
@pytest.mark.parametrize("command", ["logits", "verify"])
def test_bad_token_files(upstream, tmp_path, write, words, command):
    tokens = tmp_path / "t.npy"
    write(tokens)
    if tokens.with_suffix(".npy.npz").exists():
        tokens.with_suffix(".npy.npz").rename(tokens)
    args = (["logits", upstream, "--tokens", tokens, "--out", tmp_path / "o.npy"]
            if command == "logits" else ["verify", upstream, upstream, "--tokens", tokens])
    assert words in bad_input(*args)
    assert not (tmp_path / "o.npy").exists()


def test_verify_needs_two_real_tokens(upstream, tmp_path):
    np.save(tmp_path / "t.npy", np.array([[5], [7]], np.int64))
    assert "perplexity" in bad_input("verify", upstream, upstream, "--tokens", tmp_path / "t.npy")
    ok("logits", upstream, "--tokens", tmp_path / "t.npy", "--out", tmp_path / "o.npy")


@pytest.mark.parametrize("flag", ["--json", "--markdown", "--save-reference"])
def test_report_paths_that_are_folders_or_in_missing_folders(upstream, tmp_path, flag):
    assert "names a folder" in bad_input("verify", upstream, upstream, flag, tmp_path)
    assert "does not exist" in bad_input("verify", upstream, upstream, flag,
                                         tmp_path / "missing" / "r.json")


def test_logits_out_that_is_a_folder(upstream, tmp_path):
    np.save(tmp_path / "t.npy", np.ones((1, 4), np.int64))
    assert "--out names a folder" in bad_input("logits", upstream, "--tokens",
                                               tmp_path / "t.npy", "--out", tmp_path)


@pytest.mark.parametrize("size", ["1e400GB", "-5MB", "0", "0.1B", "lots"])
def test_bad_shard_sizes(upstream, tmp_path, size):
    assert "size" in bad_input("convert", upstream, tmp_path / "out", "--shard-size", size)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["logits", "verify"])
def test_bogus_device(upstream, tmp_path, command):
    np.save(tmp_path / "t.npy", np.ones((1, 4), np.int64))
    args = (["logits", upstream, "--tokens", tmp_path / "t.npy", "--out", tmp_path / "o.npy"]
            if command == "logits" else ["verify", upstream, upstream])
    assert "bogus" in bad_input(*args, "--device", "bogus")


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_thresholds_must_be_finite(upstream, value):
    assert "--max-kl" in bad_input("verify", upstream, upstream, "--max-kl", value)


def test_stored_reference_from_another_model(upstream, small_ckpt, tmp_path):
    ok("verify", upstream, upstream, "--seq-len", "8", "--save-reference", tmp_path / "r.npz")
    assert "another model" in bad_input("verify", small_ckpt, "--reference-logits",
                                        tmp_path / "r.npz")


def test_corrupt_pipeline_manifest(tmp_path):
    (tmp_path / "pipeline.json").write_text("{broken")
    assert "pipeline.json" in bad_input("pipeline", "--to", "hf-bf16", "--work-dir", tmp_path,
                                        "--endpoint", "http://127.0.0.1:9")
    (tmp_path / "pipeline.json").write_text("[]")
    assert "pipeline.json" in bad_input("pipeline", "--to", "hf-bf16", "--work-dir", tmp_path,
                                        "--endpoint", "http://127.0.0.1:9")


@pytest.mark.parametrize(("args", "words"), [
    (("--to", "hf"), "unknown target 'hf'; known: hf-bf16"),
    (("--to", "int8,int4", "--upload", "me/one"), "put {to} where the target's name goes"),
    (("--to", "gguf-Q8_0", "--names", "sglang"), "--names is for hf and quantized targets"),
    (("--to", "int8", "--source", "nowhere"), "nowhere: --source is not a folder"),
    (("--to", "int8,int4", "--upload", "me//grok-{to}"), "--upload 'me//grok-int8'"),
])
def test_pipeline_options_refused(tmp_path, args, words):
    assert words in bad_input("pipeline", *args, "--work-dir", tmp_path / "w", "--endpoint",
                              "http://127.0.0.1:9")


@pytest.mark.parametrize(("to", "names"), [("gguf", "sglang"), ("xai", "hpcai")])
def test_names_refused_where_the_layout_has_its_own(tiny_ckpt, tmp_path, to, names):
    line = bad_input("convert", tiny_ckpt, tmp_path / "out", "--to", to, "--names", names)
    assert f"--to {to} writes its own tensor names (--names is for --to hf, torch)" in line
    assert not (tmp_path / "out").exists()


def test_free_space_margin_is_proportional(tiny_ckpt, tmp_path, monkeypatch):
    plan = json.loads(ok("convert", tiny_ckpt, tmp_path / "x", "--dry-run", "--json").output)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda p: usage(10**9, 0, plan["bytes"] - 1))
    assert "GB free" in bad_input("convert", tiny_ckpt, tmp_path / "short")
    assert not (tmp_path / "short").exists()
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda p: usage(10**9, 0, plan["bytes"] * 103 // 100 + (2 << 20)))
    ok("convert", tiny_ckpt, tmp_path / "fits", "--quiet")


def test_quantize_refuses_nan_norms_and_embeddings(tiny_ckpt, tmp_path):
    from converter.layouts.xai import XaiCheckpoint, value_payloads, write_leaf

    for role in ("pre_moe_norm", "embed"):
        folder = tmp_path / role
        shutil.copytree(tiny_ckpt, folder)
        checkpoint = XaiCheckpoint.open(folder)
        spec = next(s for s in checkpoint.specs if s.role == role and s.layer in (None, 4))
        value = np.array(checkpoint.read(spec))
        value.reshape(-1)[3] = np.nan
        write_leaf(checkpoint.path_of(spec), spec, value_payloads(value))
        line = bad_input("quantize", folder, tmp_path / f"out-{role}", "--scheme", "int8",
                         "--workers", "1", "--quiet")
        assert spec.name in line and "NaN" in line


def test_inspect_checks_recorded_hashes(tiny_ckpt, tmp_path):
    folder = tmp_path / "dl"
    shutil.copytree(tiny_ckpt, folder)
    from converter.engine.hashes import git_sha1
    from converter.engine.output import file_sha256

    files = sorted(p.relative_to(folder).as_posix() for p in (folder / "ckpt-0").iterdir())
    (folder / "grok1-download.json").write_text(json.dumps({
        "sha256": {f: file_sha256(folder / f) for f in files},
        "git_sha1": {"config.json": git_sha1(folder / "config.json")}}))
    ok("inspect", folder, "--check-hashes")
    victim = folder / "ckpt-0" / "tensor00002_000"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 1  # a weight byte: the file still parses
    victim.write_bytes(bytes(data))
    result = CliRunner().invoke(main, ["inspect", str(folder), "--check-hashes", "--json"])
    assert result.exit_code == 2
    problems = json.loads(result.stdout)["problems"]
    assert len(problems) == 1 and "tensor00002_000: sha256" in problems[0]


def test_ctrl_c_while_the_cli_imports_exits_130_quietly():
    """SIGINT arrives while `grok1.cli` is being imported, before the group's handler exists."""
    import subprocess
    import sys

    probe = ("import os, signal, sys\n"
             "class Interrupt:\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name == 'grok1.cli':\n"
             "            os.kill(os.getpid(), signal.SIGINT)\n"
             "        return None\n"
             "sys.meta_path.insert(0, Interrupt())\n"
             "sys.argv = ['grok1', '--version']\n"
             "from grok1.entry import run\n"
             "run()\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 130, done
    assert done.stderr == "error: interrupted\n" and "Traceback" not in done.stdout


def test_convert_help_lists_what_every_layout_takes():
    """--dtype's help is generated from the layouts' tables: a new dtype cannot be missing."""
    from click.testing import CliRunner

    from converter.layouts import LAYOUTS
    from converter.layouts.gguf import DTYPE_NOTES, DTYPES
    from grok1.cli import main

    assert list(DTYPE_NOTES) == [d for d in DTYPE_NOTES if d in DTYPES]
    assert set(DTYPE_NOTES) == set(DTYPES)
    text = " ".join(CliRunner().invoke(main, ["convert", "--help"]).output.split())
    for name, entry in LAYOUTS.items():
        default = next(iter(entry.dtypes))
        assert f"{default} (" in text and all(d in text for d in entry.dtypes), name
