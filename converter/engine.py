"""The conversion engine: plan units of work, write them (in parallel), resume after a crash.

A unit is one output file (a shard, or one release pickle). Each is written to a temporary name
and renamed when complete; the manifest `grok1-manifest.json` records every finished unit with
the sha256 of each tensor, and is rewritten atomically after each one. The index (or sidecar)
is written last. A rerun with `resume` skips finished units, so an interrupted run ends with
the same bytes as an uninterrupted one, whatever the number of workers.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from converter import __version__
from converter.atomic import atomic_open, check_free_space, remove_incomplete
from converter.errors import UsageError
from converter.executors import EXECUTORS, MAX_RETRIES, ray_connect, ray_get, write_unit
from converter.layouts import CheckpointReader, open_checkpoint
from converter.progress import byte_bar

__all__ = ["MANIFEST_NAME", "Target", "Unit", "prepare_output", "run_units"]

MANIFEST_NAME = "grok1-manifest.json"


@dataclasses.dataclass(frozen=True)
class Unit:
    """One output file and what goes into it."""

    path: str
    nbytes: int
    items: tuple[Any, ...]


class Target(Protocol):
    """An output layout (a dataclass with a `threads` field): plans units, writes one, and
    writes the final files. Few units are written one after another with `threads` computing
    tensors ahead; many units are spread over worker processes."""

    threads: int

    def settings(self) -> dict[str, Any]: ...

    def plan(self, reader: CheckpointReader) -> list[Unit]: ...

    def write(self, reader: CheckpointReader, unit: Unit, dst: Path) -> dict[str, Any]: ...

    def finalize(self, reader: CheckpointReader, units: list[Unit], dst: Path,
                 records: dict[str, Any]) -> None: ...


def prepare_output(dst: Path, *, resume: bool, overwrite: bool) -> dict[str, Any] | None:
    """Check DST: empty, or resumable with a manifest, or to be overwritten. Returns the manifest
    of a previous run when resuming."""
    if resume and overwrite:
        raise UsageError("--resume and --overwrite contradict each other")
    if not dst.exists() or not any(dst.iterdir()):
        dst.mkdir(parents=True, exist_ok=True)
        return None
    if overwrite:
        shutil.rmtree(dst)
        dst.mkdir(parents=True)
        return None
    manifest_path = dst / MANIFEST_NAME
    if not resume:
        raise UsageError(f"{dst}: exists and is not empty; pass --resume to continue an "
                         "interrupted run or --overwrite to replace it")
    if not manifest_path.is_file():
        raise UsageError(f"{dst}: not empty and holds no {MANIFEST_NAME}, so there is nothing "
                         "to resume; pass --overwrite to replace it")
    return json.loads(manifest_path.read_text())


def _save_manifest(dst: Path, manifest: dict[str, Any]) -> None:
    with atomic_open(dst / MANIFEST_NAME) as f:
        f.write(json.dumps(manifest, indent=1, sort_keys=True).encode())


_WORKER: dict[str, Any] = {}


def _worker_init(source: str, target: Target) -> None:
    _WORKER["reader"] = open_checkpoint(Path(source))
    _WORKER["target"] = target


def _worker_write(unit: Unit, dst: str) -> tuple[str, dict[str, Any]]:
    return unit.path, _WORKER["target"].write(_WORKER["reader"], unit, Path(dst))


Results = Iterator[tuple[str, dict[str, Any]]]


def _in_threads(reader: CheckpointReader, target: Target, todo: list[Unit], dst: Path,
                workers: int) -> Results:
    """Units one after another, `workers` threads computing each unit's tensors ahead."""
    threaded = dataclasses.replace(target, threads=workers)
    for unit in todo:
        yield unit.path, threaded.write(reader, unit, dst)


def _in_processes(source: Path, target: Target, todo: list[Unit], dst: Path,
                  workers: int) -> Results:
    """Units spread over worker processes, in the order they finish."""
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(
            max_workers=min(workers, len(todo)), mp_context=context,
            initializer=_worker_init, initargs=(str(source), target)) as pool:
        futures = [pool.submit(_worker_write, u, str(dst)) for u in todo]
        for future in concurrent.futures.as_completed(futures):
            yield future.result()


def _on_ray(ray: Any, source: Path, target: Target, todo: list[Unit], dst: Path) -> Results:
    """Units as Ray tasks (retried if their worker dies); killed attempts' leftovers swept."""
    task = ray.remote(max_retries=MAX_RETRIES)(write_unit)
    pending = [task.remote(str(Path(source).resolve()), target, u, str(dst.resolve()))
               for u in todo]
    while pending:
        finished, pending = ray.wait(pending, num_returns=1)
        yield ray_get(ray, finished[0])
    remove_incomplete(dst)


def run_units(source: Path, dst: Path, target: Target, *, workers: int, resume: bool,
              overwrite: bool, dry_run: bool = False, quiet: bool = False,
              executor: str = "local", ray_address: str | None = None) -> dict[str, Any]:
    """Convert `source` into `dst` with `target`; returns a summary."""
    if executor not in EXECUTORS:
        raise UsageError(f"unknown executor {executor!r}; known: {', '.join(EXECUTORS)}")
    ray = ray_connect(ray_address) if executor == "ray" and not dry_run else None
    start = time.perf_counter()
    reader = open_checkpoint(source)
    units = target.plan(reader)
    total = sum(u.nbytes for u in units)
    settings = {"source": str(Path(source).resolve()), "layout": reader.layout,
                **target.settings()}
    summary: dict[str, Any] = {"source": str(source), "destination": str(dst),
                               "units": len(units), "bytes": total, **target.settings()}
    if dry_run:
        summary["files"] = [{"path": u.path, "bytes": u.nbytes} for u in units]
        return summary
    previous = prepare_output(dst, resume=resume, overwrite=overwrite)
    done: dict[str, Any] = {}
    if previous is not None:
        if previous.get("settings") != settings:
            raise UsageError(f"{dst}: was started with other settings "
                             f"({previous.get('settings')}); pass --overwrite to start again")
        remove_incomplete(dst)
        done = {path: info for path, info in previous.get("units", {}).items()
                if (dst / path).is_file() and (dst / path).stat().st_size == info["bytes"]}
    todo = [u for u in units if u.path not in done]
    check_free_space(dst, sum(u.nbytes for u in todo) + (64 << 20))
    manifest = {"tool": f"grok1-toolchain {__version__}", "settings": settings, "units": done,
                "complete": False}
    _save_manifest(dst, manifest)
    if ray is not None:
        results = _on_ray(ray, source, target, todo, dst)
    elif workers <= 1 or len(todo) < 2 * workers:
        results = _in_threads(reader, target, todo, dst, workers)
    else:
        results = _in_processes(source, target, todo, dst, workers)
    sizes = {u.path: u.nbytes for u in todo}
    with byte_bar(total, "convert", quiet=quiet) as bar:
        bar.update(total - sum(sizes.values()))
        for path, result in results:
            manifest["units"][path] = {"bytes": (dst / path).stat().st_size, **result}
            _save_manifest(dst, manifest)
            bar.update(sizes[path])
    target.finalize(reader, units, dst, manifest["units"])
    manifest["complete"] = True
    _save_manifest(dst, manifest)
    seconds = time.perf_counter() - start
    written = sum(u.nbytes for u in todo)
    summary.update({"tensors": sum(len(u["tensors"]) for u in manifest["units"].values()),
                    "resumed_units": len(units) - len(todo), "seconds": round(seconds, 3),
                    "bytes_written": written,
                    "throughput_MBps": round(written / max(seconds, 1e-9) / 1e6, 1)})
    return summary


def default_workers() -> int:
    """The number of usable cores."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
