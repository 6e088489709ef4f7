"""FP4 re-quantization as compressed-tensors 0.20 computes it: NVFP4 (`nvfp4-pack-quantized`)
and MXFP4 (`mxfp4-pack-quantized`). `tests/test_fp4.py` runs compressed-tensors' own functions
on the same weights and compares bytes.

NVFP4 (`helpers.py` `generate_gparam`, `calculate_qparams`; `lifecycle/forward.py` `_quantize`):
- global scale g = (1 / amax) * 448 * 6 (torch's order of operations), amax over the Linear
  and the Linears engines fuse with it (q/k/v, an expert's gate and up: the architecture's
  `fused_linears`), float32; 1 where amax is 0;
- per 16 inputs: s = e4m3(clamp(g * amax16 / 6, +-448)), rounded to nearest even, an exact
  zero replaced by 0.125 (e4m3's eps);
- values: x / (s / g) in float32, rounded to e2m1 by `cast_to_fp4`'s buckets (ties to even).
Under `--arithmetic bf16` the two divisions that compressed-tensors computes in the model's
dtype (amax / 6, and 448 * 6 / amax) are rounded to bf16, as it computes them on a bf16 model
(what llm-compressor quantizes): with a bf16 source the bytes are llm-compressor's.

MXFP4 (`mxfp_utils.py` `round_to_power_2`, `generate_mx_scales`): per 32 inputs the biased
exponent e = 127 + log2(p) - 2, p the group's max |w| rounded to a power of two, up when its
mantissa is 1.75 or more (0 where p is 0 or subnormal); values x / 2^(e - 127), exact, then
rounded as above. The dtype changes nothing here.

Both work on the source's [in, out] orientation a band of rows at a time (`quant.cpu`'s
layout): group extremes from the release's int8 codes where the source is the release, codes
and error statistics band by band, only the 1-byte packed codes transposed. On a GPU the
Triton kernel (`quant.kernels.fp4_triton`) gives the same bytes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from converter.engine.progress import step_bar
from converter.errors import UsageError
from converter.formats import (
    E4M3_MAX,
    LinearFormat,
    MXFP4PackQuantized,
    NVFP4PackQuantized,
    e4m3_to_f32,
)
from converter.formats.fp4 import E2M1_MAX, e2m1_codes, e2m1_values
from converter.formats.mxfp4 import MX_GROUP, e8m0_to_f32
from converter.formats.nvfp4 import E4M3_EPS_BITS, NVFP4_GROUP
from converter.model.spec import TensorSpec
from converter.tensors import round_to_bf16, transposed
from quant.calibrate import (
    CALIBRATION_NAME,
    STATE_NAME,
    calibrate_inputs,
    tokens_digest,
)
from quant.cpu import BAND, NotFinite, SourceRows
from quant.fp8 import e4m3_bits
from quant.primitives import error_stats
from quant.requantize import ReportedLinears, not_finite_error

__all__ = ["FP4Linears", "check_widths", "fused_amax", "linear_amax", "mx_exponents",
           "nvfp4_global_scale", "nvfp4_scale_bits", "quantize_mxfp4", "quantize_nvfp4"]

FP4_RANGE = np.float32(E2M1_MAX * E4M3_MAX)  # 448 * 6
TINY = np.finfo(np.float32).tiny
_E2M1 = e2m1_values(np.arange(16, dtype=np.uint8))  # the value of each 4-bit code


def _bf16(value: np.ndarray) -> np.ndarray:
    return round_to_bf16(np.asarray(value, np.float32))


def nvfp4_global_scale(amax: float, arithmetic: str = "f32") -> np.float32:
    """448 * 6 / amax as torch computes a number over a tensor: the tensor's reciprocal times
    the number, each rounded to float32 (bf16 arithmetic: to bf16); 1 where that is not finite
    (amax 0 or below float32's smallest normal)."""
    amax = np.array([max(np.float32(amax), TINY)], np.float32)
    with np.errstate(over="ignore", divide="ignore"):
        reciprocal = np.float32(1) / amax
        if arithmetic == "bf16":
            reciprocal = _bf16(reciprocal)
        scale = reciprocal * FP4_RANGE
    if arithmetic == "bf16":
        scale = _bf16(scale)
    return np.float32(scale[0]) if np.isfinite(scale[0]) else np.float32(1)


def nvfp4_scale_bits(amax: np.ndarray, global_scale: np.float32,
                     arithmetic: str = "f32") -> np.ndarray:
    """e4m3 bits of the local scales of groups with max |w| `amax` (float32, any shape)."""
    local = np.asarray(amax, np.float32) / np.float32(E2M1_MAX)
    if arithmetic == "bf16":
        local = _bf16(local)
    bits = e4m3_bits(np.clip(local * global_scale, -E4M3_MAX, E4M3_MAX))
    bits[bits == 0] = E4M3_EPS_BITS
    return bits


def mx_exponents(amax: np.ndarray) -> np.ndarray:
    """Biased E8M0 exponents (uint8) of groups with max |w| `amax` (float32, finite)."""
    u = np.asarray(amax, np.float32).view(np.uint32).astype(np.int64)
    field = ((u + (1 << 21)) >> 23) & 0xFF  # the exponent of the rounded power of two
    exponents = np.where(field == 255, 255, field - 2)
    return np.clip(np.where(field == 0, 0, exponents), 0, 255).astype(np.uint8)


def check_widths(specs: list[TensorSpec], kind: str) -> None:
    """Refuse a model whose Linears' input widths whole FP4 groups do not cover (compressed-
    tensors refuses them too; every Grok-1 width is a multiple of 128)."""
    group = MX_GROUP if kind == "mxfp4" else NVFP4_GROUP
    for spec in specs:
        if spec.param.linear and spec.shape[-2] % group:
            raise UsageError(f"{spec.name}: input width {spec.shape[-2]} is not a multiple of "
                             f"{group}, which --scheme {kind} needs (one scale per {group} "
                             "inputs)")


def linear_amax(value: Any) -> float:
    """max |w| of one canonical Linear (exact for the release's int8). Raises NotFinite."""
    with np.errstate(invalid="ignore"):
        low, high = SourceRows(value, None).extremes()
    amax = max(float(-low.min()), float(high.max())) if low.size else 0.0
    if not np.isfinite(amax):
        raise NotFinite
    return amax


def _group_amax(source: SourceRows) -> np.ndarray:
    """max |w| per group of input rows and column, float32 [groups, out]. Raises NotFinite."""
    with np.errstate(over="ignore", invalid="ignore"):
        low, high = source.extremes()
        amax = np.maximum(np.abs(low), np.abs(high))
    if not np.isfinite(amax).all():
        raise NotFinite
    return amax


def _encode(source: SourceRows, per: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """Codes of the canonical Linear with float32 scales `per` [groups, out], packed
    [out, in / 2], and the error statistics (squares summed per column in float32, then per
    band in float64, as the other quantizers' reports)."""
    k, n, group = source.rows, source.cols, source.group
    packed = np.empty((k // 2, n), np.uint8)
    rows = np.empty((min(BAND, k), n), np.float32)
    quotient, error = np.empty_like(rows), np.empty_like(rows)
    sq_error = norm_sq = max_error = 0.0
    clipped = 0
    for r0 in range(0, k, BAND):
        r1 = min(k, r0 + BAND)
        x = source.fill(r0, r1, 0, n, rows[:r1 - r0])
        blocks = (-1, group, n)  # each group's rows share one scale per column
        scale = per[r0 // group:r1 // group, None, :]
        q = np.divide(x.reshape(blocks), scale, out=quotient[:r1 - r0].reshape(blocks))
        q = q.reshape(x.shape)
        clipped += int(np.count_nonzero(q > E2M1_MAX)) + int(np.count_nonzero(q < -E2M1_MAX))
        codes = e2m1_codes(q)
        packed[r0 // 2:r1 // 2] = codes[0::2] | (codes[1::2] << 4)
        e = error[:r1 - r0]
        _E2M1.take(codes, out=e)
        np.multiply(e.reshape(blocks), scale, out=e.reshape(blocks))
        e -= x
        sq_error += float(np.einsum("ij,ij->j", e, e).sum(dtype=np.float64))
        norm_sq += float(np.einsum("ij,ij->j", x, x).sum(dtype=np.float64))
        if e.size:
            max_error = max(max_error, float(e.max()), -float(e.min()))
    return transposed(packed), error_stats(sq_error, norm_sq, max_error, clipped, k * n)


def quantize_nvfp4(value: Any, fused_amax: float | None = None, arithmetic: str = "f32"
                   ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """One canonical [in, out] Linear in NVFP4 with the global scale of `fused_amax` (the max
    |w| over it and the Linears fused with it; None: a Linear fused with none, its own): its
    parts and error statistics. Raises NotFinite."""
    source = SourceRows(value, NVFP4_GROUP)
    amax = _group_amax(source)
    if fused_amax is None:
        fused_amax = float(amax.max()) if amax.size else 0.0
    global_scale = nvfp4_global_scale(fused_amax, arithmetic)
    bits = nvfp4_scale_bits(amax, global_scale, arithmetic)
    per = e4m3_to_f32(bits) / global_scale
    packed, stats = _encode(source, per)
    return {"weight_packed": packed, "weight_scale": transposed(bits),
            "weight_global_scale": np.array([global_scale], np.float32)}, stats


def quantize_mxfp4(value: Any) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """One canonical [in, out] Linear in MXFP4: its parts and error statistics. Raises
    NotFinite."""
    source = SourceRows(value, MX_GROUP)
    exponents = mx_exponents(_group_amax(source))
    packed, stats = _encode(source, e8m0_to_f32(exponents))
    return {"weight_packed": packed, "weight_scale": transposed(exponents)}, stats


def fused_amax(reader: Any, quiet: bool = True) -> dict[tuple[str, int | None], float]:
    """For every Linear the architecture fuses with others (by name and expert), the max |w|
    over it and its partners: what NVFP4's shared global scale is computed from. One read of
    those Linears, one (expert's) Linear in memory at a time, under a progress bar."""
    architecture = reader.architecture
    by_role: dict[tuple[int, str], TensorSpec] = {(s.layer, s.role): s for s in reader.specs
                                                  if s.param.linear}
    sets = []  # each fused set once, by its first role
    for layer, role in by_role:
        group = architecture.fused_with(role)
        if len(group) > 1 and group[0] == role:
            sets.append([by_role[(layer, r)] for r in group])
    total = sum(len(members) * (members[0].shape[0] if members[0].param.expert else 1)
                for members in sets)
    table: dict[tuple[str, int | None], float] = {}
    with step_bar(total, "global scales", "Linears", quiet=quiet) as bar:
        for members in sets:
            lead = members[0]
            for expert in (range(lead.shape[0]) if lead.param.expert else (None,)):
                amax = 0.0
                for member in members:
                    value = (reader.read(member) if expert is None
                             else reader.read_expert(member, expert))
                    try:
                        amax = max(amax, linear_amax(value))
                    except NotFinite:
                        raise not_finite_error(member, expert) from None
                table.update(((member.name, expert), amax) for member in members)
                bar.update(len(members))
    return table


@dataclasses.dataclass(frozen=True)
class FP4Linears(ReportedLinears):
    """The Linear `roles` in NVFP4 or MXFP4 (on `device`: cpu, or cuda's Triton kernel).
    `kind`: "nvfp4-a16" (weights only), "nvfp4" (W4A4: also an `input_global_scale` per
    Linear, from calibrating on `calibration` tokens) or "mxfp4". `fused`: the max |w| of
    Linears engines fuse, by tensor name and expert (NVFP4's shared global scales); `inputs`:
    the calibrated max |input|, likewise. Both are found by `prepare_run`, at the start of the
    run."""

    roles: tuple[str, ...]
    kind: str
    arithmetic: str = "f32"
    fused: dict[tuple[str, int | None], float] | None = dataclasses.field(
        default=None, hash=False, compare=False)
    calibration: np.ndarray | None = dataclasses.field(default=None, hash=False, compare=False)
    inputs: dict[tuple[str, int | None], float] | None = dataclasses.field(
        default=None, hash=False, compare=False)
    device: str = "cpu"

    @property
    def label(self) -> str:
        """nvfp4, nvfp4-a16 or mxfp4 (-bf16 under bf16 arithmetic)."""
        return self.kind + ("" if self.arithmetic == "f32" else f"-{self.arithmetic}")

    @property
    def formats(self) -> dict[str, LinearFormat]:
        """The FP4 format, for every role."""
        fmt = (MXFP4PackQuantized() if self.kind == "mxfp4" else
               NVFP4PackQuantized(activations=self.kind == "nvfp4"))
        return dict.fromkeys(self.roles, fmt)

    def settings(self) -> dict[str, Any]:
        """What identifies this output for --resume (W4A4: also its calibration tokens)."""
        settings = {"dtype": self.label, "scheme": self.label}
        if self.calibration is not None:
            settings["calibration_tokens"] = tokens_digest(self.calibration)
        return settings

    def report_files(self) -> list[str]:
        """The quantization report; W4A4 also the calibration and its state while it runs."""
        calibration = [CALIBRATION_NAME, STATE_NAME] if self.kind == "nvfp4" else []
        return super().report_files() + calibration

    def prepare_run(self, reader: Any, folder: Path, quiet: bool = True) -> FP4Linears:
        """Once the output folder is ready: NVFP4's fused max |w| (one read of the Linears
        engines fuse) and W4A4's calibration (resuming one cut short in `folder`)."""
        updates: dict[str, Any] = {}
        if self.kind != "mxfp4" and self.fused is None:
            updates["fused"] = fused_amax(reader, quiet)
        if self.kind == "nvfp4" and self.inputs is None:
            if self.calibration is None:
                raise UsageError("--scheme nvfp4 calibrates its activation scales on text: "
                                 "give calibration tokens")
            updates["inputs"] = calibrate_inputs(reader, self.calibration, folder, quiet=quiet)
        return dataclasses.replace(self, **updates) if updates else self

    def make(self, spec: TensorSpec, expert: int | None, value: Any
             ) -> tuple[dict[str, np.ndarray], dict[str, Any] | None]:
        """The parts of one Linear, with its error statistics (on the GPU: the Triton
        kernel, the same bytes)."""
        amax = None
        if self.kind != "mxfp4":
            if self.fused is None or (self.kind == "nvfp4" and self.inputs is None):
                raise RuntimeError("NVFP4 Linears need the fused Linears' max |w| "
                                   "(quant.fp4.fused_amax), and W4A4 its calibration, before "
                                   "they are made")
            amax = self.fused.get((spec.name, expert))  # absent: fused with no other
        try:
            if self.device == "cuda":
                parts, stats = _on_gpu(value, self.kind, amax, self.arithmetic)
            elif self.kind == "mxfp4":
                parts, stats = quantize_mxfp4(value)
            else:
                parts, stats = quantize_nvfp4(value, amax, self.arithmetic)
        except NotFinite:
            raise not_finite_error(spec, expert) from None
        if self.inputs is not None:
            scale = nvfp4_global_scale(self.inputs[(spec.name, expert)])
            parts["input_global_scale"] = np.array([scale], np.float32)
        stats["group_size"] = MX_GROUP if self.kind == "mxfp4" else NVFP4_GROUP
        return parts, stats


def _on_gpu(value: Any, kind: str, amax: float | None, arithmetic: str
            ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The Triton kernel on the device (NVFP4's global scale from `amax`, else the Linear's
    own max |w|). Raises NotFinite."""
    import torch

    from quant.kernels import device_matrix, fp4_triton

    matrix = device_matrix(value, "cuda")
    if not bool(torch.isfinite(matrix).all()):
        raise NotFinite
    if kind == "mxfp4":
        return fp4_triton(matrix, "mxfp4")
    own = float(matrix.abs().max()) if matrix.numel() else 0.0
    scale = nvfp4_global_scale(own if amax is None else amax, arithmetic)
    return fp4_triton(matrix, "nvfp4", scale, arithmetic)
