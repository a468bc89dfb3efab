"""Work run at lower priority (pearl_pipelines/ml/priority.py): on Linux in a thread of its own, niced, together with
the threads it starts; the caller's thread keeps its niceness; results and errors come back to the caller."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from pearl_pipelines.ml.priority import BACKGROUND_NICE, at_lower_priority, per_thread_niceness


def niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not per_thread_niceness(), reason="threads have no niceness of their own on this OS")
def test_the_work_and_its_threads_run_nicer_and_the_caller_does_not() -> None:
    before = niceness()

    def work() -> tuple[int, list[int], str]:
        with ThreadPoolExecutor(2) as pool:  # as apply_head starts its workers
            workers = list(pool.map(lambda _: niceness(), range(4)))
        return niceness(), workers, threading.current_thread().name

    inside, workers, name = at_lower_priority(work)
    expected = min(19, before + BACKGROUND_NICE)
    assert inside == expected and set(workers) == {expected}
    assert name != threading.current_thread().name
    assert niceness() == before  # the calling thread (one that serves requests) is never niced


def test_errors_and_results_reach_the_caller() -> None:
    assert at_lower_priority(lambda: 42) == 42
    with pytest.raises(ZeroDivisionError):
        at_lower_priority(lambda: 1 / 0)
    assert at_lower_priority(lambda: "here", nice=0) == "here"
