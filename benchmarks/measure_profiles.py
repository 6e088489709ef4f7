"""What each lossy scheme's verification measures, to set its `grok1 verify` profile's limits
from measurement: quantize a generated checkpoint with each scheme, verify it against the
source, report mean KL, top-1 agreement, perplexity ratio and the worst layer's error.

    python -m benchmarks.measure_profiles [--preset bench --layers 2] [--schemes int4,nvfp4-a16]

The source is the release's format (int8 codes), generated and cached like the other benchmarks'
inputs; verification runs `--seq-len` tokens x `--batch` sequences of seeded random ids (the
generated vocabularies are not Grok-1's).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from benchmarks.common import checkpoint, grok1

SCHEMES = ("int8", "int4", "fp8", "nvfp4-a16", "nvfp4", "mxfp4")


def measure(source: Path, scheme: str, work: Path, seq_len: int, batch: int) -> dict:
    """Quantize `source` with `scheme` and verify it (no limits): the metrics."""
    out = work / scheme
    subprocess.run(grok1("quantize", str(source), str(out), "--scheme", scheme, "--quiet"),
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    report = subprocess.run(grok1("verify", str(source), str(out), "--seq-len", str(seq_len),
                                  "--batch", str(batch), "--per-layer", "--json", "-"),
                            capture_output=True, text=True)
    found = json.loads(report.stdout)
    layers = found.get("per_layer") or []
    worst = max((v for row in layers for k, v in row.items() if k != "layer"),
                default=float("nan"))
    metrics = found["metrics"]
    return {"scheme": scheme, "kl_mean": metrics["kl_mean"],
            "top1": metrics["top1_agreement"], "ppl_ratio": metrics["perplexity_ratio"],
            "worst_layer": worst}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="bench")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--schemes", default=",".join(SCHEMES))
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    source = checkpoint(args.preset, args.layers)
    print(f"`{args.preset}`, {args.layers} layers; {args.batch} x {args.seq_len} random ids")
    print("| scheme | mean KL | top-1 agreement | perplexity ratio | worst layer's error |")
    print("| --- | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory(dir=source.parent) as work:
        for scheme in args.schemes.split(","):
            r = measure(source, scheme, Path(work), args.seq_len, args.batch)
            print(f"| {r['scheme']} | {r['kl_mean']:.5f} | {r['top1']:.4f} | "
                  f"{r['ppl_ratio']:.5f} | {r['worst_layer']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
