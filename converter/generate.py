"""Deterministic random checkpoints in the exact release layout (`grok1 make-tiny`).

Weights are drawn N(0, 1/in) and quantized as the release is: int8 codes with bf16 scales of
absmax/127 per (scale group, output column). Norm scales are 1 + N(0, 0.1), except the two
post-block norms, which are 0.3 times that: as in a trained sandwich-norm model, each block adds
an update smaller than the residual stream. With unit post-norms a random model is chaotic (int4
noise of 12% per matrix flips a fifth of the argmax positions of a 5-layer model, which trained
models do not do), and with much smaller ones the layers barely matter to the logits.

Every array is produced in chunks from a generator seeded by (seed, file, expert, first row), so
the same seed gives the same bytes and memory stays at one chunk whatever the model size: a
quantized matrix takes two passes (absmax, then codes).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from converter import __version__
from converter.engine.output import OutputFolder, discard_folder
from converter.engine.progress import byte_bar
from converter.errors import UsageError
from converter.files.atomic import check_free_space
from converter.layouts.xai import TENSOR_DIRS, write_leaf
from converter.model import GROK1
from converter.model.config import Grok1Config, save_sidecar
from converter.model.spec import TensorSpec
from converter.tensors import f32_to_bf16_bits

__all__ = ["generate_checkpoint"]

_CHUNK_ELEMS = 8 << 20
_FLOAT_STD = {"embed": lambda c: c.emb ** -0.5, "router": lambda c: 3 * c.emb ** -0.5}
_NORM_MEAN = {"post_attn_norm": 0.3, "post_moe_norm": 0.3}


def _row_chunks(rows: int, cols: int, group_rows: int) -> Iterator[tuple[int, int]]:
    step = max(1, min(group_rows, _CHUNK_ELEMS // max(cols, 1)))
    for group_start in range(0, rows, group_rows):
        for start in range(group_start, group_start + group_rows, step):
            yield start, min(start + step, group_start + group_rows)


def _normal(seed: int, spec: TensorSpec, expert: int, start: int, shape: tuple[int, ...],
            std: float) -> np.ndarray:
    rng = np.random.default_rng([seed, spec.file_index, expert, start])
    values = rng.standard_normal(shape, dtype=np.float32)
    values *= np.float32(std)
    return values


def _float_chunks(spec: TensorSpec, config: Grok1Config, seed: int) -> Iterator[np.ndarray]:
    if spec.role in _FLOAT_STD:
        rows, cols = spec.shape
        for start, stop in _row_chunks(rows, cols, rows):
            yield _normal(seed, spec, 0, start, (stop - start, cols), _FLOAT_STD[spec.role](config))
    else:
        yield np.float32(_NORM_MEAN.get(spec.role, 1.0)) * (1 + _normal(seed, spec, 0, 0,
                                                                         spec.shape, 0.1))


def _quantized_scales(spec: TensorSpec, seed: int) -> np.ndarray:
    """Pass 1: bf16 bits of absmax/127 per (expert, group, column)."""
    *lead, rows, cols = spec.shape
    experts = lead[0] if lead else 1
    group_rows = spec.rows_per_scale_group
    absmax = np.zeros((experts, spec.scale_groups, cols), np.float32)
    for e in range(experts):
        for start, stop in _row_chunks(rows, cols, group_rows):
            chunk = _normal(seed, spec, e, start, (stop - start, cols), rows ** -0.5)
            np.maximum(absmax[e, start // group_rows], np.abs(chunk).max(axis=0),
                       out=absmax[e, start // group_rows])
    bits = f32_to_bf16_bits(np.maximum(absmax, np.float32(1e-30)) / np.float32(127))
    return bits.reshape(spec.scales_shape or ())


def _quantized_codes(spec: TensorSpec, seed: int, scales_bits: np.ndarray) -> Iterator[np.ndarray]:
    """Pass 2: regenerate each chunk and round it to int8 codes with its group's scale."""
    *lead, rows, cols = spec.shape
    experts = lead[0] if lead else 1
    group_rows = spec.rows_per_scale_group
    scales = (scales_bits.astype(np.uint32) << 16).view(np.float32).reshape(
        experts, spec.scale_groups, cols)
    for e in range(experts):
        for start, stop in _row_chunks(rows, cols, group_rows):
            chunk = _normal(seed, spec, e, start, (stop - start, cols), rows ** -0.5)
            chunk /= scales[e, start // group_rows]
            yield np.clip(np.rint(chunk), -127, 127).astype(np.int8)


def generate_checkpoint(folder: Path, config: Grok1Config, *, seed: int = 0,
                        quiet: bool = False, overwrite: bool = False) -> list[TensorSpec]:
    """Write a random release-layout checkpoint for `config` as `folder`.

    It is written into a staging folder beside `folder` and moved into place only when complete
    (with a manifest of every file's sha256), so a failed run leaves nothing behind. An existing
    `folder` is replaced only with `overwrite`, and only if it is an earlier output of this
    toolchain holding nothing else.
    """
    out = OutputFolder(Path(folder))
    specs = GROK1.build_spec(config)
    total = sum(s.payload_bytes for s in specs)
    out.lock()  # before anything in the folder is read or deleted
    try:
        owned: set[str] = set()
        if not out.is_empty():
            if not overwrite:
                raise UsageError(f"{folder}: exists and is not empty; pass --overwrite to "
                                 "replace it")
            owned = out.replaceable()
        check_free_space(out.path.parent, total + (1 << 20))
        staging = out.path.with_name(f".{out.path.name}.{secrets.token_hex(4)}.incomplete")
        try:
            _write_all(staging, config, specs, seed, quiet)
            if owned:
                out.remove(owned)
            out.replace_with(staging)
        finally:
            discard_folder(staging)
    finally:
        out.unlock()
    return specs


def _write_all(folder: Path, config: Grok1Config, specs: list[TensorSpec], seed: int,
               quiet: bool) -> None:
    tensor_dir = folder / TENSOR_DIRS[0]
    tensor_dir.mkdir(parents=True)
    units = {}
    with byte_bar(sum(s.payload_bytes for s in specs), "make-tiny", quiet=quiet) as bar:
        for spec in specs:
            if spec.quantized:
                scales = _quantized_scales(spec, seed)
                payloads = [_quantized_codes(spec, seed, scales), [scales]]
            else:
                payloads = [_float_chunks(spec, config, seed)]
            digest = write_leaf(tensor_dir / spec.file_name, spec, payloads)
            units[f"{TENSOR_DIRS[0]}/{spec.file_name}"] = {
                "bytes": (tensor_dir / spec.file_name).stat().st_size, "sha256": digest}
            bar.update(spec.payload_bytes)
    save_sidecar(folder, config)
    OutputFolder(folder).save_manifest({
        "tool": f"grok1-toolchain {__version__}", "settings": {"make-tiny": config.to_dict(),
                                                               "seed": seed},
        "units": units, "files": ["config.json"], "complete": True})
