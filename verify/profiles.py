"""Pass/fail rules for `grok1 verify`, as data, and the profile a candidate calls for."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from converter.engine.output import MANIFEST_NAME
from converter.errors import UsageError
from converter.files.safe_read import read_record
from converter.report.serving import kind_of

__all__ = ["PROFILES", "Thresholds", "infer_profile", "judge", "lossy_hint"]


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Limits a candidate must meet; None means not checked."""

    max_kl: float | None = None
    min_top1: float | None = None
    max_ppl_ratio: float | None = None
    max_abs_diff: float | None = None
    max_layer_error: float | None = None

    def override(self, **values: Any) -> Thresholds:
        """A copy with the given (non-None) limits replaced."""
        return dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None})


PROFILES: dict[str, Thresholds] = {
    # A layout change: logits identical on the same compute path, tensors bit-exact.
    "lossless": Thresholds(max_kl=0.0, min_top1=1.0, max_ppl_ratio=1.0, max_abs_diff=0.0,
                           max_layer_error=0.0),
    "int8": Thresholds(max_kl=0.005, min_top1=0.97, max_ppl_ratio=1.005, max_layer_error=0.05),
    "int4": Thresholds(max_kl=0.03, min_top1=0.92, max_ppl_ratio=1.03, max_layer_error=0.25),
    # FP8 e4m3 (3 mantissa bits, per-channel or 128x128 block scales): limits set from
    # measurement (BENCHMARKS.md), between int8's and int4's.
    "fp8": Thresholds(max_kl=0.01, min_top1=0.95, max_ppl_ratio=1.01, max_layer_error=0.1),
    # FP4 e2m1 (NVFP4: e4m3 scales per 16 inputs, W4A4 also its inputs; MXFP4: power-of-two
    # scales per 32): int4's limits but for the per-layer error, set from measurement
    # (BENCHMARKS.md: mean KL up to 0.011, worst layer 0.31 for W4A4, int4 0.27).
    "fp4": Thresholds(max_kl=0.03, min_top1=0.92, max_ppl_ratio=1.03, max_layer_error=0.4),
}
# The profile of what `convert --dtype D` writes, by D (f32, the release's int8 and GGUF q8_0
# hold the release's values exactly), and of `quantize --scheme S` by the start of S.
DTYPE_PROFILES = {"f32": "lossless", "int8": "lossless", "q8_0": "lossless", "bf16": "int8",
                  "f16": "int8", "q4_0": "int4", "mxfp4": "int4"}
SCHEME_PROFILES = {"int8": "int8", "int4": "int4", "fp8": "fp8", "w8a8": "int8",
                   "nvfp4": "fp4", "mxfp4": "fp4"}
# Whatever the profile: these always fail.
ALWAYS_FAIL_TOP1 = 0.80
ALWAYS_FAIL_KL = 0.2


def profile(name: str) -> Thresholds:
    """The thresholds of a named profile."""
    if name not in PROFILES:
        raise UsageError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
    return PROFILES[name]


def judge(metrics: dict[str, Any], limits: Thresholds) -> list[str]:
    """Every reason the candidate fails, empty when it passes."""
    reasons = []
    if metrics["nonfinite"]:
        reasons.append(f"{metrics['nonfinite']} NaN/Inf logits")
    if metrics["top1_agreement"] < ALWAYS_FAIL_TOP1:
        reasons.append(f"top-1 agreement {metrics['top1_agreement']:.2%} < "
                       f"{ALWAYS_FAIL_TOP1:.0%} (always fails)")
    if metrics["kl_mean"] > ALWAYS_FAIL_KL:
        reasons.append(f"mean KL {metrics['kl_mean']:.4g} > {ALWAYS_FAIL_KL} (always fails)")
    checks = [
        ("kl_mean", "mean KL", limits.max_kl, "max"),
        ("top1_agreement", "top-1 agreement", limits.min_top1, "min"),
        ("perplexity_ratio", "perplexity ratio", limits.max_ppl_ratio, "max"),
        ("max_abs_diff", "max |logit diff|", limits.max_abs_diff, "max"),
    ]
    for key, label, limit, kind in checks:
        if limit is None:
            continue
        value = metrics[key]
        bad = value > limit if kind == "max" else value < limit
        if bad or value != value:
            reasons.append(f"{label} {value:.6g} {'>' if kind == 'max' else '<'} {limit:g}")
    return reasons


def infer_profile(candidate: Path) -> tuple[str, str]:
    """(profile, how it was decided) for a candidate: from the manifest of the command that
    made it (`quantize --scheme`, `convert --dtype`), else from its config's quantization,
    else lossless (an exact layout change)."""
    settings = read_record(Path(candidate) / MANIFEST_NAME).get("settings")
    settings = settings if isinstance(settings, dict) else {}
    scheme, dtype = str(settings.get("scheme", "")), str(settings.get("dtype", ""))
    for prefix, name in SCHEME_PROFILES.items():
        if scheme.startswith(prefix):
            return name, f"made by `quantize --scheme {prefix}` ({scheme})"
    if dtype in DTYPE_PROFILES:
        return DTYPE_PROFILES[dtype], f"made by `convert --dtype {dtype}`"
    kind = kind_of(Path(candidate)) if Path(candidate).is_dir() else None
    if kind is not None:
        weights = kind.weights.split("-")[0]
        found = SCHEME_PROFILES.get(weights) or DTYPE_PROFILES.get(weights)
        if found:
            return found, f"its weights are {kind.weights}"
    return "lossless", "no lossy step recorded"


def lossy_hint(candidate: Path) -> str | None:
    """Why a lossless check of a lossy candidate fails, and what would pass (None when the
    candidate is not known to be lossy)."""
    name, why = infer_profile(candidate)
    if name == "lossless":
        return None
    fix = ("; --dtype f32 or int8 is lossless" if why.startswith("made by `convert")
           else "")
    return f"the candidate is lossy ({why}){fix}; its profile is --profile {name}"
