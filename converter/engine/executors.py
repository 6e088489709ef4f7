"""Where units of work run: on this machine (`local`) or as tasks on a Ray cluster (`ray`).

Ray is an optional extra. Its tasks read the source from a path every node sees and write
their own files; the driver only plans, collects results and writes the index. A task whose
worker dies is retried; its half-written temporary file is never renamed, so the output stays
identical to the local executor's.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import os
import signal
import threading
from typing import Any

from converter.errors import Grok1Error, UsageError

__all__ = [
    "EXECUTORS",
    "MAX_RETRIES",
    "RAY_INSTALL",
    "die_with_parent",
    "maybe_inject_fault",
    "ordered_map",
    "ray_connect",
    "ray_get",
]

EXECUTORS = ("local", "ray")
RAY_INSTALL = "pip install 'grok1-toolchain[ray]'"
MAX_RETRIES = 3
# Fault injection for recovery tests: the first task to start creates this file and is then
# killed (SIGKILL) after GROK1_FAULT_DELAY seconds, mid-write.
FAULT_MARKER = "GROK1_FAULT_KILL_ONCE"


def ordered_map(function: Any, items: Any, threads: int) -> Any:
    """Yield (item, function(item)) in order, computing up to `threads` items ahead."""
    if threads <= 1:
        for item in items:
            yield item, function(item)
        return
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        iterator = iter(items)
        pending = collections.deque((item, pool.submit(function, item))
                                    for item in itertools.islice(iterator, threads))
        while pending:
            item, future = pending.popleft()
            result = future.result()
            following = next(iterator, None)
            if following is not None:
                pending.append((following, pool.submit(function, following)))
            yield item, result


def die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this (worker) process when its parent dies, so a killed run
    leaves no workers behind to keep writing; exit at once if the parent is already gone."""
    import ctypes
    import ctypes.util

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def ray_connect(address: str | None) -> Any:
    """Import Ray and connect (start a local cluster when no address is given)."""
    try:
        import ray
    except ImportError:
        raise UsageError(f"--executor ray needs Ray, which is not installed: {RAY_INSTALL}"
                         ) from None
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False,
                 include_dashboard=False, logging_level="ERROR")
    return ray


def ray_get(ray: Any, ref: Any) -> Any:
    """ray.get, re-raising our own errors as themselves (so exit codes stay right)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, Grok1Error):
            raise cause from None
        raise


def maybe_inject_fault() -> None:
    """Under the tests' GROK1_FAULT_MARKER, kill this process (kill -9) after a short delay,
    once per marker file: a worker dying mid-unit."""
    marker = os.environ.get(FAULT_MARKER)
    if not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    delay = float(os.environ.get("GROK1_FAULT_DELAY", "0.3"))
    threading.Timer(delay, os.kill, (os.getpid(), signal.SIGKILL)).start()
