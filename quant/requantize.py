"""Re-quantized Linears: what `grok1 quantize` composes into an HF-style writer.

The source is read through the canonical stream; the release's int8 weights are dequantized
exactly in float32 first. On a GPU the Triton kernel does dequantize -> quantize -> pack in one
pass (RTN) and computes the error statistics in the same pass, so nothing but the packed result
and a few numbers per group comes back to the CPU; on the CPU, and for --method mse everywhere,
`quant.cpu` runs the numpy reference's arithmetic band by band. All give the reference's bits.
Router, embeddings and norms stay float32 (and must be finite). Each Linear's error statistics
go to the manifest and, at the end, to quantization_report.json.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from converter.engine.output import QUANT_PLOT
from converter.errors import MalformedFileError, UsageError
from converter.formats import LinearFormat, PackedLinear
from converter.formats.pack_quantized import codes_per_word
from converter.model.spec import TensorSpec
from converter.report.plots import expert_heatmap
from converter.tensors import QuantizedWeight8bit, dense
from quant.cpu import NotFinite, quantize_cpu
from quant.schemes import QuantScheme

__all__ = ["REPORT_NAME", "QuantizedLinears", "ReportedLinears", "build_report", "check_finite",
           "not_finite_error", "resolve_device"]

REPORT_NAME = "quantization_report.json"


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


def check_finite(spec: TensorSpec, expert: int | None, array: np.ndarray) -> None:
    """Refuse NaN or Inf in a tensor that is about to be quantized (or kept beside it)."""
    if not np.isfinite(array).all():
        raise not_finite_error(spec, expert)


def not_finite_error(spec: TensorSpec, expert: int | None) -> MalformedFileError:
    """The one-line error for NaN or Inf in a Linear about to be quantized."""
    where = f" (expert {expert})" if expert is not None else ""
    return MalformedFileError(f"{spec.name}{where}: NaN or Inf in the weights; refusing to "
                              "quantize")


def role_schemes(specs: list[TensorSpec], scheme: QuantScheme) -> dict[str, QuantScheme]:
    """The scheme of each Linear role. compressed-tensors needs the group size to divide the
    input width; where it does not (small test models), the role uses gcd(width, group size)."""
    schemes = {}
    for spec in specs:
        if not spec.param.linear or spec.role in schemes:
            continue
        width, group = spec.shape[-2], scheme.group_size
        if group is not None and width % group:
            group = math.gcd(width, group)
            if group % codes_per_word(scheme.bits):
                raise UsageError(f"{spec.name}: input width {width} has no group size "
                                 f"dividing both it and --group-size {scheme.group_size} that "
                                 f"{scheme.bits}-bit packing allows")
        schemes[spec.role] = dataclasses.replace(scheme, group_size=group)
    return schemes


class ReportedLinears:
    """What every re-quantizing Linears shares: finite kept tensors and the error report.
    Subclasses have `label` and `device`."""

    label: str
    device: str

    def check_kept(self, spec: TensorSpec, array: np.ndarray) -> None:
        """The tensors kept in float32 beside the Linears must be finite too."""
        check_finite(spec, None, array)

    def report_files(self) -> list[str]:
        """quantization_report.json and its picture."""
        return [REPORT_NAME, QUANT_PLOT]

    def prepare_run(self, reader: Any, folder: Path, quiet: bool = True) -> Any:
        """What must be known before the first Linear is made, once the output folder is
        ready (calibration): these Linears as they are, unless a subclass says otherwise."""
        return self

    def reports(self, records: dict[str, Any]) -> dict[str, str | bytes]:
        """The per-tensor error report of the whole output, and a layer x expert heat map of
        the expert Linears' errors."""
        stats = {name: s for record in records.values()
                 for name, s in record.get("stats", {}).items()}
        report = build_report(stats, self.label, self.device)
        files: dict[str, str | bytes] = {REPORT_NAME: json.dumps(report, indent=2) + "\n"}
        picture = expert_heatmap({name: s["rel_rms"] for name, s in stats.items()},
                                 f"Quantization error, {self.label}")
        if picture is not None:
            files[QUANT_PLOT] = picture
        return files


@dataclasses.dataclass(frozen=True)
class QuantizedLinears(ReportedLinears):
    """Linears re-quantized by one scheme (per role, with the group size it can take)."""

    scheme: QuantScheme
    schemes: dict[str, QuantScheme]
    device: str = "cpu"

    @classmethod
    def for_specs(cls, scheme: QuantScheme, specs: list[TensorSpec],
                  device: str = "cpu") -> QuantizedLinears:
        """The Linears of `grok1 quantize` for a checkpoint's specs."""
        return cls(scheme, role_schemes(specs, scheme), device)

    @property
    def label(self) -> str:
        """e.g. int4-g128-sym-rtn."""
        return self.scheme.label

    @property
    def formats(self) -> dict[str, LinearFormat]:
        """The pack-quantized format of each role."""
        return {role: s.linear_format() for role, s in self.schemes.items()}

    def settings(self) -> dict[str, Any]:
        """What identifies this output for --resume."""
        return {"dtype": self.label, "scheme": self.label}

    def make(self, spec: TensorSpec, expert: int | None, value: Any
             ) -> tuple[dict[str, np.ndarray], dict[str, Any] | None]:
        """All parts of one re-quantized Linear, and its error statistics."""
        scheme = self.schemes[spec.role]
        if self.device == "cuda" and scheme.method == "rtn":
            packed, stats = _on_gpu(spec, expert, value, scheme)
        else:
            try:
                packed, stats = quantize_cpu(value, scheme)
            except NotFinite:
                raise not_finite_error(spec, expert) from None
        stats["group_size"] = scheme.group_size
        parts = {"weight_packed": packed.packed, "weight_scale": packed.scale,
                 "weight_shape": np.array(packed.shape, np.int64)}
        if packed.zero_point is not None:
            parts["weight_zero_point"] = packed.zero_point
        return parts, stats


def _on_gpu(spec: TensorSpec, expert: int | None, value: Any, scheme: QuantScheme
            ) -> tuple[PackedLinear, dict[str, Any]]:
    """The Triton kernel on the device; the statistics come back with the result, and
    finiteness is checked on the device too (of the scales, for the release's int8)."""
    import torch

    from quant.kernels import requantize_triton

    if isinstance(value, QuantizedWeight8bit):
        codes = torch.from_numpy(np.ascontiguousarray(value.weight)).cuda()
        scales = torch.from_numpy(np.ascontiguousarray(value.scales).view(np.int16)).cuda()
        finite = torch.isfinite(scales.view(torch.bfloat16)).all()
        source, source_scales = codes, scales
    else:
        source = torch.from_numpy(np.ascontiguousarray(dense(value))).cuda()
        finite, source_scales = torch.isfinite(source).all(), None
    if not bool(finite):
        raise not_finite_error(spec, expert)
    return requantize_triton(source, source_scales, scheme)


def build_report(stats: dict[str, dict[str, float]], label: str,
                 device: str) -> dict[str, Any]:
    """Per-tensor errors, sorted worst first, and a summary."""
    fields = ("rel_rms", "max_abs_err", "clipped_pct", "numel", "group_size")
    rows = sorted(({"tensor": name, **{f: s[f] for f in fields}} for name, s in stats.items()),
                  key=lambda r: (-r["rel_rms"], r["tensor"]))
    total = sum(r["numel"] for r in rows) or 1
    return {
        "scheme": label, "device": device,
        "summary": {
            "tensors": len(rows),
            "mean_rel_rms": sum(r["rel_rms"] * r["numel"] for r in rows) / total,
            "max_rel_rms": rows[0]["rel_rms"] if rows else 0.0,
            "max_abs_err": max((r["max_abs_err"] for r in rows), default=0.0),
            "clipped_pct": sum(r["clipped_pct"] * r["numel"] for r in rows) / total,
        },
        "tensors": rows,
    }
