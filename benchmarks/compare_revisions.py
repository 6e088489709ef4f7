"""The same commands with the code of an earlier git revision and with the working tree, in one
run: wall seconds, CPU seconds (user + system, and system alone) and peak RSS, each the run with
the median wall time of `--runs`, on the 6-layer `bench` input.

    python -m benchmarks.compare_revisions fe404cd [--layers 6] [--runs 3]

The revision is checked out into a temporary git worktree and run with this environment's
Python and dependencies.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from benchmarks.common import checkpoint, median_of

ROOT = Path(__file__).resolve().parent.parent
# {src}: the bench input; {out}: where the command writes
COMMANDS = [["convert", "{src}", "{out}", "--to", "hf", "--dtype", "bf16"],
            ["convert", "{src}", "{out}", "--to", "hf", "--dtype", "int8"],
            ["quantize", "{src}", "{out}", "--scheme", "int4"],
            ["quantize", "{src}", "{out}", "--scheme", "fp8"],
            ["quantize", "{src}", "{out}", "--scheme", "int4", "--method", "mse"],
            # the streamed forward twice, layer-major (4 x 128 random ids; the int8 profile's
            # limits, since two runs of one forward need not agree to the last bit in BLAS)
            ["verify", "{src}", "{src}", "--seq-len", "128", "--no-check-tensors",
             "--profile", "int8", "--json", "{out}"]]


def grok1_in(tree: Path, *args: str) -> list[str]:
    """A grok1 command line that imports the package from `tree` (and says so if it does not)."""
    python = shlex.quote(str(Path(shutil.which("python") or "python")))
    check = (f"import converter, sys; assert converter.__file__.startswith({str(tree)!r}); "
             "from grok1.cli import main; main()")
    return ["sh", "-c", f"cd {shlex.quote(str(tree))} && PYTHONPATH=. exec {python} -c "
            f"{shlex.quote(check)} {shlex.join(args)}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("revision")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    source = checkpoint("bench", args.layers)
    print(f"| command | {args.revision}: s | CPU s | sys | RSS MB | now: s | CPU s | sys | "
          "RSS MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(old),
                        args.revision], check=True)
        out = Path(tmp) / "out"

        def clean() -> None:
            if out.is_dir():
                shutil.rmtree(out)
            out.unlink(missing_ok=True)

        try:
            for command in COMMANDS:
                cells = []
                for tree in (old, ROOT):
                    words = [w.format(src=source, out=out) for w in command]
                    run = median_of(args.runs, grok1_in(tree, *words, "--quiet"), clean)
                    cells.append(f"{run.seconds:.1f} | {run.cpu:.1f} | {run.sys:.1f} | "
                                 f"{run.rss / 1e6:.0f}")
                shown = " ".join(w for w in command if w not in ("{src}", "{out}"))
                print(f"| {shown} | {' | '.join(cells)} |", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)],
                           check=True)


if __name__ == "__main__":
    main()
