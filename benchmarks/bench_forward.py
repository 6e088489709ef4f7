"""Streamed forward: tokens/s and peak RSS on the `bench` preset at two depths.

    python benchmarks/bench_forward.py [--batch 4 --seq-len 128]

Peak RSS should stay near one layer's weights plus activations, whatever the depth.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import checkpoint, grok1, run_measured
from converter.model import GROK1
from converter.model.config import Grok1Config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--depths", type=int, nargs="+", default=[6, 12])
    args = parser.parse_args()
    print("| layers | checkpoint GB | one layer MB (int8) | tokens | seconds | tokens/s | "
          "peak RSS MB |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for depth in args.depths:
        config = Grok1Config.preset("bench", layers=depth)
        specs = GROK1.build_spec(config)
        layer_bytes = sum(s.payload_bytes for s in specs if s.layer == 0)
        folder = checkpoint("bench", depth)
        with tempfile.TemporaryDirectory() as tmp:
            tokens = np.random.default_rng(0).integers(3, config.vocab,
                                                       (args.batch, args.seq_len))
            np.save(Path(tmp) / "tokens.npy", tokens)
            seconds, rss, *_ = run_measured(grok1("logits", str(folder), "--tokens",
                                              str(Path(tmp) / "tokens.npy"), "--out",
                                              str(Path(tmp) / "logits.npy")))
        n = args.batch * args.seq_len
        total = sum(s.payload_bytes for s in specs)
        print(f"| {depth} | {total / 1e9:.2f} | {layer_bytes / 1e6:.0f} | {n} | {seconds:.1f} | "
              f"{n / seconds:.1f} | {rss / 1e6:.0f} |")


if __name__ == "__main__":
    main()
