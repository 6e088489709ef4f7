"""One real-dimensions expert matrix through the streamed forward's banded matmul: the release's
int8 against its int4 re-quantization (compressed-tensors pack-quantized), and the int4 matrix
dequantized whole, as the forward did before it decoded bands (hot page cache, 128 tokens).

    python -m benchmarks.bench_matmul [--runs 3]

Uses the cached `real --layers 1` checkpoint and its int4 re-quantization (made once, as
bench_verify makes them).
"""

from __future__ import annotations

import argparse
import functools
import time

import torch

from benchmarks.bench_verify import int4_of
from benchmarks.common import checkpoint
from converter.forward.grok1 import StreamedGrok1
from converter.layouts import open_checkpoint
from converter.tensors import dense


def seconds(function, runs: int) -> float:
    """The median wall time of `runs` calls."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    release = checkpoint("real", 1)
    readers = {"release int8": open_checkpoint(release),
               "int4 (g128)": open_checkpoint(int4_of(release))}
    print("| matrix | weights | banded matmul s | whole dequantize s |")
    print("| --- | --- | ---: | ---: |")
    for role in ("moe_gate", "moe_down"):
        for label, reader in readers.items():
            spec = next(s for s in reader.specs if s.role == role and s.layer == 0)
            value = reader.read_expert(spec, 0)
            model = StreamedGrok1(reader)
            x = torch.randn(128, spec.shape[1])
            banded = seconds(functools.partial(model._matmul, x, value, role), args.runs)
            whole = seconds(functools.partial(dense, value), args.runs)
            print(f"| {role} [{spec.shape[1]} x {spec.shape[2]}] | {label} | {banded:.2f} | "
                  f"{whole:.2f} |", flush=True)


if __name__ == "__main__":
    main()
