"""The warm worker server: tasks launched by Dagster Pipes run in a fork of it, with the launcher's stdio and env."""

from pathlib import Path

import dagster as dg
import pytest

from pearl_pipelines.defs.resources import GpuCompute
from pearl_pipelines.worker.__main__ import TASK_NAMES
from pearl_pipelines.worker.forkserver import WorkerServer, socket_path
from pearl_pipelines.worker.tasks import TASKS


@dg.asset
def probe(context: dg.AssetExecutionContext, compute: GpuCompute) -> dg.MaterializeResult:
    return compute.run(context, "probe", {"echo": "through the fork"}).get_materialize_result()


@dg.asset
def broken(context: dg.AssetExecutionContext, compute: GpuCompute) -> dg.MaterializeResult:
    return compute.run(context, "predict", {"no": "model"}).get_materialize_result()


def test_task_names_match_the_tasks() -> None:
    assert set(TASK_NAMES) == set(TASKS)


def test_tasks_run_in_the_warm_server_and_report_through_pipes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    compute = GpuCompute(env={"PEARL_HOME": str(home)})
    with WorkerServer(home):
        assert socket_path(home).exists()
        result = dg.materialize([probe], resources={"compute": compute})
        meta = result.asset_materializations_for_node("probe")[0].metadata
        assert meta["forked_from_warm_server"].value is True
        assert meta["echo"].value == "through the fork"
        assert meta["pearl_home"].value == str(home.resolve())  # the launcher's environment, not the server's

        failed = dg.materialize([broken], resources={"compute": compute}, raise_on_error=False)
        assert not failed.success
        # The task's exit code travels back through the launcher (its exception through Pipes, into the logs).
        (failure,) = [e for e in failed.all_events if e.is_step_failure]
        assert "failed with code 1" in str(failure.step_failure_data.error)
    assert not socket_path(home).exists()


def test_without_a_server_the_launcher_runs_the_task_itself(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    result = dg.materialize([probe], resources={"compute": GpuCompute(env={"PEARL_HOME": str(home)})})
    assert result.asset_materializations_for_node("probe")[0].metadata["forked_from_warm_server"].value is False


@pytest.fixture(autouse=True)
def _no_stray_socket(tmp_path: Path) -> None:
    assert not socket_path(tmp_path / "home").exists()
