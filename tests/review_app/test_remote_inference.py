"""The AOI forward pass runs in the worker, never in the web process (review_app/remote_inference.py).

The backbone of the app's own model class is made to fail in this (the app's) process; an AOI is then created
and predicted through the real API. The layer still appears, predicted by another process, and it is the map
the same model gives in-process.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from fastapi.testclient import TestClient
from shapely.geometry import shape

from pearl_pipelines.ml.base_model import project_base_file
from pearl_pipelines.ml.inference import predict
from pearl_pipelines.ml.models import LandcoverModel, load_model
from pearl_pipelines.settings import Settings
from review_app.workspace import ProjectPaths
from tests.review_app.conftest import center, square, wait_job


def _no_backbone_here(*_: Any, **__: Any) -> Any:
    raise AssertionError("the backbone ran in the web process")


def test_new_aoi_is_predicted_by_the_worker(
    client: TestClient, settings: Settings, project: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(LandcoverModel, "embed", _no_backbone_here)
    monkeypatch.setattr(LandcoverModel, "forward", _no_backbone_here)
    lon, lat = center(project)
    geometry = square(lon, lat, 0.002)
    created = client.post("/api/projects/1/aois", json={"name": "worker AOI", "geometry": geometry})
    assert created.status_code == 201, created.text
    aoi_id = created.json()["id"]
    started = client.post(f"/api/projects/1/aois/{aoi_id}/inference").json()
    job = wait_job(client, started["id"])
    assert job["state"] == "done", job
    pid = int(re.search(r"pid (\d+)", job["message"]).group(1))  # type: ignore[union-attr]
    assert pid != os.getpid()

    aoi = client.get(f"/api/projects/1/aois/{aoi_id}").json()
    assert aoi["prediction"]["version"] == 1 and aoi["prediction"]["embeddings"]
    paths = ProjectPaths.of(settings.home_abs, 1)
    with rasterio.open(paths.classes_path(aoi_id, 1)) as src:
        classes = src.read(1)
    valid = classes != 255
    assert valid.mean() > 0.5
    assert classes[valid].max() < len(project["classes"]) and len(np.unique(classes[valid])) >= 2
    assert (paths.embeddings_dir(aoi_id) / "embeddings.json").is_file()

    # The same model in this process (backbone restored) gives the same map.
    monkeypatch.undo()
    local = predict(
        load_model(project_base_file(settings, paths.base_model_dir)),  # the shared copy the project maps with
        client.app.state.services.states.imagery_path(1),  # type: ignore[attr-defined]
        tmp_path / "local",
        aoi=shape(geometry),
        aoi_crs="EPSG:4326",
    )
    with rasterio.open(local.classes_path) as src:
        expected = src.read(1)
    assert expected.shape == classes.shape
    assert (expected == classes).mean() > 0.99


def test_a_failed_worker_task_fails_the_job_with_its_message(
    client: TestClient, settings: Settings, project: dict[str, Any]
) -> None:
    lon, lat = center(project)
    created = client.post("/api/projects/1/aois", json={"name": "no imagery", "geometry": square(lon, lat, 0.001)})
    aoi_id = created.json()["id"]
    imagery = client.app.state.services.states.imagery_path(1)  # type: ignore[attr-defined]
    moved = imagery.with_name("moved.tif")
    imagery.rename(moved)
    try:
        job = wait_job(client, client.post(f"/api/projects/1/aois/{aoi_id}/inference").json()["id"])
    finally:
        moved.rename(imagery)
    assert job["state"] == "failed"
    assert "predict-aoi" in job["error"] and "mosaic.tif" in job["error"]
