"""Calibration for NVFP4 W4A4: the largest |input| each Linear sees on calibration text, from
which its `input_global_scale` (448 * 6 / amax, as compressed-tensors' `generate_gparam` makes
it from llm-compressor's static min/max observer) is computed.

The streamed forward runs the calibration tokens through one decoder layer at a time (one
layer's weights in memory) with a hook that takes the max |x| over the real tokens (never the
padding) of every Linear's input: q, k and v see the same input, as do an expert's gate and up,
so fused Linears share their scale. The experts of a layer share one scale per role, from the
largest input any of them saw: SGLang's FlashInfer TRT-LLM MoE (what serves NVFP4 Grok-1 on
Blackwell) takes the smallest global scale over the experts anyway
(`compressed_tensors_w4a4_nvfp4_moe.py` 0.5.23), so every engine, and `grok1 verify`, then
computes the same thing; an expert no calibration token reached needs no guess (llm-compressor
writes per-expert scales and leaves such an expert uncalibrated).

Resumable: after each layer the hidden states and the table so far are saved atomically in the
output folder (`calibration_state.npz`); a run cut short continues from the last whole layer.
The finished table is `calibration.json`, beside the weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from converter.files.atomic import atomic_open
from converter.files.safe_read import read_capped
from converter.forward.base import ForwardHooks
from converter.forward.drive import observe

__all__ = ["CALIBRATION_NAME", "STATE_NAME", "calibrate_inputs", "tokens_digest"]

CALIBRATION_NAME = "calibration.json"
STATE_NAME = "calibration_state.npz"
Key = tuple[str, int | None]


def tokens_digest(tokens: np.ndarray) -> str:
    """What identifies a calibration's tokens (their shape and ids)."""
    tokens = np.ascontiguousarray(tokens, np.int64)
    return hashlib.sha256(repr(tokens.shape).encode() + tokens.tobytes()).hexdigest()[:16]


class _Observed:
    """The hook's table: max |input| over real tokens by (layer, role, expert)."""

    def __init__(self, amax: dict[tuple[int, str, int], float]) -> None:
        self.amax = amax

    def linear_input(self, layer: int, role: str, expert: int | None, x: torch.Tensor,
                     real: torch.Tensor) -> None:
        rows = x[real]
        if rows.numel():
            key = (layer, role, -1 if expert is None else expert)
            self.amax[key] = max(self.amax.get(key, 0.0), float(rows.abs().max()))


def _load_state(path: Path, digest: str, shape: tuple[int, ...]
                ) -> tuple[int, np.ndarray, dict[tuple[int, str, int], float]] | None:
    """A saved state for these tokens: (layers done, hidden states, table); None when there is
    none or it is not one this calibration can continue (it is then started again)."""
    if not path.is_file():
        return None
    limit = 4 * int(np.prod(shape)) + (64 << 20)  # the hidden states and the table
    with contextlib.suppress(Exception):  # ours, but a damaged one only costs a restart
        raw = read_capped(path, limit, "calibration state")
        with np.load(io.BytesIO(raw), allow_pickle=False) as data:
            if str(data["digest"]) != digest or data["hidden"].shape != shape:
                return None
            table = {(int(layer), str(role), int(expert)): float(value)
                     for layer, role, expert, value in zip(
                         data["layers"], data["roles"], data["experts"], data["values"],
                         strict=True)}
            return int(data["done"]), np.array(data["hidden"], np.float32), table
    return None


def _save_state(path: Path, digest: str, done: int, hidden: torch.Tensor,
                table: dict[tuple[int, str, int], float]) -> None:
    keys = sorted(table)
    buffer = io.BytesIO()
    np.savez(buffer, digest=np.array(digest), done=np.array(done),
             hidden=hidden.detach().float().cpu().numpy(),
             layers=np.array([k[0] for k in keys], np.int64),
             roles=np.array([k[1] for k in keys], dtype=str),
             experts=np.array([k[2] for k in keys], np.int64),
             values=np.array([table[k] for k in keys], np.float64))
    with atomic_open(path) as f:
        f.write(buffer.getvalue())


def calibrate_inputs(reader: Any, tokens: np.ndarray, folder: Path, *, quiet: bool = True
                     ) -> dict[Key, float]:
    """max |input| of every Linear (by tensor name and expert) over `tokens` [B, T], resuming
    from (and saving to) the state in `folder`; writes `calibration.json` there."""
    folder = Path(folder)
    config = reader.config
    digest = tokens_digest(tokens)
    shape = (*np.shape(tokens), config.emb)
    state = _load_state(folder / STATE_NAME, digest, shape)
    done, hidden, table = state if state is not None else (0, None, {})
    observed = _Observed(table)

    def layer_end(layer: int, states: torch.Tensor) -> None:
        _save_state(folder / STATE_NAME, digest, layer + 1, states, observed.amax)

    if done < config.layers:
        observe(reader, tokens, ForwardHooks(linear_input=observed.linear_input,
                                             layer_end=layer_end),
                quiet=quiet, first=done, hidden=None if done == 0 else hidden)
    amax = _by_tensor(reader, observed.amax)
    report = {"tokens": digest, "sequences": int(np.shape(tokens)[0]),
              "positions": int(np.size(tokens)),
              "real_tokens": int((np.asarray(tokens) != config.pad_token).sum()),
              "input_amax": {f"{name}" + ("" if expert is None else f"[{expert}]"): value
                             for (name, expert), value in amax.items()}}
    with atomic_open(folder / CALIBRATION_NAME) as f:
        f.write((json.dumps(report, indent=1) + "\n").encode())
    (folder / STATE_NAME).unlink(missing_ok=True)
    return amax


def _by_tensor(reader: Any, observed: dict[tuple[int, str, int], float]) -> dict[Key, float]:
    """The table by tensor name and expert: attention's Linears their own, each expert of a
    layer the largest over its layer's experts for that role."""
    amax: dict[Key, float] = {}
    for spec in reader.specs:
        if not spec.param.linear:
            continue
        if not spec.param.expert:
            amax[(spec.name, None)] = observed.get((spec.layer, spec.role, -1), 0.0)
            continue
        shared = max((v for k, v in observed.items() if k[:2] == (spec.layer, spec.role)),
                     default=0.0)
        amax.update({(spec.name, expert): shared for expert in range(spec.shape[0])})
    return amax
