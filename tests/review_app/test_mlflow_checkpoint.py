"""A saved checkpoint becomes an MLflow run and a registered model version (local sqlite tracking store)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import free_port
from tests.review_app.conftest import center, new_home, square, wait_job, wait_ready
from tests.review_app.data import class_places

pytestmark = pytest.mark.slow


def test_checkpoint_is_an_mlflow_model_version(
    review_assets: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    from review_app.main import create_app

    settings = new_home(tmp_path_factory, review_assets)
    monkeypatch.chdir(settings.home_abs)  # MLflow's default artifact root (./mlruns) lands in the test's home
    uri = f"sqlite:///{settings.home_abs / 'mlflow.db'}"
    settings = settings.model_copy(update={"mlflow_tracking_uri": uri, "dagster_port": free_port()})
    with TestClient(create_app(settings)) as client:
        project = wait_ready(client)  # the registry has no starter: the local copy is used
        aoi = client.post("/api/projects/1/aois", json={"geometry": square(*center(project), 0.0015)}).json()
        assert (
            wait_job(client, client.post(f"/api/projects/1/aois/{aoi['id']}/inference").json()["id"])["state"] == "done"
        )
        ring = aoi["geometry"]["coordinates"][0]
        bounds = (ring[0][0], ring[0][1], ring[2][0], ring[2][1])
        for name in ("water", "tree_canopy"):
            for place in class_places(settings, bounds, name, n=2):
                geometry = {"type": "Point", "coordinates": list(place[0])}
                assert (
                    client.post("/api/projects/1/labels", json={"class_name": name, "geometry": geometry}).status_code
                    == 201
                )
        assert wait_job(client, client.post("/api/projects/1/retrain", json={}).json()["id"])["state"] == "done"
        assert client.post("/api/projects/1/checkpoints", json={"name": "first"}).status_code == 201
        deadline = time.monotonic() + 120
        while not (saved := client.get("/api/projects/1/checkpoints").json()[0])["mlflow_version"]:
            assert time.monotonic() < deadline, saved
            time.sleep(0.5)
    mlflow = MlflowClient(uri)
    name = "pearl-review-demo-chesapeake-shoreline"
    version = mlflow.get_model_version(name, saved["mlflow_version"])
    assert version.tags["pearl.checkpoint"] == "first"
    run = mlflow.get_run(version.run_id)
    assert run.data.tags["pearl.parent_version_id"]  # lineage: the starter version it was retrained from
    assert "macro_f1" in run.data.metrics or run.data.params["n_labels"] == "4"
