"""The streamed forward against the disk: `grok1 logits` and `grok1 verify` on real-dimensions
checkpoints of 1 and 2 layers, each beside `cat` of the same files, with a cold page cache.

    python -m benchmarks.bench_verify [--preset real] [--depths 1 2] [--batch 4] [--seq-len 128]
    python -m benchmarks.bench_verify --revision 3109eb9     # the same rows for an older commit
    python -m benchmarks.bench_verify --device cuda          # on a machine with a GPU

Before every command the page cache is dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`,
which needs root), so each reads its checkpoint from the disk. `verify` runs the source against
its int4 re-quantization (made once, cached) with `--no-check-tensors`, so both checkpoints are
read once each. For each command: wall seconds, the same for `cat` of the files it reads (in
the same run, right before it), their ratio, CPU seconds (user, system) and peak RSS. The time
each additional layer adds (the 2-layer run minus the 1-layer run) is compared with what the
layer adds to `cat`, and projects the real 64-layer model: time(1 layer) + 63 x that slope.
The disk under these machines moves between runs: compare only figures of one run.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import CACHE, Measured, checkpoint, du, grok1, run_measured
from benchmarks.compare_revisions import ROOT, grok1_in

REAL_LAYERS = 64


def drop_caches() -> None:
    """Empty the page cache (root only), so the next command reads from the disk."""
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def files_of(folder: Path) -> list[str]:
    """The checkpoint files a forward reads (everything but our reports)."""
    return sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.suffix != ".md")


def cold(args: list[str]) -> Measured:
    """One command after dropping the page cache."""
    drop_caches()
    return run_measured(args, stdout=subprocess.DEVNULL)


def int4_of(source: Path) -> Path:
    """The int4 re-quantization of a cached checkpoint, made once."""
    folder = CACHE / f"{source.name}-int4"
    if not (folder / "config.json").exists():
        subprocess.run(grok1("quantize", str(source), str(folder), "--scheme", "int4",
                             "--quiet", "--overwrite"), check=True)
    return folder


def row(name: str, run: Measured, baseline: Measured, gb: float) -> str:
    user = run.cpu - run.sys
    return (f"| {name} | {gb:.1f} | {baseline.seconds:.1f} | {run.seconds:.1f} | "
            f"{run.seconds / baseline.seconds:.2f} | {user:.1f} | {run.sys:.1f} | "
            f"{run.rss / 1e9:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="real")
    parser.add_argument("--depths", type=int, nargs=2, default=[1, 2])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--revision", help="also run an older commit's code, same inputs")
    args = parser.parse_args()
    sources = {depth: checkpoint(args.preset, depth) for depth in args.depths}
    candidates = {depth: int4_of(source) for depth, source in sources.items()}
    with tempfile.TemporaryDirectory() as tmp:
        tokens = Path(tmp) / "tokens.npy"
        vocab = 131072 if args.preset == "real" else None
        rng = np.random.default_rng(0)
        ids = rng.integers(3, vocab or 256, (args.batch, args.seq_len))
        np.save(tokens, ids)
        trees = [("now", None)]
        if args.revision:
            old = Path(tmp) / "old"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach",
                            str(old), args.revision], check=True)
            trees.insert(0, (args.revision, old))
        try:
            _measure(args, sources, candidates, tokens, Path(tmp), trees)
        finally:
            if args.revision:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                str(Path(tmp) / "old")], check=True)


def _measure(args: argparse.Namespace, sources: dict[int, Path], candidates: dict[int, Path],
             tokens: Path, tmp: Path, trees: list[tuple[str, Path | None]]) -> None:
    print(f"{args.batch} x {args.seq_len} tokens, device {args.device}, page cache dropped "
          "before each command\n")
    print("| command | GB read | cat s | command s | ratio | user s | sys s | peak RSS GB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    slopes: dict[str, tuple[float, float, float]] = {}
    for label, tree in trees:
        times: dict[str, list[tuple[float, float]]] = {"logits": [], "verify": []}
        for depth in args.depths:
            source, candidate = sources[depth], candidates[depth]
            common = ["--tokens", str(tokens), "--device", args.device]
            commands = {
                "logits": (["logits", str(source), *common, "--out", str(tmp / "l.npy")],
                           files_of(source)),
                "verify": (["verify", str(source), str(candidate), *common, "--profile", "int4",
                            "--no-check-tensors", "--json", str(tmp / "v.json")],
                           files_of(source) + files_of(candidate))}
            for name, (command, files) in commands.items():
                baseline = cold(["sh", "-c", 'cat "$@" > /dev/null', "cat", *files])
                line = grok1_in(tree, *command) if tree else grok1(*command)
                run = cold(line)
                gb = sum(Path(f).stat().st_size for f in files) / 1e9
                print(row(f"{label}: {name}, {depth} layer(s)", run, baseline, gb), flush=True)
                times[name].append((run.seconds, baseline.seconds))
        for name, ((t1, c1), (t2, c2)) in times.items():
            span = args.depths[1] - args.depths[0]
            slopes[f"{label}: {name}"] = ((t2 - t1) / span, (c2 - c1) / span, t1)
    print("\n| command | s per added layer | cat s per added layer | ratio | projected "
          f"{REAL_LAYERS} layers |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, (slope, cat, first) in slopes.items():
        projected = first + (REAL_LAYERS - 1) * slope
        print(f"| {name} | {slope:.1f} | {cat:.1f} | {slope / cat:.2f} | "
              f"{projected / 60:.0f} min |")
    print(f"\ninputs: {', '.join(f'{p.name} {du(p) / 1e9:.1f} GB' for p in sources.values())}")


if __name__ == "__main__":
    main()
