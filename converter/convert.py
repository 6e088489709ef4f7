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
import multiprocessing
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from converter import __version__
from converter.engine.executors import (
    EXECUTORS,
    MAX_RETRIES,
    die_with_parent,
    maybe_inject_fault,
    ray_connect,
    ray_get,
)
from converter.engine.output import (
    MANIFEST_NAME,
    OutputFolder,
    fingerprint,
    origin_of,
    refuse_overlap,
)
from converter.engine.progress import byte_bar, file_growth
from converter.errors import DiskSpaceError, UsageError
from converter.layouts import LAYOUTS, CheckpointReader, layout, open_checkpoint
from converter.layouts.base import Target, TargetOptions, Unit

__all__ = ["MANIFEST_NAME", "Target", "Unit", "convert", "default_workers", "run_units"]


_WORKER: dict[str, Any] = {}


def _worker_init(source: str, target: Target, parent: int) -> None:
    die_with_parent(parent)
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
            initializer=_worker_init, initargs=(str(source), target, os.getpid())) as pool:
        futures = [pool.submit(_worker_write, u, str(dst)) for u in todo]
        for future in concurrent.futures.as_completed(futures):
            yield future.result()


def write_unit(source: str, target: Target, unit: Unit, dst: str) -> tuple[str, dict[str, Any]]:
    """One unit of a conversion, as a Ray task runs it."""
    maybe_inject_fault()
    return unit.path, target.write(open_checkpoint(Path(source)), unit, Path(dst))


def _on_ray(ray: Any, source: Path, target: Target, todo: list[Unit], dst: Path) -> Results:
    """Units as Ray tasks (retried if their worker dies)."""
    task = ray.remote(max_retries=MAX_RETRIES)(write_unit)
    pending = [task.remote(str(Path(source).resolve()), target, u, str(dst.resolve()))
               for u in todo]
    while pending:
        finished, pending = ray.wait(pending, num_returns=1)
        yield ray_get(ray, finished[0])


def run_units(source: Path, dst: Path, target: Target, *, workers: int, resume: bool = False,
              overwrite: bool = False, dry_run: bool = False, quiet: bool = False,
              executor: str = "local", ray_address: str | None = None,
              reader: CheckpointReader | None = None, label: str = "convert",
              command: str | None = None) -> dict[str, Any]:
    """Convert `source` into `dst` with `target`; returns a summary. `reader`: the source,
    when the caller has already opened it; `label`: the progress bar's; `command`: the
    command line to record (the manifest also records where the source came from)."""
    if executor not in EXECUTORS:
        raise UsageError(f"unknown executor {executor!r}; known: {', '.join(EXECUTORS)}")
    ray = ray_connect(ray_address) if executor == "ray" and not dry_run else None
    start = time.perf_counter()
    reader = reader or open_checkpoint(source)
    units = target.plan(reader)
    total = sum(u.nbytes for u in units)
    settings = {"source": str(Path(source).resolve()), "layout": reader.layout,
                **target.settings()}
    summary: dict[str, Any] = {"source": str(source), "destination": str(dst),
                               "units": len(units), "bytes": total, **target.settings()}
    if dry_run:
        summary["files"] = [{"path": u.path, "bytes": u.nbytes} for u in units]
        return summary
    source_files = reader.source_files()
    refuse_overlap(source, dst, source_files)
    identity = fingerprint(source_files, Path(source))
    out = OutputFolder(dst)
    finals = target.final_files(units)
    out.lock()  # before anything in the folder is read, swept or deleted
    try:
        previous = out.prepare(resume=resume, overwrite=overwrite,
                               planned=[u.path for u in units] + finals)
        done: dict[str, Any] = {}
        if previous is not None:
            if previous.get("settings") != settings:
                raise UsageError(f"{dst}: was started with other settings "
                                 f"({previous.get('settings')}); pass --overwrite to start again")
            if previous.get("source_identity") != identity:
                raise UsageError(f"{dst}: the source {source} changed since the interrupted "
                                 "run (its files' sizes or times differ); pass --overwrite to "
                                 "start again")
            done = out.finished_units(previous)
        todo = [u for u in units if u.path not in done]
        out.make(sum(u.nbytes for u in todo))
        manifest = {"tool": f"grok1-toolchain {__version__}", "settings": settings,
                    "source_identity": identity, "units": done, "files": finals,
                    "command": (previous or {}).get("command", command),  # what began it
                    "origin": origin_of(Path(source)), "complete": False}
        out.save_manifest(manifest)
        target.prepare_run(reader, dst, quiet)
        if ray is not None:
            results = _on_ray(ray, source, target, todo, dst)
        elif workers <= 1 or len(todo) < 2 * workers:
            results = _in_threads(reader, target, todo, dst, workers)
        else:
            results = _in_processes(source, target, todo, dst, workers)
        sizes = {u.path: u.nbytes for u in todo}
        with byte_bar(total, label, quiet=quiet) as bar, file_growth(
                bar, dst, sizes, already=total - sum(sizes.values())) as finished:
            for path, result in results:
                manifest["units"][path] = {"bytes": (dst / path).stat().st_size, **result}
                out.save_manifest(manifest)
                finished(path)
        if ray is not None:
            out.sweep_temporaries({u.path for u in units})  # killed attempts' leftovers
        target.finalize(reader, units, dst, manifest["units"])
        manifest["complete"] = True
        out.save_manifest(manifest)
    except DiskSpaceError as exc:
        raise DiskSpaceError(f"{exc}; free space and rerun with --resume") from None
    finally:
        out.unlock()
    seconds = time.perf_counter() - start
    written = sum(u.nbytes for u in todo)
    summary.update({"tensors": sum(len(u["tensors"]) for u in manifest["units"].values()),
                    "resumed_units": len(units) - len(todo), "seconds": round(seconds, 3),
                    "bytes_written": written,
                    "throughput_MBps": round(written / max(seconds, 1e-9) / 1e6, 1)})
    return summary


def convert(source: Path, dst: Path, *, to: str, options: TargetOptions,
            workers: int | None = None, reader: CheckpointReader | None = None,
            **run: Any) -> dict[str, Any]:
    """Convert `source` (any layout) into layout `to` in `dst`; returns a summary. `run` takes
    run_units' options (resume, overwrite, dry_run, quiet, executor, ray_address)."""
    chosen = layout(to)
    if options.names is not None and not chosen.takes_names:
        takers = ", ".join(name for name, entry in LAYOUTS.items() if entry.takes_names)
        raise UsageError(f"--names {options.names}: --to {to} writes its own tensor names "
                         f"(--names is for --to {takers})")
    reader = reader or open_checkpoint(source)
    target = chosen.target(reader, options)
    return run_units(source, dst, target, workers=workers or default_workers(), reader=reader,
                     **run)


def default_workers() -> int:
    """The number of usable cores."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
