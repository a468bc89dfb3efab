"""Run one worker task inside a Dagster Pipes session.

Both the launcher (`__main__`, when no warm server answers) and a fork of the warm server (`forkserver`) end here;
it is its own module so that neither of those two imports the other. The task list is `worker.tasks.TASKS` (whose
engine imports load when a task runs).
"""

from __future__ import annotations

import os

from pearl_pipelines.worker.tasks import TASKS

TASK_NAMES = tuple(TASKS)
NICE_ENV = "PEARL_WORKER_NICE"  # set by Dagster's local runs (GpuCompute.nice); the review app's tasks leave it unset


def lower_priority() -> int:
    """Add the niceness `PEARL_WORKER_NICE` asks for to this process (a fork of the warm server, or the launcher);
    the niceness it runs at."""
    return os.nice(max(int(os.environ.get(NICE_ENV) or 0), 0))


def run_task(task: str) -> int:
    """Run one task inside a Pipes session (the session reports an exception to Dagster, then re-raises)."""
    from dagster_pipes import open_dagster_pipes

    lower_priority()

    with open_dagster_pipes() as pipes:
        TASKS[task](pipes)
    return 0
