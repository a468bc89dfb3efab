"""Dagster's local worker runs yield the CPU to the review app's own tasks (GpuCompute.nice)."""

from __future__ import annotations

import os
import subprocess
import sys

from pearl_pipelines.defs.resources import GpuCompute
from pearl_pipelines.worker.run import NICE_ENV

PROBE = "from pearl_pipelines.worker.run import lower_priority; print(lower_priority())"


def niceness_of_a_task(env: dict[str, str]) -> int:
    """The niceness a worker process ends up at under `env` (a fresh interpreter: os.nice cannot be undone)."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1]) - os.nice(0)


def test_dagster_runs_lower_their_priority_and_the_apps_tasks_do_not() -> None:
    assert GpuCompute().local_env()[NICE_ENV] == "10"
    assert niceness_of_a_task(GpuCompute().local_env()) == 10
    assert niceness_of_a_task(GpuCompute(nice=3, env={"A": "b"}).local_env()) == 3
    # The review app's session launcher passes `compute.env` (no niceness): its tasks keep the app's priority.
    assert niceness_of_a_task({NICE_ENV: ""}) == 0
