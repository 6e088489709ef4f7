"""The `grok1` command line: a thin orchestrator over the converter, quant and verify packages."""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import math
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from converter import __version__
from converter.dtypes import FORWARD_DTYPES
from converter.engine.executors import EXECUTORS
from converter.errors import DiskSpaceError, Grok1Error, UsageError
from converter.hub.client import invocation
from converter.layouts import DTYPES as LAYOUT_DTYPES
from converter.layouts import LAYOUTS
from converter.model import ARCHITECTURES
from converter.model.config import PRESETS, Grok1Config
from converter.report.serving import OutputKind, unserved_warning
from grok1.exit_codes import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
)
from grok1.fields import split_fields
from grok1.pipeline import PipelineOptions, parse_targets, targets_help
from quant.registry import SCHEMES as QUANT_SCHEMES
from quant.schemes import ARITHMETICS, GRIDS, METHODS, SchemeOptions
from verify.kquant import KQUANTS
from verify.options import VerifyOptions
from verify.profiles import DTYPE_PROFILES, PROFILES
from verify.tokens import MAX_TEXT_TOKENS, TokenSource

# every architecture's Hugging Face name schemes (--names)
NAME_SCHEMES = list(dict.fromkeys(n for a in ARCHITECTURES.values() for n in a.name_schemes))

_MAX_ERROR = 400  # characters of an error line: input echoed in a message stays bounded


def _one_line(text: str) -> str:
    line = " ".join(str(text)[:4 * _MAX_ERROR].split())
    return line if len(line) <= _MAX_ERROR else line[:_MAX_ERROR - 3] + "..."


def _os_error(exc: OSError) -> Grok1Error:
    """A system error as bad input naming the file (ENOSPC as a full disk)."""
    where = exc.filename or ""
    if exc.errno == errno.ENOSPC:
        return DiskSpaceError(f"{where or 'output'}: disk full (no space left on device); free "
                              "space and rerun")
    reason = exc.strerror or str(exc) or type(exc).__name__
    return UsageError(f"{where}: {reason}" if where else reason)


class Grok1Group(click.Group):
    """The command group; every error leaves as one line and its exit code, never a traceback:
    0 ok, 1 verification failed, 2 bad input or usage, 130 interrupted, 70 an internal error
    (a bug: GROK1_DEBUG=1 shows its traceback)."""

    # `--help` lists commands in the order of the work, not alphabetically
    ORDER = ("download", "serve", "inspect", "convert", "quantize", "gguf-quantize", "logits",
             "verify", "serving", "upload", "pipeline", "tokenizer", "make-tiny")

    def list_commands(self, ctx: click.Context) -> list[str]:
        """The commands in the order of the work, any unlisted one last."""
        known = super().list_commands(ctx)
        return [c for c in self.ORDER if c in known] + [c for c in known if c not in self.ORDER]

    argv: tuple[str, ...] = ("grok1",)  # the command line being run, as the manifest records it

    def main(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """Run a command with standalone_mode off, and map every failure to one line."""
        given = args[0] if args else kwargs.get("args")
        self.argv = ("grok1", *(sys.argv[1:] if given is None else given))
        kwargs["standalone_mode"] = False
        if not os.environ.get("GROK1_DEBUG"):  # libraries' warnings are not the user's errors
            warnings.simplefilter("ignore")
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else "")
            code = EXIT_OK
        except click.exceptions.Exit as exc:
            code = exc.exit_code
        except click.ClickException as exc:
            command = exc.ctx.command_path + ": " if getattr(exc, "ctx", None) else ""
            click.echo(f"error: {command}{_one_line(exc.format_message())}", err=True)
            code = EXIT_BAD_INPUT
        except (click.exceptions.Abort, KeyboardInterrupt):
            click.echo("error: interrupted", err=True)
            code = EXIT_INTERRUPTED
        except Grok1Error as exc:
            click.echo(f"error: {_one_line(str(exc))}", err=True)
            code = exc.exit_code
        except OSError as exc:
            error = _os_error(exc)
            click.echo(f"error: {_one_line(str(error))}", err=True)
            code = error.exit_code
        except Exception as exc:
            if os.environ.get("GROK1_DEBUG"):
                raise
            click.echo(f"error: internal error ({type(exc).__name__}: {_one_line(str(exc))}); "
                       "this is a bug: rerun with GROK1_DEBUG=1 and report the traceback",
                       err=True)
            code = EXIT_INTERNAL
        sys.exit(code)


def echo_json(data: Any) -> None:
    """Print machine-readable output."""
    click.echo(json.dumps(data, indent=2, default=str))


def _stack(*options: Callable[..., Any]) -> Callable[..., Any]:
    def apply(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            command = option(command)
        return command
    return apply


def dtype_help() -> str:
    """convert's --dtype help, from each layout's table (layouts that take the same share a
    line; each layout's default first)."""
    groups: dict[tuple[tuple[str, str], ...], list[str]] = {}
    for name, entry in LAYOUTS.items():
        groups.setdefault(tuple(entry.dtypes.items()), []).append(name)
    parts = []
    for dtypes, names in groups.items():
        (first, note), *rest = dtypes
        listed = [f"{first} ({note + '; ' if note else ''}the default)"]
        listed += [f"{d} ({n})" if n else d for d, n in rest]
        parts.append(f"{'/'.join(names)}: {', '.join(listed)}")
    return "Linear weights (any case). " + ". ".join(parts) + "."


NAMES_HELP = ("Tensor names for hf/torch output: hpcai (vLLM <= 0.24, hpcai-tech's port) or "
              "sglang (SGLang's Grok1ForCausalLM); `grok1 serving` says which engine takes what.")
SHARD_SIZE_HELP = "Largest output file: bytes, or with a unit (500MB, 5GB, 2GiB)."
token_options = _stack(
    click.option("--batch", type=click.IntRange(min=1), default=4, show_default=True,
                 help="Sequences of random ids (toy vocabularies); also how many run together."),
    click.option("--seed", type=int, default=0, show_default=True,
                 help="Seed of the random token ids."))
executor_options = _stack(
    click.option("--executor", type=click.Choice(EXECUTORS), default="local",
                 show_default=True, help="Run units here, or as Ray tasks on a cluster."),
    click.option("--ray-address", help="Ray cluster to join (default: start a local one)."))
text_options = _stack(
    click.option("--text-file", "text_files", multiple=True,
                 type=click.Path(path_type=Path, dir_okay=False),
                 help="UTF-8 text; each paragraph (blank-line separated) is one document, "
                      "tokenized with Grok-1's tokenizer (no BOS), padded with id 0. "
                      "Repeatable."),
    click.option("--text", "texts", multiple=True, help="A document given inline. Repeatable."),
    click.option("--max-tokens", type=click.IntRange(min=1), default=MAX_TEXT_TOKENS,
                 show_default=True,
                 help="Stop reading text once this many tokens are kept (memory and time "
                      "grow with it; a file is read only as far as needed)."))
def gathered(cls: type, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator for a command: its options named like fields of the dataclass `cls`
    arrive as one `cls` object, the parameter `name` (put it right above the `def`; of two,
    the upper one gathers first, so the lower one may take its object as a field)."""
    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def wrapper(**options: Any) -> Any:
            made, rest = split_fields(cls, options)
            return command(**rest, **{name: made})
        return wrapper
    return decorate


writer_options = _stack(
    click.option("--workers", type=click.IntRange(min=1),
                 help="Parallel writers (default: cores)."),
    click.option("--resume", is_flag=True, help="Continue an interrupted run in DST."),
    click.option("--overwrite", is_flag=True, help="Replace DST (only a previous grok1 output)."))


@click.group(cls=Grok1Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="grok1")
def main() -> None:
    """Download, convert, quantize, verify and publish Grok-1 checkpoints.

    \b
    Getting started (no download needed):
      grok1 make-tiny ./tiny --preset text      # a small Grok-1 in the release's format
      grok1 convert ./tiny ./tiny-hf --to hf --dtype f32
      grok1 verify ./tiny ./tiny-hf             # exit 0: the same logits
      grok1 serving ./tiny-hf                   # how to serve it
    """


@main.command("make-tiny")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--preset", type=click.Choice(list(PRESETS)), default="tiny", show_default=True,
              help="Model size: tiny (7.5 MB, the upstream fixture's shapes), text (35 MB, "
                   "Grok-1's vocabulary and tokenizer, GGUF-ready), small (46 MB), bench "
                   "(2.2 GB, the real model's ratios), real (the real dimensions).")
@click.option("--layers", type=click.IntRange(min=1), help="Override the preset's layer count.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Random seed of the weights (the same seed, the same bytes).")
@click.option("--overwrite", is_flag=True, help="Replace FOLDER (an earlier make-tiny output).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def make_tiny(folder: Path, preset: str, layers: int | None, seed: int, overwrite: bool,
              quiet: bool, as_json: bool) -> None:
    """Write a deterministic random checkpoint in the exact release layout.

    \b
    Example:
      grok1 make-tiny ./tiny-grok --preset tiny --seed 0
      grok1 make-tiny ./real-1L --preset real --layers 1     # 8.1 GB, bounded memory
    """
    from converter.generate import generate_checkpoint

    config = Grok1Config.preset(preset, layers=layers)
    specs = generate_checkpoint(folder, config, seed=seed, quiet=quiet, overwrite=overwrite)
    summary = {"folder": str(folder), "preset": preset, "seed": seed, "tensors": len(specs),
               "bytes": sum(s.payload_bytes for s in specs), "config": config.to_dict()}
    if as_json:
        echo_json(summary)
    else:
        click.echo(f"wrote {summary['tensors']} tensors ({summary['bytes']:,} bytes) to {folder}")


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--check-hashes", is_flag=True,
              help="Also re-hash every file against the sha256 recorded by `grok1 download`.")
def inspect(path: Path, as_json: bool, check_hashes: bool) -> None:
    """Describe a checkpoint: layout, config, tensors, totals and every integrity problem.

    Exits 2 when any problem is found.

    \b
    Example:
      grok1 inspect ./tiny-grok
      grok1 inspect ./tiny-grok --json | jq .problems
      grok1 inspect ./grok-1 --check-hashes      # after `grok1 download`
    """
    from converter.report.inspect import format_report, inspect_checkpoint

    report = inspect_checkpoint(path, check_hashes=check_hashes)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
    if report["problems"]:
        sys.exit(EXIT_BAD_INPUT)


class FiniteFloat(click.ParamType):
    """A finite, non-negative number (NaN and infinity are refused)."""

    name = "number"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        """Parse and check."""
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number) or number < 0:
            self.fail(f"{value!r} must be a finite, non-negative number", param, ctx)
        return number


def output_file(path: Path | None, flag: str) -> None:
    """Refuse an output file path that is a folder or lies in a missing folder, before any
    work is done ('-' means stdout)."""
    if path is None or str(path) == "-":
        return
    if path.is_dir():
        raise UsageError(f"{path}: {flag} names a folder; give a file path")
    if not path.parent.is_dir():
        raise UsageError(f"{path}: {flag}'s folder {path.parent} does not exist")


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--tokens", "tokens_path", type=click.Path(path_type=Path),
              help="int array [batch, seq] as .npy; id 0 is padding.")
@text_options
@click.option("--seq-len", type=click.IntRange(min=1), default=8192, show_default=True,
              help="With text: tokens kept per document.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Where to write float32 logits [batch, seq, vocab] as .npy (with text, the "
                   "token ids go to OUT.tokens.npy).")
@click.option("--dtype", type=click.Choice(FORWARD_DTYPES), default="float32",
              show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@gathered(TokenSource, "tokens")
def logits(checkpoint: Path, tokens: TokenSource, out: Path, dtype: str, device: str,
           quiet: bool) -> None:
    """Run the streamed forward pass and write the full logits.

    \b
    Examples:
      grok1 logits ./tiny-grok --tokens tokens.npy --out logits.npy
      grok1 logits ./grok-1 --text "The answer to life" --out logits.npy
    """
    from verify.api import write_logits

    output_file(out, "--out")
    shape, source = write_logits(checkpoint, out, tokens, dtype=dtype, device=device,
                                 quiet=quiet)
    click.echo(f"wrote logits {list(shape)} to {out} ({source})", err=True)


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--tokens", "tokens_path", type=click.Path(path_type=Path),
              help="int array [batch, seq] as .npy; id 0 is padding.")
@text_options
@click.option("--seq-len", type=click.IntRange(min=2), default=64, show_default=True,
              help="Tokens per sequence (random ids), or kept per document (text).")
@token_options
@click.option("--profile", "profile_name", type=click.Choice(list(PROFILES)),
              help="Pass/fail limits (default: inferred from how CANDIDATE was made: "
                   "lossless for f32/int8 conversions, int8 for bf16, the scheme's for "
                   "quantize outputs).")
@click.option("--max-kl", type=FiniteFloat(),
              help="Override the profile's mean-KL limit (" + ", ".join(
                  f"{name} {limits.max_kl:g}" for name, limits in PROFILES.items()) + ").")
@click.option("--min-top1", type=FiniteFloat(),
              help="Override the profile's top-1 agreement floor (" + ", ".join(
                  f"{name} {limits.min_top1:g}" for name, limits in PROFILES.items()) + ").")
@click.option("--max-ppl-ratio", type=FiniteFloat(), help="Override the perplexity-ratio limit.")
@click.option("--max-abs-diff", type=FiniteFloat(), help="Override the max |logit diff| limit.")
@click.option("--per-layer", is_flag=True,
              help="Run each candidate layer on the reference's input; report per layer.")
@click.option("--check-tensors/--no-check-tensors", default=None,
              help="Compare every tensor bit for bit (default: on for --profile lossless).")
@click.option("--save-reference", type=click.Path(path_type=Path),
              help="Store the reference run (top-k log-probs) for reuse.")
@click.option("--reference-logits", type=click.Path(path_type=Path),
              help="Reuse a stored reference run instead of running REFERENCE.")
@click.option("--top-k", type=click.IntRange(min=1), default=256, show_default=True,
              help="Reference log-probs kept per position by --save-reference.")
@click.option("--dtype", type=click.Choice(FORWARD_DTYPES), default="float32",
              show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@executor_options
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="With --executor ray: how many tasks share the sequences.")
@click.option("--json", "json_path", type=click.Path(path_type=Path),
              help="Write the report as JSON here ('-' for stdout).")
@click.option("--markdown", "markdown_path", type=click.Path(path_type=Path),
              help="Write the report as Markdown here.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path),
              help="With --per-layer: draw the per-layer errors (PNG) here.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@gathered(TokenSource, "tokens")
@gathered(VerifyOptions, "options")
def verify(paths: tuple[Path, ...], options: VerifyOptions, max_kl: float | None,
           min_top1: float | None, max_ppl_ratio: float | None, max_abs_diff: float | None,
           save_reference: Path | None, top_k: int, json_path: Path | None,
           markdown_path: Path | None, plot_path: Path | None) -> None:
    """Check CANDIDATE against REFERENCE: usage `grok1 verify [REFERENCE] CANDIDATE`.

    Runs both forwards layer-major and compares logits at non-pad positions. Without --tokens
    or text, a model with Grok-1's vocabulary is checked on the natural-text set this package
    ships (--seq-len tokens of each of its documents), a toy vocabulary on random ids
    (--batch x --seq-len). Exits 0 on pass, 1 on fail, 2 on bad input.

    \b
    Examples:
      grok1 verify ./grok-1 ./grok-1-hf --profile lossless --per-layer
      grok1 verify ./grok-1 ./grok-1-int4 --profile int4 --json report.json
      grok1 verify ./grok-1 ./grok-1-hf --save-reference ref.npz
      grok1 verify ./grok-1-int8 --reference-logits ref.npz --profile int8
      grok1 verify ./grok-1 ./grok-1-int8 --profile int8 --text-file essay.txt
    """
    from verify.api import report_dict, verify_checkpoints, write_reports
    from verify.report import format_table

    if plot_path is not None and not options.per_layer:
        raise UsageError("--plot draws the per-layer errors: add --per-layer")
    for path, flag in ((json_path, "--json"), (markdown_path, "--markdown"),
                       (plot_path, "--plot"), (save_reference, "--save-reference")):
        output_file(path, flag)
    result = verify_checkpoints(paths, dataclasses.replace(
        options, overrides={"max_kl": max_kl, "min_top1": min_top1,
                            "max_ppl_ratio": max_ppl_ratio, "max_abs_diff": max_abs_diff},
        keep_top_k=top_k if save_reference else None))
    if save_reference and result.reference is not None:
        result.reference.save(save_reference)
    to_stdout = str(json_path) == "-"
    write_reports(result, json_path=None if to_stdout else json_path,
                  markdown_path=markdown_path, plot_path=plot_path)
    click.echo(json.dumps(report_dict(result), indent=2) if to_stdout
               else format_table(result))
    sys.exit(EXIT_OK if result.passed else EXIT_FAILED)


def _print_run(summary: dict[str, Any], dst: Path, as_json: bool) -> None:
    if as_json:
        echo_json(summary)
    elif "files" in summary:
        from converter.files.atomic import free_bytes

        for item in summary["files"]:
            click.echo(f"{item['bytes']:>16,}  {item['path']}")
        click.echo(f"{summary['units']} files, {summary['bytes']:,} bytes "
                   f"(free: {free_bytes(dst):,})")
    else:
        click.echo(f"converted {summary['tensors']} tensors into {summary['units']} files "
                   f"({summary['bytes']:,} bytes) in {summary['seconds']:.1f}s -> {dst}")


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--to", "to", type=click.Choice(list(LAYOUTS)), default="hf", show_default=True,
              help="Output layout: " + "; ".join(f"{e.name}: {e.summary}"
                                                 for e in LAYOUTS.values()) + ".")
@click.option("--names", type=click.Choice(NAME_SCHEMES),
              help=NAMES_HELP + " For --to hf and torch [default: hpcai].")
@click.option("--dtype", type=click.Choice(LAYOUT_DTYPES, case_sensitive=False),
              help=dtype_help())
@click.option("--shard-size", default="5GB", show_default=True,
              help=SHARD_SIZE_HELP)
@click.option("--tokenizer", metavar="PATH|none",
              help="Tokenizer files to ship: by default Grok-1's when the model's vocabulary "
                   "is Grok-1's (131072); a SentencePiece .model; or none.")
@writer_options
@click.option("--dry-run", is_flag=True, help="Print the plan; write nothing.")
@executor_options
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary at the end.")
def convert(src: Path, dst: Path, to: str, names: str | None, dtype: str | None, shard_size: str,
            tokenizer: str | None, workers: int | None, resume: bool, overwrite: bool,
            dry_run: bool, executor: str, ray_address: str | None, quiet: bool,
            as_json: bool) -> None:
    """Convert SRC to another layout in DST, streaming one tensor at a time.

    \b
    Examples:
      grok1 convert ./grok-1 ./grok-1-hf --to hf --dtype bf16
      grok1 convert ./grok-1 ./grok-1-int8 --to hf --dtype int8 --names sglang
      grok1 convert ./grok-1-int8 ./grok-1-again --to xai      # byte-identical to the release
      grok1 convert ./grok-1 ./out --to hf --resume            # after an interruption
      grok1 convert ./grok-1 ./grok-1-gguf --to gguf --dtype q8_0 --shard-size 45GB
    """
    from converter.convert import convert as run
    from converter.layouts.base import TargetOptions
    from converter.sizes import parse_size

    options = TargetOptions(names=names, dtype=dtype, shard_size=parse_size(shard_size),
                            tokenizer=tokenizer)
    summary = run(src, dst, to=to, options=options, workers=workers, resume=resume,
                  overwrite=overwrite, dry_run=dry_run, quiet=quiet, executor=executor,
                  ray_address=ray_address, command=invocation(list(main.argv)))
    made = str(summary.get("dtype"))
    lossy = DTYPE_PROFILES.get(made, "lossless") != "lossless" and not dry_run
    warning = _lossy_on_lossy(src, f"--dtype {made}") if lossy else None
    _print_run({**summary, "warning": warning} if as_json else summary, dst, as_json)
    if warning and not as_json:
        click.echo(warning, err=True)


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--scheme", "scheme_name", type=click.Choice(list(QUANT_SCHEMES)), required=True,
              help="; ".join(f"{e.name}: {e.summary}" for e in QUANT_SCHEMES.values()) + ".")
@click.option("--group-size", type=click.IntRange(min=1),
              help="Input columns per scale (default: the scheme's).")
@click.option("--symmetric/--asymmetric", default=True, show_default=True,
              help="Integer schemes only.")
@click.option("--method", type=click.Choice(METHODS), default="rtn", show_default=True,
              help="rtn: min/max; mse: per group, the clipping range with least error.")
@click.option("--arithmetic", type=click.Choice(ARITHMETICS), default="f32", show_default=True,
              help="Integer schemes: w / scale in float32 (compressed-tensors' GPU kernel), or "
                   "rounded to bf16 as compressed-tensors' torch path does (llm-compressor on a "
                   "CPU: the same bytes; less precise for int8). NVFP4: the scale divisions "
                   "compressed-tensors computes in the model's dtype, in float32 or rounded to "
                   "bf16 (llm-compressor on a bf16 model: the same bytes).")
@click.option("--grid", type=click.Choice(GRIDS), default="compressed-tensors",
              show_default=True,
              help="Integer schemes: compressed-tensors' (scale max|w| / 7.5 or / 127.5), or "
                   "the release's (max|w| / 7 or / 127, symmetric: int8 from the release keeps "
                   "its per-channel codes exactly).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True, help="auto picks the Triton kernel when a GPU is present.")
@click.option("--text-file", "text_files", multiple=True, type=click.Path(path_type=Path),
              help="nvfp4 (W4A4) only: calibrate the activation scales on this text (blank "
                   "lines separate documents; each cut to 512 tokens; repeatable). Default: "
                   "the shipped natural text.")
@click.option("--names", type=click.Choice(NAME_SCHEMES),
              help=NAMES_HELP + " Default: hpcai (w8a8-int8: sglang, its only names).")
@click.option("--shard-size", default="5GB", show_default=True,
              help=SHARD_SIZE_HELP)
@click.option("--tokenizer", metavar="PATH|none",
              help="Tokenizer files to ship: by default Grok-1's when the model's vocabulary "
                   "is Grok-1's (131072); a SentencePiece .model; or none.")
@writer_options
@executor_options
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary at the end.")
@gathered(SchemeOptions, "options")
def quantize(src: Path, dst: Path, scheme_name: str, options: SchemeOptions, device: str,
             text_files: tuple[Path, ...], names: str | None, shard_size: str,
             tokenizer: str | None, workers: int | None, resume: bool, overwrite: bool,
             executor: str, ray_address: str | None, quiet: bool, as_json: bool) -> None:
    """Re-quantize SRC (any layout) into compressed-tensors (SGLang's w8a8_int8) in DST.

    Writes quantization_report.json and prints the ten tensors with the largest error.

    \b
    Examples:
      grok1 quantize ./grok-1 ./grok-1-w4a16 --scheme int4 --group-size 128
      grok1 quantize ./grok-1 ./grok-1-w8a16 --scheme int8 --method mse --device cpu
      grok1 quantize ./grok-1 ./grok-1-fp8 --scheme fp8       # Hopper: W8A8-FP8
      grok1 quantize ./grok-1 ./grok-1-nvfp4 --scheme nvfp4 --names sglang  # Blackwell
    """
    from converter.sizes import parse_size
    from grok1.calibration import calibration_for
    from quant.registry import quantize_checkpoint, scheme_names

    names = scheme_names(scheme_name, names)
    calibration = calibration_for(scheme_name, src, text_files)
    asymmetric = not options.symmetric and QUANT_SCHEMES[scheme_name].integer
    warning = unserved_warning(OutputKind("hf", names, scheme_name + (
        "-asym" if asymmetric else "")))
    summary = quantize_checkpoint(src, dst, scheme_name, options, names=names,
                                  shard_size=parse_size(shard_size), tokenizer=tokenizer,
                                  device=device, workers=workers, resume=resume,
                                  overwrite=overwrite, quiet=quiet, executor=executor,
                                  ray_address=ray_address, command=invocation(list(main.argv)),
                                  calibration=calibration)
    rows = summary.pop("rows")
    lossy = _lossy_on_lossy(src, f"--scheme {scheme_name}")
    if as_json:
        echo_json({**summary, "serving_warning": warning, "warning": lossy})
        return
    for line in (warning, lossy):
        if line:
            click.echo(line, err=True)
    click.echo(f"{summary['scheme']} on {summary['device']}: {summary['report']['tensors']} "
               f"Linears quantized, {summary['tensors']} tensors written into "
               f"{summary['units']} files in {summary['seconds']:.1f}s -> {dst}")
    click.echo(f"{'tensor':<60} {'rel RMS':>9} {'max err':>10} {'clipped':>8}")
    for row in rows[:10]:
        click.echo(f"{row['tensor']:<60} {row['rel_rms']:>9.4f} {row['max_abs_err']:>10.3g} "
                   f"{row['clipped_pct']:>7.2f}%")


@main.command("gguf-quantize")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path, file_okay=False))
@click.option("--type", "kind", type=click.Choice(list(KQUANTS)), default="Q4_K_M",
              show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=2, show_default=True,
              help="Sequences (or documents of the shipped text) the result is checked on.")
@click.option("--seq-len", type=click.IntRange(min=2), default=32, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def gguf_quantize(src: Path, dst: Path, kind: str, batch: int, seq_len: int,
                  as_json: bool) -> None:
    """K-quant a GGUF with llama.cpp itself, then verify it in llama.cpp.

    Needs llama-cpp-python. SRC is a GGUF folder written by `grok1 convert --to gguf` (bf16 or
    q8_0 best); the result is run in llama.cpp and compared with our forward of SRC, judged by
    the int4 profile (Q4/Q5) or int8 (Q6_K). Exits 1 when it does not pass: no K-quant is
    claimed that was not verified.

    \b
    Example:
      grok1 convert ./grok-1 ./grok-1-bf16 --to gguf --dtype bf16
      grok1 gguf-quantize ./grok-1-bf16 ./grok-1-q4km --type Q4_K_M
    """
    from verify.kquant import quantize_gguf

    report = quantize_gguf(src, dst, kind, batch=batch, seq_len=seq_len)
    if as_json:
        echo_json(report)
    else:
        m = report["metrics"]
        measured = (f"mean KL {m['kl_mean']:.4g}, top-1 {m['top1_agreement']:.1%} on "
                    f"{report['tokens']} (profile {report['profile']})" if m else "not run")
        click.echo(f"{kind} -> {dst / report['file']}: {measured}: " + (
            "verified" if report["verified"] else "NOT verified: " + "; ".join(report["reasons"])))
    sys.exit(EXIT_OK if report["verified"] else EXIT_FAILED)


@main.command()
@click.argument("dst", type=click.Path(path_type=Path, file_okay=False))
@click.option("--model", "model", type=click.Path(path_type=Path, dir_okay=False),
              help="A SentencePiece BPE model (default: Grok-1's, shipped with this package).")
@click.option("--overwrite", is_flag=True, help="Replace tokenizer files already in DST.")
def tokenizer(dst: Path, model: Path | None, overwrite: bool) -> None:
    """Write Grok-1's tokenizer as Hugging Face files into DST.

    tokenizer.json, tokenizer_config.json, special_tokens_map.json and the original
    tokenizer.model: AutoTokenizer.from_pretrained(DST) and tokenizers.Tokenizer give exactly
    SentencePiece's ids, with no BOS added (as the original runners encode).

    \b
    Example:
      grok1 tokenizer ./grok-1-tokenizer
      # then: AutoTokenizer.from_pretrained("./grok-1-tokenizer")("Hello").input_ids
    """
    from converter.tokenizer import GROK1_MODEL, TOKENIZER_FILES, write_tokenizer

    if dst.exists() and not dst.is_dir():
        raise UsageError(f"{dst}: exists and is not a folder")
    present = [name for name in TOKENIZER_FILES if (dst / name).exists()]
    if present and not overwrite:
        raise UsageError(f"{dst}: already holds {present[0]}; pass --overwrite to replace the "
                         "tokenizer files")
    dst.mkdir(parents=True, exist_ok=True)
    written = write_tokenizer(dst, model or GROK1_MODEL)
    click.echo(f"wrote {', '.join(written)} to {dst}")


@main.command()
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; loopback unless you mean to serve a cluster.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="0 picks a free port.")
@click.option("--rate-limit", type=click.IntRange(min=0), default=0,
              help="Cap each download at this many bytes/s (for testing slow links).")
@click.option("--token", envvar="GROK1_SERVE_TOKEN",
              help="Accept writes only with this token (clients set HF_TOKEN). Required for "
                   "uploads when --host is not loopback; env GROK1_SERVE_TOKEN.")
def serve(folder: Path, host: str, port: int, rate_limit: int, token: str | None) -> None:
    """Serve FOLDER (repos as FOLDER/NAMESPACE/NAME/) as a Hugging Face Hub endpoint.

    Enough of the Hub API for huggingface_hub's downloads and uploads: point clients at it
    with HF_ENDPOINT. Uploads land as plain files, checked by sha256; they speak the plain LFS
    protocol, so upload clients need HF_HUB_DISABLE_XET=1. Only regular files inside FOLDER
    are served. Bound beyond loopback without --token, the server is read-only.

    \b
    Example:
      grok1 make-tiny ./hub/xai-org/grok-1 --preset small
      grok1 serve ./hub --port 8080 &
      HF_ENDPOINT=http://127.0.0.1:8080 grok1 download --local-dir ./grok-1
      HF_ENDPOINT=http://127.0.0.1:8080 HF_HUB_DISABLE_XET=1 grok1 upload ./out --repo me/x
    """
    from converter.hub.server import make_server

    folder.mkdir(parents=True, exist_ok=True)
    try:
        server = make_server(folder, host, port, rate_limit, token=token)
    except OSError as exc:
        raise UsageError(f"{host}:{port}: cannot listen ({exc.strerror or exc})") from None
    loopback = host in ("127.0.0.1", "::1", "localhost")
    mode = ("" if loopback or token else
            " (read-only: uploads need --token when serving beyond loopback)")
    click.echo(f"serving {folder} at http://{host}:{server.server_address[1]}{mode}", err=False)
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@main.command()
@click.option("--repo", default="xai-org/grok-1", show_default=True)
@click.option("--revision", help="Branch, tag or commit (resolved once to a commit).")
@click.option("--local-dir", type=click.Path(path_type=Path, file_okay=False),
              default=Path("grok-1"), show_default=True)
@click.option("--include", multiple=True, help="Glob of files to fetch (default ckpt-0/*).")
@click.option("--workers", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--endpoint", help="Hub URL (default: HF_ENDPOINT or huggingface.co).")
@click.option("--dry-run", is_flag=True, help="Print the plan: files, bytes, already present.")
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check.")
@click.option("--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
def download(repo: str, revision: str | None, local_dir: Path, include: tuple[str, ...],
             workers: int, endpoint: str | None, dry_run: bool, no_verify: bool, quiet: bool,
             as_json: bool) -> None:
    """Download the original checkpoint, pinned to a commit, sha256-checked, resumable.

    \b
    Example:
      grok1 download --local-dir ./grok-1                 # ckpt-0/*, 318 GB
      grok1 download --dry-run --revision main
    """
    from converter.hub.client import download as run

    summary = run(repo, local_dir, revision=revision, include=include, workers=workers,
                  dry_run=dry_run, verify=not no_verify, quiet=quiet, endpoint=endpoint)
    if as_json:
        echo_json(summary)
    elif dry_run:
        for item in summary["plan"]:
            click.echo(f"{item['bytes']:>16,}  {'present ' if item['present'] else 'missing '}"
                       f"{item['path']}")
        click.echo(f"{summary['files']} files, {summary['bytes']:,} bytes; already present: "
                   f"{summary['present']} ({summary['present_bytes']:,} bytes); commit "
                   f"{summary['commit']}")
    else:
        click.echo(f"{repo}@{summary['commit'][:12]}: {summary['files']} files "
                   f"({summary['bytes']:,} bytes) in {local_dir}, "
                   f"{summary['downloaded']} downloaded")


@main.command()
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@click.option("--repo", required=True, help="Target repo id, e.g. me/grok-1-w4a16.")
@click.option("--revision", help="Branch to commit to.")
@click.option("--private", is_flag=True)
@click.option("--create-pr", is_flag=True, help="Open a pull request instead of committing.")
@click.option("--endpoint", help="Hub URL (default: HF_ENDPOINT or huggingface.co).")
@click.option("--any-folder", is_flag=True,
              help="Publish a folder this toolchain did not write, or one `grok1 inspect` "
                   "rejects (refused otherwise).")
@click.option("--json", "as_json", is_flag=True)
def upload(folder: Path, repo: str, revision: str | None, private: bool, create_pr: bool,
           endpoint: str | None, any_folder: bool, as_json: bool) -> None:
    """Upload FOLDER with a generated model card; rerun to resume.

    \b
    Example:
      grok1 upload ./grok-1-int4 --repo me/grok-1-w4a16
    """
    from converter.hub.client import upload as run

    info = run(folder, repo, revision=revision, private=private, create_pr=create_pr,
               endpoint=endpoint, any_folder=any_folder)
    if info["warning"] and not as_json:
        click.echo(info["warning"], err=True)
    if as_json:
        echo_json(info)
    else:
        click.echo(f"uploaded {folder} -> {info['url']}")


@main.command(epilog="\b\nTargets (comma-separated, case-insensitive):\n" + targets_help())
@click.option("--to", "to", required=True, metavar="TARGET[,TARGET...]",
              callback=lambda _ctx, _param, value: tuple(parse_targets(value)),
              help="What to make (listed below); several share one download, e.g. "
                   "--to int8,int4,gguf-Q8_0.")
@click.option("--repo", default="xai-org/grok-1", show_default=True, help="Source repo.")
@click.option("--revision")
@click.option("--source", "source_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Use this local copy of the release (made by `grok1 download`, checked "
                   "against its recorded hashes) instead of downloading.")
@click.option("--work-dir", type=click.Path(path_type=Path, file_okay=False),
              default=Path("grok1-work"), show_default=True)
@click.option("--upload", "upload", metavar="REPO",
              help="Repo to publish each verified result to; with several targets, {to} "
                   "stands for the target (me/grok-1-{to}).")
@click.option("--names", type=click.Choice(NAME_SCHEMES),
              help=NAMES_HELP + " For hf and quantized targets [default: hpcai].")
@click.option("--tokenizer", metavar="PATH|none",
              help="Tokenizer files to ship (default: Grok-1's for a 131072-token vocabulary).")
@click.option("--endpoint", help="Hub URL (default: HF_ENDPOINT or huggingface.co).")
@click.option("--workers", type=click.IntRange(min=1), help="Default: cores.")
@click.option("--seq-len", type=click.IntRange(min=2), default=64, show_default=True)
@token_options
@executor_options
@click.option("--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@gathered(PipelineOptions, "options")
def pipeline(options: PipelineOptions, as_json: bool) -> None:
    """Download once -> for each target: convert or quantize -> verify -> upload.

    A rerun resumes at each target's first unfinished step, and may add targets to the same
    --work-dir (they reuse its download). Exits 1 (uploading nothing of that target) when a
    verification fails.

    \b
    Examples:
      grok1 pipeline --to int4 --work-dir ./work --upload me/grok-1-w4a16
      grok1 pipeline --to int8,int4,gguf-Q8_0 --upload me/grok-1-{to}
      grok1 pipeline --to hf-bf16 --source ./grok-1 --names sglang
    """
    from grok1.pipeline import DEFAULT_NAMES, run_pipeline

    names = options.names or DEFAULT_NAMES
    warnings = [w for t in options.to if (w := unserved_warning(t.kind(names)))]
    state = run_pipeline(options, echo=(lambda _: None) if as_json else click.echo)
    if as_json:
        echo_json({**state, "serving_warnings": warnings})
        return
    for warning in warnings:
        click.echo(warning, err=True)
    for target in options.to:
        steps = state["targets"][target.name]
        fetched = "check" if state["steps"]["download"].get("local") else "download"
        done = [fetched, *(target.verb if step == "convert" else step for step in steps)]
        click.echo(f"pipeline {target.name}: done ({', '.join(done)})")


def _lossy_on_lossy(source: Path, step: str) -> str | None:
    """A warning when a lossy step is applied to a source that is itself lossy."""
    from verify.profiles import infer_profile

    profile, why = infer_profile(source) if Path(source).is_dir() else ("lossless", "")
    if profile == "lossless":
        return None
    return (f"warning: {source} is already lossy ({why}); {step} adds its own error on top "
            "(make it from the original release instead; the output's manifest records both "
            "steps)")


@main.command()
@click.argument("folder", required=False, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def serving(folder: Path | None, as_json: bool) -> None:
    """How to serve an output folder, or (without FOLDER) the whole serving table.

    The table gives, for every output kind (layout, tensor names, weights), the engines that
    load it with their versions, and the real model's weight bytes per GPU.

    \b
    Examples:
      grok1 serving ./grok-1-fp8       # engines, commands and caveats for this folder
      grok1 serving                    # the table the README shows
    """
    from converter.report.serving import how_to_serve, kind_of, serving_engines, serving_table
    from grok1.sizes import real_model_sizes

    if folder is None:
        lines = serving_table(real_model_sizes())
        click.echo(json.dumps(lines) if as_json else "\n".join(lines))
        return
    if not folder.is_dir():
        raise UsageError(f"{folder}: not a folder")
    kind = kind_of(folder)
    if kind is None:
        raise UsageError(f"{folder}: not an output of grok1-toolchain (no Grok-1 config.json, "
                         "GGUF or ckpt-0/)")
    if as_json:
        echo_json({"kind": kind.label(), "engines": [
            {"name": e.name, "versions": e.versions, "serves": e.serves,
             "command": e.command.format(path=folder)} for e in serving_engines(kind)]})
    else:
        click.echo("\n".join(how_to_serve(folder)).strip())
