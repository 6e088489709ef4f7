"""`grok1 quantize`: re-quantize any checkpoint into compressed-tensors pack-quantized.

The source is read through the canonical stream; the release's int8 weights are dequantized
exactly in float32 first. On a GPU the Triton kernel does dequantize -> quantize -> pack in one
pass (RTN); on the CPU, and for --method mse everywhere, the numpy reference does. Both give the
same bits. Router, embeddings and norms stay float32.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np

from converter.compressed import PackedLinear
from converter.errors import MalformedFileError, UsageError
from converter.layouts import CheckpointReader
from converter.layouts.hf import LinearFormat, OutTensor
from converter.names import LINEAR_ROLES, NameScheme
from converter.produce import Producer, dense_transposed
from converter.spec import TensorSpec
from converter.targets import ShardedTarget
from converter.tensors import QuantizedWeight8bit, dense
from quant.primitives import error_stats, quantize, quantize_linear
from quant.schemes import QuantScheme

__all__ = ["QuantizedTarget", "error_stats", "resolve_device"]

REPORT_NAME = "quantization_report.json"
_KEEP_QUANTIZED = 4  # Linears whose parts may still be asked for (threads look ahead)


def resolve_device(device: str) -> str:
    """auto -> cuda when torch sees a GPU (and Triton is installed), else cpu."""
    if device == "cpu" or (device == "auto" and not Path("/dev/nvidiactl").exists()):
        return "cpu"  # no NVIDIA driver: no need to import torch to find out
    import torch

    if device == "auto":
        if not torch.cuda.is_available():
            return "cpu"
        try:
            import triton  # noqa: F401
        except ImportError:
            return "cpu"
        return "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but torch sees no CUDA device")
    if device != "cuda":
        raise UsageError(f"unknown device {device!r}; choose auto, cpu or cuda")
    return device


def _check_finite(spec: TensorSpec, expert: int | None, matrix: np.ndarray) -> None:
    if not np.isfinite(matrix).all():
        where = f" (expert {expert})" if expert is not None else ""
        raise MalformedFileError(f"{spec.name}{where}: NaN or Inf in the weights; refusing to "
                                 "quantize")


class QuantizeProducer(Producer):
    """Output tensors of a re-quantized checkpoint; Linears quantized once, parts served."""

    def __init__(self, reader: CheckpointReader, specs: dict[str, TensorSpec],
                 formats: dict[str, LinearFormat], schemes: dict[str, QuantScheme],
                 device: str) -> None:
        super().__init__(reader, specs, formats)
        self.schemes, self.device = schemes, device
        self.stats: dict[str, dict[str, float]] = {}
        self._done: dict[tuple[str, int | None], concurrent.futures.Future] = {}
        self._quant_lock = threading.Lock()

    def quantized(self, spec: TensorSpec, expert: int | None, module: str) -> PackedLinear:
        """The pack-quantized form of one Linear, computed once even when several threads ask
        for its parts at the same time (the others wait for the first)."""
        key = (spec.name, expert)
        with self._quant_lock:
            future = self._done.get(key)
            first = future is None
            if first:
                future = self._done[key] = concurrent.futures.Future()
                while len(self._done) > _KEEP_QUANTIZED:
                    self._done.pop(next(iter(self._done)))
        if not first:
            return future.result()
        try:
            packed = self._quantize(spec, expert, module)
        except BaseException as exc:
            future.set_exception(exc)
            raise
        future.set_result(packed)
        return packed

    def _quantize(self, spec: TensorSpec, expert: int | None, module: str) -> PackedLinear:
        value = self.source(spec, expert)
        scheme = self.schemes[spec.role]
        matrix = dense_transposed(value)
        _check_finite(spec, expert, matrix)
        if self.device == "cuda" and scheme.method == "rtn":
            packed = _on_gpu(value, scheme)
            stats = error_stats(matrix, quantize(matrix, packed.scale, packed.zero_points(),
                                                 scheme))
        else:
            packed, stats = quantize_linear(matrix, scheme)
        stats["group_size"] = scheme.group_size
        with self._quant_lock:
            self.stats[module] = stats
        return packed

    def summary(self) -> dict[str, Any]:
        """The error statistics of the Linears this producer quantized."""
        return {"stats": dict(self.stats)}

    def __call__(self, out: OutTensor) -> np.ndarray:
        origin = out.origin
        spec = self._specs[(origin.role, origin.layer)]
        if origin.role not in LINEAR_ROLES:
            array = super().__call__(out)
            _check_finite(spec, None, array)
            return array
        module = origin.name.rsplit(".", 1)[0]
        packed = self.quantized(spec, origin.expert, module)
        parts = {"weight_packed": packed.packed, "weight_scale": packed.scale,
                 "weight_shape": np.array(packed.shape, np.int64),
                 "weight_zero_point": packed.zero_point}
        return parts[origin.part]


def _on_gpu(value: Any, scheme: QuantScheme) -> PackedLinear:
    import torch

    from quant.kernels import requantize_triton

    if isinstance(value, QuantizedWeight8bit):
        codes = torch.from_numpy(np.ascontiguousarray(value.weight)).cuda()
        scales = torch.from_numpy(np.ascontiguousarray(value.scales).view(np.int16)).cuda()
        return requantize_triton(codes, scales, scheme)
    canonical = np.ascontiguousarray(dense(value))
    return requantize_triton(torch.from_numpy(canonical).cuda(), None, scheme)


@dataclasses.dataclass
class QuantizedTarget(ShardedTarget):
    """Sharded HF output whose Linears are re-quantized, plus quantization_report.json."""

    quant: QuantScheme = dataclasses.field(default_factory=lambda: QuantScheme(8, None))
    device: str = "cpu"
    schemes: dict[str, QuantScheme] = dataclasses.field(default_factory=dict)

    def settings(self) -> dict[str, Any]:
        """What identifies this output for --resume."""
        return {**super().settings(), "scheme": self.quant.label}

    def report_files(self) -> list[str]:
        """quantization_report.json."""
        return [REPORT_NAME]

    def make_producer(self, reader: CheckpointReader) -> Producer:
        """A producer that re-quantizes every Linear."""
        return QuantizeProducer(reader, {s.name: s for s in reader.specs}, self.formats,
                                self.schemes, self.device)

    def finalize(self, reader: CheckpointReader, units: list[Any], dst: Path,
                 records: dict[str, Any]) -> None:
        """quantization_report.json, then the HF files and the index."""
        stats = {name: s for record in records.values() for name, s in record.get(
            "stats", {}).items()}
        report = build_report(stats, self.quant, self.device)
        self.extra_files = {REPORT_NAME: json.dumps(report, indent=2) + "\n"}
        super().finalize(reader, units, dst, records)


def build_report(stats: dict[str, dict[str, float]], scheme: QuantScheme,
                 device: str) -> dict[str, Any]:
    """Per-tensor errors, sorted worst first, and a summary."""
    fields = ("rel_rms", "max_abs_err", "clipped_pct", "numel", "group_size")
    rows = sorted(({"tensor": name, **{f: s[f] for f in fields}} for name, s in stats.items()),
                  key=lambda r: (-r["rel_rms"], r["tensor"]))
    total = sum(r["numel"] for r in rows) or 1
    return {
        "scheme": scheme.label, "device": device,
        "summary": {
            "tensors": len(rows),
            "mean_rel_rms": sum(r["rel_rms"] * r["numel"] for r in rows) / total,
            "max_rel_rms": rows[0]["rel_rms"] if rows else 0.0,
            "max_abs_err": max((r["max_abs_err"] for r in rows), default=0.0),
            "clipped_pct": sum(r["clipped_pct"] * r["numel"] for r in rows) / total,
        },
        "tensors": rows,
    }


def role_schemes(specs: list[TensorSpec], scheme: QuantScheme) -> dict[str, QuantScheme]:
    """The scheme of each Linear role. compressed-tensors needs the group size to divide the
    input width; where it does not (small test models), the role uses gcd(width, group size)."""
    schemes = {}
    for spec in specs:
        if spec.role not in LINEAR_ROLES or spec.role in schemes:
            continue
        width, group = spec.shape[-2], scheme.group_size
        if group is not None and width % group:
            group = math.gcd(width, group)
            if group % (32 // scheme.bits):
                raise UsageError(f"{spec.name}: input width {width} has no group size "
                                 f"dividing both it and --group-size {scheme.group_size} that "
                                 f"{scheme.bits}-bit packing allows")
        schemes[spec.role] = dataclasses.replace(scheme, group_size=group)
    return schemes


def make_target(scheme: QuantScheme, specs: list[TensorSpec], names: NameScheme,
                shard_size: int, device: str, container: str = "hf") -> QuantizedTarget:
    """The target of `grok1 quantize`."""
    schemes = role_schemes(specs, scheme)
    formats = {role: s.linear_format() for role, s in schemes.items()}
    return QuantizedTarget(container, names, formats, shard_size, scheme.label,
                           quant=scheme, device=device, schemes=schemes)
