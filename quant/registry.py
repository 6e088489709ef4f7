"""The scheme registry: each quantization scheme `grok1 quantize --scheme` and `pipeline --to`
offer, with its defaults and the Linears it composes into the writer (its verify profile is
`verify.profiles.SCHEME_PROFILES`), and `quantize_checkpoint`, the library verb. A new scheme is
one row in `SCHEMES`. The table imports nothing heavy (the command line reads it at start); the
Linears' modules are imported when a scheme makes them."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from converter.errors import UsageError
from quant.schemes import QuantScheme, SchemeOptions

__all__ = ["SCHEMES", "SchemeEntry", "quantize_checkpoint", "scheme_for", "scheme_names"]


@dataclasses.dataclass(frozen=True)
class SchemeEntry:
    """One registered scheme: what it is, its defaults, how it makes Linears (its verify
    profile is `verify.profiles.SCHEME_PROFILES`)."""

    name: str
    summary: str
    bits: int = 8
    default_group_size: int | None = None
    fp8_block: tuple[int, int] | None = None
    fp8: bool = False
    channel_int8: bool = False  # SGLang's w8a8_int8
    fp4: str | None = None  # "nvfp4-a16", "nvfp4" (W4A4, calibrated) or "mxfp4"
    names: str | None = None  # the only tensor names its engine reads, where that is one

    @property
    def integer(self) -> bool:
        """A pack-quantized integer scheme (takes --group-size, --asymmetric, --method and
        --arithmetic)."""
        return not (self.fp8 or self.channel_int8 or self.fp4)

    def scheme(self, options: SchemeOptions) -> QuantScheme:
        """The integer scheme with the user's options over its defaults."""
        return QuantScheme(self.bits, options.group_size or self.default_group_size,
                           options.symmetric, options.method, options.arithmetic, options.grid)

    @property
    def calibrated(self) -> bool:
        """Whether it calibrates activation scales on text (W4A4)."""
        return self.fp4 == "nvfp4"

    def linears(self, specs: list[Any], options: SchemeOptions | None = None,
                device: str = "cpu", calibration: Any = None) -> Any:
        """The Linears this scheme composes into the writer (None: the default options); a
        calibrating scheme (W4A4) calibrates on the token ids `calibration` once the output
        folder is ready."""
        options = options or SchemeOptions()
        takes_arithmetic = self.fp4 in ("nvfp4-a16", "nvfp4")
        if not self.integer and dataclasses.replace(
                options, arithmetic="f32" if takes_arithmetic else options.arithmetic).chosen:
            raise UsageError(f"--scheme {self.name} takes no --group-size, --asymmetric, "
                             "--method, --grid" + ("" if takes_arithmetic else " or --arithmetic")
                             + " (its grid is fixed)")
        from converter.model.spec import linear_roles

        if self.fp4:
            from quant.fp4 import FP4Linears, check_widths

            check_widths(specs, self.fp4)
            return FP4Linears(linear_roles(specs), self.fp4, options.arithmetic,
                              calibration=calibration, device=device)
        if self.channel_int8:
            from quant.w8a8 import ChannelInt8Linears

            return ChannelInt8Linears(linear_roles(specs))
        if self.fp8:
            from quant.fp8 import FP8Linears

            return FP8Linears(linear_roles(specs), self.fp8_block, device)
        from quant.requantize import QuantizedLinears

        return QuantizedLinears.for_specs(self.scheme(options), specs, device)


SCHEMES: dict[str, SchemeEntry] = {entry.name: entry for entry in (
    SchemeEntry("int8", "8-bit weights, one scale per output channel (vLLM W8A16)"),
    SchemeEntry("int4", "4-bit weights, groups of 128 input columns (vLLM W4A16)",
                bits=4, default_group_size=128),
    SchemeEntry("fp8", "float8 e4m3 weights, one scale per output channel, dynamic per-token "
                "FP8 activations (W8A8-FP8; Hopper or newer)", fp8=True),
    SchemeEntry("fp8-block", "float8 e4m3 weights in 128x128 blocks, dynamic group-128 FP8 "
                "activations (DeepSeek-V3 style; Hopper or newer)", fp8=True,
                fp8_block=(128, 128)),
    SchemeEntry("w8a8-int8", "SGLang's w8a8_int8: int8 weights with a float32 scale per "
                "output channel (the release's codes kept where it scales per channel), "
                "dynamic per-token int8 activations; SGLang names only (GPUs, and Xeon CPUs "
                "with AMX)", channel_int8=True, names="sglang"),
    SchemeEntry("nvfp4-a16", "NVFP4 weights (e2m1, an e4m3 scale per 16 inputs, a global "
                "scale shared by q/k/v and by each expert's gate and up), bf16 activations "
                "(compressed-tensors NVFP4A16)", bits=4, fp4="nvfp4-a16"),
    SchemeEntry("nvfp4", "NVFP4 weights as nvfp4-a16 and NVFP4 activations (W4A4), their "
                "global scales calibrated on text (--text-file; default: the shipped natural "
                "text) layer by layer; what SGLang serves for Grok-1 on Blackwell GPUs (with "
                "--names sglang)", bits=4, fp4="nvfp4"),
    SchemeEntry("mxfp4", "MXFP4 weights (e2m1, a power-of-two scale per 32 inputs), bf16 "
                "activations (compressed-tensors MXFP4A16)", bits=4, fp4="mxfp4"),
)}


def scheme_for(name: str, options: SchemeOptions | None = None) -> QuantScheme:
    """The integer scheme behind `--scheme NAME` with the user's options."""
    if name not in SCHEMES or not SCHEMES[name].integer:
        raise UsageError(f"unknown integer scheme {name!r}; known: "
                         f"{', '.join(n for n, e in SCHEMES.items() if e.integer)}")
    return SCHEMES[name].scheme(options or SchemeOptions())


def scheme_names(scheme: str, names: str | None) -> str:
    """The tensor names an output of `scheme` is written with: the user's (default hpcai), or
    the only ones its engine reads."""
    required = SCHEMES[scheme].names
    if required is not None and names not in (None, required):
        raise UsageError(f"--scheme {scheme} is written with --names {required} only (its "
                         f"engine reads no other), not {names}")
    return names or required or "hpcai"


def quantize_checkpoint(source: Path, dst: Path, scheme: str,
                        options: SchemeOptions | None = None, *, names: str | None = None,
                        shard_size: int = 5 * 10**9, tokenizer: str | None = None,
                        device: str = "auto", to: str = "hf", calibration: Any = None,
                        **run: Any) -> dict[str, Any]:
    """Re-quantize `source` (any layout) with a registered scheme into compressed-tensors in
    `dst`; returns the run's summary with the scheme, the device and the report.
    `calibration`: token ids [sequences, positions] for a scheme that calibrates (nvfp4)."""
    from converter.convert import convert
    from converter.files.safe_read import read_json
    from converter.layouts import open_checkpoint
    from converter.layouts.base import TargetOptions
    from quant.requantize import REPORT_NAME, resolve_device

    if scheme not in SCHEMES:
        raise UsageError(f"unknown scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    names = scheme_names(scheme, names)
    if SCHEMES[scheme].calibrated and calibration is None:
        raise UsageError(f"--scheme {scheme} calibrates its activation scales: give token ids "
                         "to calibrate on")
    reader = open_checkpoint(source)
    linears = SCHEMES[scheme].linears(reader.specs, options, resolve_device(device),
                                      calibration)
    summary = convert(source, dst, to=to, reader=reader, options=TargetOptions(
        names=names, linears=linears, shard_size=shard_size, tokenizer=tokenizer),
        label="quantize", **run)
    summary["scheme"], summary["device"] = linears.label, linears.device
    if not run.get("dry_run"):
        report = read_json(Path(dst) / REPORT_NAME)
        summary["report"], summary["rows"] = report["summary"], report["tensors"]
    return summary
