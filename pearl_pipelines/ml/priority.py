"""Work nobody is waiting for right now, at a lower CPU priority than the requests somebody is waiting for.

A live retrain shows the block in view first and then re-predicts the rest of the AOI; the browser asks for the
block's tiles at that moment. Run at the same priority, the rest of the AOI takes half the cores from those tile
requests. Linux keeps niceness per thread and a thread's new threads inherit it, so the rest runs in a thread of its
own, niced, together with the worker threads it starts; the thread ends with the work (an unprivileged process
cannot lower a niceness again, so no thread that serves requests is ever niced)."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
BACKGROUND_NICE = 10  # the niceness added: as much as Dagster's local worker runs take (GpuCompute.nice)


def per_thread_niceness() -> bool:
    """Whether this OS gives each thread its own niceness (Linux)."""
    return sys.platform.startswith("linux") and hasattr(os, "setpriority")


def at_lower_priority(work: Callable[[], T], *, nice: int = BACKGROUND_NICE) -> T:
    """`work()` in a thread of its own, `nice` steps nicer than the calling thread (at most 19); its result, or its
    exception raised here. Where threads have no niceness of their own, `work()` runs here as it is."""
    if nice <= 0 or not per_thread_niceness():
        return work()
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
        except OSError:
            pass  # not allowed here (a sandbox): run at the caller's priority
        try:
            outcome["value"] = work()
        except BaseException as error:  # re-raised in the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=run, name="pearl-lower-priority", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]
