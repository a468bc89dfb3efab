"""Run one worker task inside a Dagster Pipes session.

Both the launcher (`__main__`, when no warm server answers) and a fork of the warm server (`forkserver`) end here;
it is its own module so that neither of those two imports the other. The task list is `worker.tasks.TASKS` (whose
engine imports load when a task runs).
"""

from __future__ import annotations

from pearl_pipelines.worker.tasks import TASKS

TASK_NAMES = tuple(TASKS)


def run_task(task: str) -> int:
    """Run one task inside a Pipes session (the session reports an exception to Dagster, then re-raises)."""
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        TASKS[task](pipes)
    return 0
