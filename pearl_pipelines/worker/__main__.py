"""`python -m pearl_pipelines.worker <task>`: open the Pipes context, run one task, report back."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from dagster_pipes import open_dagster_pipes


def main(argv: Sequence[str] | None = None) -> int:
    from pearl_pipelines.worker.tasks import TASKS

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0] not in TASKS:
        print(f"usage: python -m pearl_pipelines.worker {{{'|'.join(TASKS)}}}", file=sys.stderr)
        return 2
    with open_dagster_pipes() as pipes:
        TASKS[args[0]](pipes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
