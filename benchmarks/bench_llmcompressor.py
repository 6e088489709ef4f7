"""`grok1 quantize` against llm-compressor, the tool a user would run instead: on the same bf16
`hf` input, both write compressed-tensors W4A16 (also asymmetric), W8A16 (llm-compressor's
preset groups 128 inputs; our int8 default scales per output channel, compared with
llm-compressor given those arguments), NVFP4A16 and MXFP4A16; this compares their
`weight_packed`, `weight_scale`, `weight_zero_point` and `weight_global_scale` bytes tensor by
tensor, and their wall time and peak memory in the same run. The FP4 cases use SGLang's names
(`self_attn.q_proj`, `experts.E.w1`/`w3`), which llm-compressor's model_free_ptq recognises as
fused (its DEFAULT_FUSED_MAPPINGS) and gives one global scale, as we do for any names.

    python -m benchmarks.bench_llmcompressor --llmc-python /tmp/llmc/bin/python [--preset bench]

llm-compressor lives in its own venv (it pins compressed-tensors 0.19 and transformers <= 5.17):
    python3 -m venv /tmp/llmc && /tmp/llmc/bin/pip install torch==2.13.0 llmcompressor==0.14.0
It runs `model_free_ptq(SRC, DST, scheme=..., ignore=[router, embeddings, lm_head],
device="cpu")`, which needs no model class (Grok-1 has none in transformers). Ours runs twice: with
`--arithmetic bf16` (compressed-tensors' torch path, which llm-compressor runs on a CPU: the
bytes must be the same, else exit 1; its time and memory are the ones compared) and with the
default `--arithmetic f32` (how many codes differ is reported).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import checkpoint, grok1, run_measured
from converter.files.shards import SafetensorsReader
from converter.formats import ignored_modules, unpack_codes
from converter.formats.fp4 import unpack_nibbles
from converter.model import GROK1

# case: (our quantize options, llm-compressor's scheme: a preset name or weight arguments)
CASES: dict[str, tuple[list[str], str | dict]] = {
    "int4": (["--scheme", "int4"], "W4A16"),
    "int4-asym": (["--scheme", "int4", "--asymmetric"], "W4A16_ASYM"),
    "int8-g128": (["--scheme", "int8", "--group-size", "128"], "W8A16"),
    "int8": (["--scheme", "int8"], {"num_bits": 8, "type": "int", "symmetric": True,
                                    "strategy": "channel"}),
    "nvfp4-a16": (["--scheme", "nvfp4-a16", "--names", "sglang"], "NVFP4A16"),
    "mxfp4": (["--scheme", "mxfp4", "--names", "sglang"], "MXFP4A16"),
}
FP4 = ("nvfp4-a16", "mxfp4")
NO_ARITHMETIC = ("mxfp4",)  # its arithmetic has no bf16 rounding to choose: one run
LLMC = """
import json, sys
from converter.model import GROK1
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
from llmcompressor.entrypoints.model_free import model_free_ptq
scheme = json.loads(sys.argv[3])
if isinstance(scheme, dict):
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**scheme))
model_free_ptq(sys.argv[1], sys.argv[2], scheme=scheme, ignore=json.loads(sys.argv[4]),
               device="cpu")
"""


def tensors(folder: Path) -> dict[str, SafetensorsReader]:
    """The reader holding each tensor of a safetensors folder."""
    found = {}
    for path in sorted(folder.glob("*.safetensors")):
        reader = SafetensorsReader(path)
        found.update(dict.fromkeys(reader.entries, reader))
    return found


def codes_of(packed: np.ndarray, case: str) -> np.ndarray:
    """The codes of a `weight_packed` tensor."""
    if case in FP4:
        return unpack_nibbles(packed)
    bits = 4 if case.startswith("int4") else 8
    return unpack_codes(packed, bits, packed.shape[1] * 32 // bits)


def compare(ours: Path, theirs: Path, case: str) -> dict[str, int]:
    """Tensors compared, tensors whose bytes differ, and codes that differ."""
    mine, other = tensors(ours), tensors(theirs)
    compared = [n for n in other if n.endswith((".weight_packed", ".weight_scale",
                                                 ".weight_zero_point", ".weight_global_scale"))]
    if not compared or set(compared) - set(mine):
        raise SystemExit(f"{theirs}: its quantized tensors are not ours: "
                         f"{sorted(set(compared) - set(mine))[:4]}")
    differ = codes = 0
    for name in compared:
        a, b = mine[name].get(name), other[name].get(name)
        if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
            differ += 1
            if name.endswith(".weight_packed") and a.shape == b.shape:
                codes += int(np.count_nonzero(codes_of(a, case) != codes_of(b, case)))
    return {"tensors": len(compared), "differ": differ, "codes_differ": codes}


def bf16_input(preset: str, layers: int | None, names: str) -> Path:
    """The generated checkpoint as bf16 `hf` with these names (made once, kept in the cache)."""
    source = checkpoint(preset, layers)
    folder = source.parent / (f"{source.name}-hf-bf16" + ("" if names == "hpcai" else f"-{names}"))
    if not (folder / "config.json").exists():
        subprocess.run(grok1("convert", str(source), str(folder), "--to", "hf", "--dtype",
                             "bf16", "--names", names, "--quiet", "--overwrite"), check=True)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--llmc-python", required=True, help="python of the llm-compressor venv")
    parser.add_argument("--preset", default="bench")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--cases", default=",".join(CASES), help=f"of {', '.join(CASES)}")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=checkpoint(args.preset, args.layers).parent) as work:
        for case in args.cases.split(","):
            options, scheme = CASES[case]
            names = "sglang" if case in FP4 else "hpcai"
            source = bf16_input(args.preset, args.layers, names)
            ignore = json.dumps(ignored_modules(GROK1.name_schemes[names]))
            ours, theirs = Path(work) / f"ours-{case}", Path(work) / f"llmc-{case}"
            other = run_measured([args.llmc_python, "-c", LLMC, str(source), str(theirs),
                                  json.dumps(scheme), ignore], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            mine = run_measured(grok1("quantize", str(source), str(ours), *options, "--quiet"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            in_f32 = found = compare(ours, theirs, case)
            if case not in NO_ARITHMETIC:
                shutil.rmtree(ours)
                options = [*options, "--arithmetic", "bf16"]
                mine = run_measured(grok1("quantize", str(source), str(ours), *options,
                                          "--quiet"),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                found = compare(ours, theirs, case)
            preset = scheme if isinstance(scheme, str) else json.dumps(scheme)
            rows.append({"case": case, "ours": " ".join(options), "llmc": preset, **found,
                         "f32_codes_differ": in_f32["codes_differ"],
                         "ours_s": mine.seconds, "llmc_s": other.seconds,
                         "ours_rss_mb": mine.rss / 2**20, "llmc_rss_mb": other.rss / 2**20})
            shutil.rmtree(ours)
            shutil.rmtree(theirs)
    if args.json:
        print(json.dumps({"input": str(checkpoint(args.preset, args.layers)), "rows": rows},
                         indent=2))
    else:
        print(f"input: {checkpoint(args.preset, args.layers)} as bf16 hf")
        print("| grok1 quantize | llm-compressor scheme | tensors | bytes differ | codes differ | "
              "codes differ with --arithmetic f32 | grok1 s | llm-compressor s | time ratio | "
              "grok1 peak RSS MB | llm-compressor peak RSS MB |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            print(f"| {r['ours']} | {r['llmc']} | {r['tensors']} | {r['differ']} | "
                  f"{r['codes_differ']} | {r['f32_codes_differ']} | {r['ours_s']:.1f} | "
                  f"{r['llmc_s']:.1f} | "
                  f"{r['llmc_s'] / r['ours_s']:.2f} | {r['ours_rss_mb']:.0f} | "
                  f"{r['llmc_rss_mb']:.0f} |")
    return 1 if any(r["differ"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
