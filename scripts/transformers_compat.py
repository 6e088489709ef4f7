"""Check that our Hugging Face outputs load in another transformers release (through the model
files they ship, as a user with only transformers would) and compute what `grok1 logits` does.

    .venv/bin/python scripts/transformers_compat.py 4.57.6

Makes a venv under /tmp with torch 2.13.0 and that transformers release (plus compressed-tensors
and accelerate), writes an f32 output under both name tables and an int4 output of a generated
`small` model with this checkout, and in that venv compares each one's logits with ours and its
cached `generate()` with full forwards. Prints one line per output; exits 1 on a mismatch.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

LIMIT = 2e-5


def check(folders: list[str]) -> int:
    """In the other venv: load each folder, compare with its saved reference logits."""
    import torch
    import transformers

    failures = 0
    for folder in folders:
        tokens = torch.from_numpy(np.load(Path(folder) / "tokens.npy"))
        model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, trust_remote_code=True, dtype=torch.float32)
        with torch.no_grad():
            diff = np.abs(model(tokens).logits.numpy()
                          - np.load(Path(folder) / "reference.npy")).max()
            generated = model.generate(tokens[:1, :5], max_new_tokens=6, do_sample=False,
                                       pad_token_id=0)
            sequence = tokens[:1, :5]
            for _ in range(6):
                step = model(sequence, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
                sequence = torch.cat([sequence, step], dim=1)
        same = torch.equal(generated, sequence)
        ok = diff <= LIMIT and same
        failures += not ok
        print(f"transformers {transformers.__version__}: {Path(folder).name}: max |logit diff| "
              f"{diff:.2e}, cached generate == full forwards: {same} -> {'ok' if ok else 'FAIL'}")
    return 1 if failures else 0


def main(version: str) -> int:
    """Write the outputs here, then check them in a venv with transformers `version`."""
    from converter.convert import convert
    from converter.forward.drive import torch_logits
    from converter.generate import generate_checkpoint
    from converter.layouts import open_checkpoint
    from converter.layouts.base import TargetOptions
    from converter.model.config import Grok1Config
    from quant.registry import quantize_checkpoint

    venv = Path(tempfile.gettempdir()) / f"grok1-transformers-{version}"
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "torch==2.13.0",
                        f"transformers=={version}", "compressed-tensors", "accelerate"],
                       check=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_checkpoint(root / "small", Grok1Config.preset("small"), seed=2, quiet=True)
        tokens = np.random.default_rng(0).integers(3, 4096, (2, 12))
        folders = []
        for name, names in (("f32-hpcai", "hpcai"), ("f32-sglang", "sglang")):
            convert(root / "small", root / name, to="hf", quiet=True,
                    options=TargetOptions(dtype="f32", names=names, tokenizer="none"))
            folders.append(root / name)
        quantize_checkpoint(root / "small", root / "int4", "int4", tokenizer="none", quiet=True)
        folders.append(root / "int4")
        for folder in folders:
            np.save(folder / "tokens.npy", tokens)
            np.save(folder / "reference.npy", torch_logits(open_checkpoint(folder), tokens))
        return subprocess.run([str(venv / "bin" / "python"), __file__, "--check",
                               *map(str, folders)]).returncode


if __name__ == "__main__":
    if sys.argv[1:2] == ["--check"]:
        sys.exit(check(sys.argv[2:]))
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "4.57.6"))
