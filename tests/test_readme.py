"""The README's quick start, run as written: every line exits 0."""

import shlex

import pytest
from click.testing import CliRunner

from grok1.cli import main
from tests.conftest import REPO


def quick_start() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    block = text.split("## Quick start", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def test_the_quick_start_has_commands():
    lines = quick_start()
    assert len(lines) >= 6 and all(line[0] == "grok1" for line in lines)


def test_the_quick_start_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for line in quick_start():
        result = CliRunner().invoke(main, line[1:])
        if result.exit_code != 0:
            pytest.fail(f"{shlex.join(line)} exited {result.exit_code}: {result.output}")
    assert (tmp_path / "layers.png").is_file() and (tmp_path / "logits.npy").is_file()
