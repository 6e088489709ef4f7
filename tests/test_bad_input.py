"""Bad input: one-line errors naming the file, exit code 2, and hostile pickles never run."""

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from converter.errors import (
    CheckpointNotFoundError,
    LayoutError,
    MalformedFileError,
    ShapeMismatchError,
    UnsafePickleError,
)
from converter.files.pickle_reader import load_leaf
from converter.layouts.xai import XaiCheckpoint
from grok1.cli import main
from tests.conftest import bad_input


@pytest.fixture
def ckpt(tiny_ckpt, tmp_path):
    """A private copy of the generated tiny checkpoint that a test may damage."""
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, folder)
    return folder


def inspect(path):
    result = CliRunner().invoke(main, ["inspect", str(path)])
    return result.exit_code, result.output


class Hostile:
    """Pickles to `os.system("touch MARKER")`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_truncated_file(ckpt):
    victim = ckpt / "ckpt-0" / "tensor00003_000"
    victim.write_bytes(victim.read_bytes()[:5000])
    with pytest.raises(MalformedFileError, match=r"tensor00003_000: truncated"):
        load_leaf(victim)
    code, out = inspect(ckpt)
    assert code == 2
    assert "tensor00003_000: truncated" in out


def test_missing_file(ckpt):
    (ckpt / "ckpt-0" / "tensor00017_000").unlink()
    checkpoint = XaiCheckpoint.open(ckpt)
    with pytest.raises(CheckpointNotFoundError, match="tensor00017_000: missing"):
        list(checkpoint)
    code, out = inspect(ckpt)
    assert code == 2 and "tensor00017_000: missing" in out


def test_wrong_shape_or_dtype(ckpt):
    target = ckpt / "ckpt-0" / "tensor00001_000"
    shutil.copy(ckpt / "ckpt-0" / "tensor00013_000", target)  # a router where a norm belongs
    with pytest.raises(ShapeMismatchError, match=r"tensor00001_000: language_model/rms_norm"):
        list(XaiCheckpoint.open(ckpt))
    quantized_where_float = ckpt / "ckpt-0" / "tensor00009_000"
    shutil.copy(ckpt / "ckpt-0" / "tensor00005_000", quantized_where_float)
    code, out = inspect(ckpt)
    assert code == 2
    assert "tensor00001_000" in out and "tensor00009_000" in out  # every problem listed


@pytest.mark.parametrize("payload", ["os.system", "eval", "subclass"])
def test_hostile_pickle_never_runs(ckpt, tmp_path, payload):
    marker = tmp_path / "pwned"
    victim = ckpt / "ckpt-0" / "tensor00000_000"
    if payload == "os.system":
        victim.write_bytes(pickle.dumps(Hostile(marker), protocol=4))
    elif payload == "eval":
        victim.write_bytes(b"\x80\x04cbuiltins\neval\n(V__import__('os').system('touch "
                           + str(marker).encode() + b"')\ntR.")
    else:  # a forbidden global pushed by STACK_GLOBAL: refused at the allow-list, before REDUCE
        victim.write_bytes(b"\x80\x04\x8c\x05posix\x94\x8c\x06system\x94\x93\x94\x8c\x04true"
                           b"\x94\x85\x94R\x94.")
    with pytest.raises(UnsafePickleError, match=r"tensor00000_000: refuses pickle global"):
        load_leaf(victim)
    code, out = inspect(ckpt)
    result = CliRunner().invoke(main, ["inspect", str(ckpt)])
    assert code == 2 and result.exit_code == 2
    assert "refuses pickle global" in out
    assert not marker.exists()


def test_unknown_opcode_is_refused(tmp_path):
    victim = tmp_path / "tensor00000_000"
    victim.write_bytes(b"\x80\x04Pfoo\n.")  # PERSID
    with pytest.raises(UnsafePickleError, match="unsupported pickle opcode"):
        load_leaf(victim)


def test_garbage_and_empty_files(tmp_path):
    garbage = tmp_path / "tensor00000_000"
    garbage.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(MalformedFileError, match="tensor00000_000"):
        load_leaf(garbage)
    empty = tmp_path / "tensor00001_000"
    empty.write_bytes(b"")
    with pytest.raises(MalformedFileError, match="tensor00001_000: empty file"):
        load_leaf(empty)


def test_empty_folder(tmp_path):
    with pytest.raises(LayoutError, match="no tensor"):
        XaiCheckpoint.open(tmp_path)
    assert str(tmp_path) in bad_input("inspect", tmp_path)


def test_not_a_checkpoint(tmp_path):
    stray = tmp_path / "notes.txt"
    stray.write_text("hello")
    assert "notes.txt: not a checkpoint" in bad_input("inspect", stray)
    assert "no such file" in bad_input("inspect", tmp_path / "nowhere")


def test_sidecar_that_contradicts_the_files(ckpt):
    config = (ckpt / "config.json").read_text().replace('"emb": 64', '"emb": 128')
    (ckpt / "config.json").write_text(config.replace('"emb_mult": 8.0', '"emb_mult": 11.3'))
    code, out = inspect(ckpt)
    assert code == 2
    assert "config.json" in out and "tensor00000_000" in out


def test_sidecar_with_fewer_layers_than_files(ckpt):
    config = (ckpt / "config.json").read_text().replace('"layers": 12', '"layers": 2')
    (ckpt / "config.json").write_text(config)
    assert "holds 146 tensor files" in bad_input("inspect", ckpt)


def test_no_sidecar_assumes_the_real_config(ckpt):
    (ckpt / "config.json").unlink()
    code, out = inspect(ckpt)
    assert code == 2
    assert "the real Grok-1 config" in out and "tensor00000_000" in out


def test_make_tiny_refuses_a_non_empty_folder(ckpt):
    assert "--overwrite" in bad_input("make-tiny", ckpt)
