"""Shared test fixtures: the upstream fixture checkpoint and small generated checkpoints."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import torch

if not torch.cuda.is_available():
    # Triton kernels run on CPU tensors through Triton's interpreter (set before any import).
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from converter.generate import generate_checkpoint
from converter.model.config import Grok1Config

REPO = Path(__file__).resolve().parent.parent
TEST_DATA = REPO / "tests" / "data"  # copies of the shared fixtures, with their provenance
UPSTREAM = TEST_DATA / "grok1-tiny-upstream"
REAL_INDEX = TEST_DATA / "grok1-real-index.tsv"


def file_digests(folder: Path, *, skip: Callable[[Path], bool] = lambda path: False
                 ) -> dict[str, str]:
    """sha256 of every file under `folder` (relative path -> digest), except those skipped."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file() and not skip(p)}


def output_digests(folder: Path) -> dict[str, object]:
    """What must be the same in two runs of one conversion into different folders: every
    file's sha256, and the manifest without the command line (which names the folder)."""
    import json

    found: dict[str, object] = dict(file_digests(
        folder, skip=lambda path: path.name == "grok1-manifest.json"))
    manifest = json.loads((Path(folder) / "grok1-manifest.json").read_text())
    found["grok1-manifest.json"] = {k: v for k, v in manifest.items() if k != "command"}
    return found


@pytest.fixture(scope="session")
def upstream() -> Path:
    """The 12-layer checkpoint written by the original xAI code, with its oracle logits."""
    if not (UPSTREAM / "ckpt-0").is_dir():
        pytest.fail(f"missing {UPSTREAM}: the repository's test data is incomplete")
    return UPSTREAM


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated `tiny` checkpoint (read-only: copy it before changing anything)."""
    folder = tmp_path_factory.mktemp("tiny") / "ckpt"
    generate_checkpoint(folder, Grok1Config.preset("tiny"), seed=1, quiet=True)
    return folder


@pytest.fixture(scope="session")
def small_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated `small` checkpoint (about 46 MB)."""
    folder = tmp_path_factory.mktemp("small") / "ckpt"
    generate_checkpoint(folder, Grok1Config.preset("small"), seed=2, quiet=True)
    return folder


@pytest.fixture(scope="session")
def fp4_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`small` with an expert width (1024) that FP4's groups of 16 and 32 cover (small's 1368
    is not)."""
    folder = tmp_path_factory.mktemp("fp4-source") / "ckpt"
    generate_checkpoint(folder, Grok1Config.preset("small", ffn_size=1024), seed=3, quiet=True)
    return folder


def bad_input(*args: object) -> str:
    """Run `grok1 ARGS`; assert it exits 2 with exactly one line, `error: ...`, on stderr and no
    traceback anywhere. Returns that line."""
    from click.testing import CliRunner

    from grok1.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    shown = f"exit {result.exit_code}\n{result.output}"
    assert "Traceback" not in result.output, shown
    assert isinstance(result.exception, SystemExit), (shown, result.exception)
    assert result.exit_code == 2, shown
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    return lines[0]


@pytest.fixture(scope="session")
def real_vocab_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated 2-layer checkpoint with Grok-1's 131072-token vocabulary (about 35 MB), in
    a shape llama.cpp accepts (4 query heads x 16 = the embedding size, 64)."""
    folder = tmp_path_factory.mktemp("real-vocab") / "ckpt"
    config = Grok1Config.preset("tiny", layers=2, vocab=131072, q_heads=4, kv_heads=2)
    generate_checkpoint(folder, config, seed=3, quiet=True)
    return folder
