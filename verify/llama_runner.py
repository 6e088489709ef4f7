"""llama.cpp (through llama-cpp-python) run in a child process, so that a crash inside it cannot
take the toolchain down with it.

Every job (the logits of some sequences, a quantization, a tokenization) is one run of
`python -m verify.llama_runner REQUEST`: the request and the sequences go in as files, the
result comes back as a file, and a child that dies (a segfault, an abort, an out-of-memory
kill) becomes one `EngineError` naming the signal and the file it was running. Nothing of
llama.cpp is imported into the caller's process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import EngineError, UsageError

__all__ = ["INSTALL", "available", "llama_logits", "llama_quantize", "llama_tokenize"]

INSTALL = "pip install llama-cpp-python==0.3.36"
_TAIL = 400  # characters of a dead child's stderr kept for the error line


def available() -> bool:
    """Whether llama-cpp-python is importable (checked without importing it here)."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def _run(job: dict[str, Any], arrays: dict[str, np.ndarray], what: str) -> Path:
    """Run one job in a child; returns the folder holding its result (the caller reads it
    before the folder goes). Raises EngineError when the child dies or fails."""
    if not available():
        raise UsageError(f"this needs llama.cpp: {INSTALL}")
    folder = Path(tempfile.mkdtemp(prefix="grok1-llama-"))
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array)
    (folder / "job.json").write_text(json.dumps(job))
    child = subprocess.run([sys.executable, "-m", "verify.llama_runner", str(folder)],
                           stdin=subprocess.DEVNULL, capture_output=True, check=False)
    if child.returncode != 0:
        if child.returncode < 0:
            name = signal.Signals(-child.returncode).name
            why = f"llama.cpp crashed ({name}) {what}"
        else:
            lines = child.stderr.decode(errors="replace").strip().splitlines()
            why = f"llama.cpp failed {what}: {' '.join((lines or ['no message'])[-1].split())}"
        _remove(folder)
        raise EngineError(why[:_TAIL])
    return folder


def _remove(folder: Path) -> None:
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()


def llama_logits(path: Path, sequences: list[np.ndarray], *, threads: int | None = None
                 ) -> list[np.ndarray]:
    """llama.cpp's logits (float32 [len(seq), vocab]) of each token sequence, from the GGUF at
    `path` (the first file of a split set finds the rest)."""
    arrays = {f"seq{i}": np.asarray(s, np.int64) for i, s in enumerate(sequences)}
    folder = _run({"op": "logits", "model": str(path), "count": len(sequences),
                   "threads": threads}, arrays, f"running {path}")
    try:
        return [np.load(folder / f"out{i}.npy") for i in range(len(sequences))]
    finally:
        _remove(folder)


def llama_quantize(source: Path, target: Path, ftype: int, *, threads: int | None = None
                   ) -> None:
    """llama.cpp's `llama_model_quantize` of the GGUF `source` into `target` as `ftype`."""
    folder = _run({"op": "quantize", "model": str(source), "target": str(target),
                   "ftype": ftype, "threads": threads}, {}, f"quantizing {source}")
    _remove(folder)


def llama_tokenize(path: Path, texts: list[str]) -> list[list[int]]:
    """llama.cpp's token ids of each text (no BOS, special text not parsed), from the
    vocabulary of the GGUF at `path`."""
    folder = _run({"op": "tokenize", "model": str(path), "texts": texts}, {},
                  f"tokenizing with {path}")
    try:
        return json.loads((folder / "out.json").read_text())
    finally:
        _remove(folder)


# ---- the child ---------------------------------------------------------------------------

def _child(folder: Path) -> None:
    import llama_cpp
    from llama_cpp import llama_cpp as bindings

    # Extra buffer types off (llama.cpp's --no-repack): on CPUs with AMX, ggml's AMX repacked
    # Q8_0 matmul segfaults on small shapes, and an oracle must compute plainly in any case.
    # `Llama` takes no such argument; it builds its parameters from this function.
    defaults = bindings.llama_model_default_params

    def plain_params() -> Any:
        params = defaults()
        params.use_extra_bufts = False
        return params

    bindings.llama_model_default_params = plain_params
    job = json.loads((folder / "job.json").read_text())
    threads = job.get("threads") or len(os.sched_getaffinity(0))
    if job["op"] == "quantize":
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.nthread = job["ftype"], threads
        status = llama_cpp.llama_model_quantize(job["model"].encode(), job["target"].encode(),
                                                params)
        if status != 0:
            raise SystemExit(f"llama_model_quantize returned {status}")
    elif job["op"] == "tokenize":
        model = llama_cpp.Llama(model_path=job["model"], vocab_only=True, verbose=False)
        ids = [model.tokenize(t.encode(), add_bos=False, special=False) for t in job["texts"]]
        (folder / "out.json").write_text(json.dumps(ids))
    else:
        for i in range(job["count"]):
            ids = [int(t) for t in np.load(folder / f"seq{i}.npy")]
            model = llama_cpp.Llama(model_path=job["model"], logits_all=True,
                                    n_ctx=max(64, len(ids)), type_k=0, type_v=0,
                                    n_threads=threads, verbose=False)
            model.eval(ids)
            np.save(folder / f"out{i}.npy", np.array(model.scores[:len(ids)], np.float32))
            model.close()


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
