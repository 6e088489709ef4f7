"""Both forwards against the logits of the original JAX implementation."""

import numpy as np
import pytest
from click.testing import CliRunner

from converter.layouts import open_checkpoint
from grok1.cli import main
from tests.conftest import bad_input
from verify.reference import reference_logits
from verify.torch_forward import torch_logits

TOLERANCE = 2e-4


@pytest.fixture(scope="module")
def oracle(upstream):
    with np.load(upstream / "oracle.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reference_forward_matches_upstream_f32_logits(upstream, oracle, dtype):
    tokens = oracle["tokens"]
    logits = reference_logits(open_checkpoint(upstream), tokens, dtype)
    valid = tokens != 0
    assert valid.sum() == 45
    assert np.abs(logits - oracle["logits_f32"])[valid].max() <= TOLERANCE


def test_torch_forward_matches_upstream_f32_logits(upstream, oracle):
    tokens = oracle["tokens"]
    logits = torch_logits(open_checkpoint(upstream), tokens, dtype="float32")
    assert logits.dtype == np.float32 and logits.shape == (2, 24, 256)
    assert np.abs(logits - oracle["logits_f32"])[tokens != 0].max() <= TOLERANCE


def test_bfloat16_forward_is_close_but_not_exact(upstream, oracle):
    tokens = oracle["tokens"]
    logits = torch_logits(open_checkpoint(upstream), tokens, dtype="bfloat16")
    diff = np.abs(logits - oracle["logits_f32"])[tokens != 0]
    assert np.isfinite(logits).all()
    assert 1e-3 < diff.max() < 5.0


def test_logits_command(upstream, oracle, tmp_path):
    np.save(tmp_path / "tokens.npy", oracle["tokens"])
    result = CliRunner().invoke(main, ["logits", str(upstream), "--tokens",
                                       str(tmp_path / "tokens.npy"), "--out",
                                       str(tmp_path / "out.npy")])
    assert result.exit_code == 0, result.output
    logits = np.load(tmp_path / "out.npy")
    assert logits.shape == (2, 24, 256) and logits.dtype == np.float32
    assert np.abs(logits - oracle["logits_f32"])[oracle["tokens"] != 0].max() <= TOLERANCE


@pytest.mark.parametrize("bad", ["float", "1d", "range"])
def test_logits_rejects_bad_tokens(upstream, tmp_path, bad):
    tokens = {"float": np.zeros((1, 4), np.float32), "1d": np.zeros(4, np.int32),
              "range": np.full((1, 4), 256, np.int32)}[bad]
    np.save(tmp_path / "t.npy", tokens)
    assert "t.npy" in bad_input("logits", upstream, "--tokens", tmp_path / "t.npy", "--out",
                                tmp_path / "o.npy")
    assert not (tmp_path / "o.npy").exists()
