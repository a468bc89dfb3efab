"""`python -m pearl_pipelines.worker <task>`: open the Pipes context, run one task, report back.

When the warm worker server runs (local mode, see `forkserver.py`), the task runs in a fork of it
with this process's stdio and environment; otherwise it runs here.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pearl_pipelines.worker.run import TASK_NAMES, run_task

__all__ = ["TASK_NAMES", "main", "run_task"]


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
