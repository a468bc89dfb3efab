"""The session launcher (worker/session.py): a worker task run from outside a Dagster run, through Pipes.

Real processes: the `predict-aoi` task runs as `python -m pearl_pipelines.worker` (cold, and in a fork of the warm
worker server), on a tiny model and a small image in a temp PEARL_HOME.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import rasterio
from rasterio.warp import transform_bounds
from shapely.geometry import box, mapping

from pearl_pipelines.defs.resources import GpuCompute
from pearl_pipelines.ml.models import save_model
from pearl_pipelines.ml.versions import ModelVersion
from pearl_pipelines.worker.forkserver import WorkerServer
from pearl_pipelines.worker.session import WorkerTaskError, run_task
from tests.ml.conftest import CRS, blob_image, tiny_model, write_image

SIZE = 900  # pixels a side: several 512 px windows


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    model = tiny_model("fcn")
    save_model(model, home / "models" / "base" / "model.pt")
    ModelVersion.from_model(model, "v-test").save(home / "models" / "v1")
    write_image(home / "imagery.tif", blob_image(SIZE, SIZE, seed=3))
    return home


def extras(home: Path) -> dict[str, Any]:
    with rasterio.open(home / "imagery.tif") as src:
        lonlat = transform_bounds(CRS, "EPSG:4326", *src.bounds)
    return {
        "base_model": "models/base/model.pt",  # relative to PEARL_HOME, as the review app passes them
        "version_dir": "models/v1",
        "imagery": "imagery.tif",
        "aoi": mapping(box(*lonlat)),
        "out_dir": "out",
        "embeddings_dir": "cache",
        "model_id": "v-test",
        "progress_interval_s": 0,
    }


@pytest.mark.parametrize("warm", [False, True], ids=["cold-process", "warm-fork"])
def test_progress_streams_in_order_then_the_summary(home: Path, warm: bool) -> None:
    compute = GpuCompute(env={"PEARL_HOME": str(home)})
    seen: list[Any] = []
    if warm:
        with WorkerServer(home):
            messages = run_task("predict-aoi", extras(home), on_message=seen.append, compute=compute)
    else:
        messages = run_task("predict-aoi", extras(home), on_message=seen.append, compute=compute)

    assert seen == messages  # every custom message reached the callback, in the order sent
    progress = [m for m in messages if m["kind"] == "progress"]
    assert len(progress) >= 3
    done = [m["done"] for m in progress]
    assert done == sorted(done) and len(set(done)) == len(done)
    assert done[-1] == progress[-1]["total"]
    summary = messages[-1]
    assert summary["kind"] == "summary"
    assert summary["pid"] != os.getpid()
    assert summary["forked_from_warm_server"] is warm
    assert summary["windows"] == progress[-1]["total"]
    with rasterio.open(home / "out" / "classes.tif") as classes:
        assert classes.read(1).size > 0.8 * SIZE * SIZE
    assert (home / "cache" / "embeddings.json").is_file()


def test_a_failing_task_raises_with_the_workers_message(home: Path) -> None:
    compute = GpuCompute(env={"PEARL_HOME": str(home)})
    broken = {**extras(home), "version_dir": "models/missing"}
    with pytest.raises(WorkerTaskError, match=r"predict-aoi.*FileNotFoundError: no model version checkpoint"):
        run_task("predict-aoi", broken, compute=compute)
    assert not (home / "out").exists()
