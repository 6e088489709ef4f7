"""--executor ray on a local Ray cluster: identical outputs, a killed task retried."""

import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from grok1.cli import main
from tests.conftest import file_digests

ray = pytest.importorskip("ray")


def digests(folder):
    return file_digests(folder, skip=lambda path: path.name == "grok1-manifest.json")


def run(*args):
    result = CliRunner().invoke(main, [*map(str, args)])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A 2-CPU local cluster whose first task is SIGKILLed mid-write (then retried)."""
    marker = tmp_path_factory.mktemp("fault") / "killed-once"
    monkey = pytest.MonkeyPatch()
    monkey.setenv("GROK1_FAULT_KILL_ONCE", str(marker))
    monkey.setenv("GROK1_FAULT_DELAY", "0.05")
    ray.init(num_cpus=2, object_store_memory=200 << 20, include_dashboard=False,
             log_to_driver=False, logging_level="ERROR")
    yield marker
    ray.shutdown()
    monkey.undo()


def test_convert_on_ray_is_identical_and_survives_a_killed_task(cluster, small_ckpt, tmp_path):
    args = ["--dtype", "bf16", "--shard-size", "40MB", "--quiet"]
    run("convert", small_ckpt, tmp_path / "ray", "--executor", "ray", *args)
    assert cluster.exists(), "the fault was not injected"
    run("convert", small_ckpt, tmp_path / "local", "--workers", "1", *args)
    assert digests(tmp_path / "ray") == digests(tmp_path / "local")
    assert not list((tmp_path / "ray").rglob("*.incomplete"))
    manifest = json.loads((tmp_path / "ray" / "grok1-manifest.json").read_text())
    assert manifest["complete"] and len(manifest["units"]) == 3


def test_quantize_and_back_to_original_on_ray(cluster, small_ckpt, tmp_path):
    run("quantize", small_ckpt, tmp_path / "ray", "--scheme", "int4", "--executor", "ray",
        "--shard-size", "10MB", "--quiet")
    run("quantize", small_ckpt, tmp_path / "local", "--scheme", "int4", "--workers", "1",
        "--shard-size", "10MB", "--quiet")
    assert digests(tmp_path / "ray") == digests(tmp_path / "local")
    run("convert", small_ckpt, tmp_path / "int8", "--dtype", "int8", "--quiet")
    run("convert", tmp_path / "int8", tmp_path / "xai", "--to", "xai", "--executor", "ray",
        "--quiet")
    for path in (small_ckpt / "ckpt-0").iterdir():
        assert path.read_bytes() == (tmp_path / "xai" / "ckpt-0" / path.name).read_bytes()


def test_verify_on_ray_gives_the_local_numbers(cluster, small_ckpt, tmp_path):
    run("quantize", small_ckpt, tmp_path / "int4", "--scheme", "int4", "--quiet")
    reports = {}
    for executor in ("local", "ray"):
        out = tmp_path / f"{executor}.json"
        run("verify", small_ckpt, tmp_path / "int4", "--profile", "int4", "--per-layer",
            "--seq-len", "32", "--batch", "5", "--executor", executor, "--workers", "2",
            "--json", out)
        reports[executor] = json.loads(out.read_text())
    local, remote = reports["local"], reports["ray"]
    assert local["passed"] == remote["passed"]
    for key, value in local["metrics"].items():
        if isinstance(value, float):
            assert remote["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
        else:
            assert remote["metrics"][key] == value, key
    for a, b in zip(local["per_layer"], remote["per_layer"], strict=True):
        for key in a:
            assert b[key] == (a[key] if key == "layer" else pytest.approx(a[key], rel=1e-4))


def test_without_ray_the_executor_exits_2_with_the_install_command(small_ckpt, tmp_path,
                                                                    monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    result = CliRunner().invoke(main, ["convert", str(small_ckpt), str(tmp_path / "x"),
                                       "--executor", "ray"])
    assert result.exit_code == 2
    assert "pip install 'grok1-toolchain[ray]'" in result.output
    assert np.all([not (tmp_path / "x").exists()])


def test_verify_on_ray_refuses_different_models(cluster, small_ckpt, tiny_ckpt):
    result = CliRunner().invoke(main, ["verify", str(small_ckpt), str(tiny_ckpt),
                                       "--executor", "ray"])
    assert result.exit_code == 2 and "different models" in result.output
