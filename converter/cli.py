"""The `grok1` command line: a thin orchestrator over the converter, quant and verify packages."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from converter import __version__
from converter.config import PRESETS, Grok1Config
from converter.errors import Grok1Error, UsageError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn project errors into a one-line message and their exit code, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except Grok1Error as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper


def echo_json(data: Any) -> None:
    """Print machine-readable output."""
    click.echo(json.dumps(data, indent=2, default=str))


def require_empty(folder: Path, overwrite: bool) -> None:
    """Refuse a non-empty output folder unless the user asked to overwrite it."""
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise UsageError(f"{folder}: exists and is not empty; pass --overwrite to replace it")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="grok1")
def main() -> None:
    """Download, convert, quantize, verify and publish Grok-1 checkpoints."""


@main.command("make-tiny")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--preset", type=click.Choice(list(PRESETS)), default="tiny", show_default=True,
              help="Model size: tiny (7.5 MB), small (46 MB), bench (2.2 GB), real.")
@click.option("--layers", type=click.IntRange(min=1), help="Override the preset's layer count.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace a non-empty FOLDER.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@handle_errors
def make_tiny(folder: Path, preset: str, layers: int | None, seed: int, overwrite: bool,
              quiet: bool, as_json: bool) -> None:
    """Write a deterministic random checkpoint in the exact release layout.

    \b
    Example:
      grok1 make-tiny ./tiny-grok --preset tiny --seed 0
      grok1 make-tiny ./real-1L --preset real --layers 1     # 8.1 GB, bounded memory
    """
    from converter.generate import generate_checkpoint

    require_empty(folder, overwrite)
    config = Grok1Config.preset(preset, layers=layers)
    specs = generate_checkpoint(folder, config, seed=seed, quiet=quiet)
    summary = {"folder": str(folder), "preset": preset, "seed": seed, "tensors": len(specs),
               "bytes": sum(s.payload_bytes for s in specs), "config": config.to_dict()}
    if as_json:
        echo_json(summary)
    else:
        click.echo(f"wrote {summary['tensors']} tensors ({summary['bytes']:,} bytes) to {folder}")


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@handle_errors
def inspect(path: Path, as_json: bool) -> None:
    """Describe a checkpoint: layout, config, tensors, totals and every integrity problem.

    Exits 2 when any problem is found.

    \b
    Example:
      grok1 inspect ./tiny-grok
      grok1 inspect ./tiny-grok --json | jq .problems
    """
    from converter.inspect import format_report, inspect_checkpoint

    report = inspect_checkpoint(path)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
    if report["problems"]:
        sys.exit(EXIT_BAD_INPUT)
