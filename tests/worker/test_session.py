"""The session launcher (worker/session.py): a worker task run from outside a Dagster run, through Pipes.

Real processes: the `predict-aoi` task runs as `python -m pearl_pipelines.worker` (cold, and in a fork of the warm
worker server), on a tiny model and a small image in a temp PEARL_HOME. The k8s mode is in
tests/defs/test_compute_kmock.py (a fake API server).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pearl_pipelines.defs.resources import GpuCompute
from pearl_pipelines.worker.forkserver import WorkerServer
from pearl_pipelines.worker.session import WorkerTaskError, run_task
from tests.worker.aoi_data import aoi_extras, build_aoi_home, check_messages, check_outputs


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return build_aoi_home(tmp_path / "home")


@pytest.mark.parametrize("warm", [False, True], ids=["cold-process", "warm-fork"])
def test_progress_streams_in_order_then_the_summary(home: Path, warm: bool) -> None:
    compute = GpuCompute(env={"PEARL_HOME": str(home)})
    seen: list[Any] = []
    if warm:
        with WorkerServer(home):
            messages = run_task("predict-aoi", aoi_extras(home), on_message=seen.append, compute=compute)
    else:
        messages = run_task("predict-aoi", aoi_extras(home), on_message=seen.append, compute=compute)

    assert seen == messages  # every custom message reached the callback, in the order sent
    summary = check_messages(messages)
    assert summary["pid"] != os.getpid()
    assert summary["forked_from_warm_server"] is warm
    check_outputs(home)


def test_a_failing_task_raises_with_the_workers_message(home: Path) -> None:
    compute = GpuCompute(env={"PEARL_HOME": str(home)})
    broken = {**aoi_extras(home), "version_dir": "models/missing"}
    with pytest.raises(WorkerTaskError, match=r"predict-aoi.*FileNotFoundError: no model version checkpoint"):
        run_task("predict-aoi", broken, compute=compute)
    assert not (home / "out").exists()
