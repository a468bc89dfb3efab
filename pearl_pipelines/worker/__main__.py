"""`python -m pearl_pipelines.worker <task>`: open the Pipes context, run one task, report back.

When the warm worker server runs (local mode, see `forkserver.py`), the task runs in a fork of it
with this process's stdio and environment; otherwise it runs here.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

TASK_NAMES = ("probe", "train-starter", "embed", "retrain", "predict")


def run_task(task: str) -> int:
    """Run one task inside a Pipes session (the session reports an exception to Dagster, then re-raises)."""
    from dagster_pipes import open_dagster_pipes

    from pearl_pipelines.worker.tasks import TASKS

    with open_dagster_pipes() as pipes:
        TASKS[task](pipes)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0] not in TASK_NAMES:
        print(f"usage: python -m pearl_pipelines.worker {{{'|'.join(TASK_NAMES)}}}", file=sys.stderr)
        return 2
    from pearl_pipelines.worker.forkserver import delegate

    code = delegate(args[0])
    return run_task(args[0]) if code is None else code


if __name__ == "__main__":
    sys.exit(main())
