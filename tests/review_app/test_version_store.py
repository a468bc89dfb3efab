"""MLflow is the review app's version store: every finished version is a version of `pearl-project-<id>` with its
lineage; checkpoints are aliases; versions made while MLflow is down are logged when it comes back; a version no
longer cached locally is restored from MLflow. A real MLflow server on loopback, started mid-test."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pearl_pipelines.labels.store import LabelStore
from pearl_pipelines.layout import ProjectPaths
from pearl_pipelines.services import mlflow_server
from review_app.services import version_store
from tests.conftest import free_port
from tests.review_app.conftest import center, new_home, square, wait_job, wait_ready
from tests.review_app.data import class_places

pytestmark = pytest.mark.slow
NAME = "pearl-project-1"


def _until(what: Callable[[], Any], timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := what()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)
    return found


def _models(client: TestClient) -> dict[int, dict[str, Any]]:
    return {m["id"]: m for m in client.get("/api/projects/1/checkpoints", params={"all_versions": True}).json()}


def _retrain(client: TestClient) -> None:
    assert wait_job(client, client.post("/api/projects/1/retrain", json={}).json()["id"])["state"] == "done"


def test_versions_live_in_mlflow_with_lineage_and_catch_up_after_an_outage(
    review_assets: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    from review_app.main import create_app

    monkeypatch.setattr(version_store, "RETRY_S", 0.5)
    monkeypatch.setattr(version_store, "KEEP_LOCAL", 1)
    settings = new_home(tmp_path_factory, review_assets)
    port = free_port()
    settings = settings.model_copy(update={"mlflow_port": port})  # nothing listens there yet: MLflow is down
    store = LabelStore(settings.resolved_label_store_url)
    with TestClient(create_app(settings)) as client:
        project = wait_ready(client)
        aoi = client.post("/api/projects/1/aois", json={"geometry": square(*center(project), 0.0015)}).json()
        job = client.post(f"/api/projects/1/aois/{aoi['id']}/inference").json()
        assert wait_job(client, job["id"])["state"] == "done"
        ring = aoi["geometry"]["coordinates"][0]
        bounds = (ring[0][0], ring[0][1], ring[2][0], ring[2][1])

        def label(name: str, n: int) -> None:
            for place in class_places(settings, bounds, name, n=n):
                body = {"class_name": name, "geometry": {"type": "Point", "coordinates": list(place[0])}}
                assert client.post("/api/projects/1/labels", json=body).status_code == 201

        label("water", 2)
        label("tree_canopy", 2)
        first_digest = store.label_set_digest(1)
        _retrain(client)  # MLflow down: the app maps with v1 all the same, and v1 waits
        assert _models(client)[1]["mlflow_version"] is None
        assert client.get("/api/projects/1").json()["model"]["ready"]

        with mlflow_server(tmp_path_factory.mktemp("mlflow"), port):
            # Catch-up: v1 is logged without anything asking for it again.
            v1 = _until(lambda: _models(client)[1]["mlflow_version"])
            label("low_vegetation", 2)
            second_digest = store.label_set_digest(1)
            _retrain(client)
            v2 = _until(lambda: _models(client)[2]["mlflow_version"])
            assert client.post("/api/projects/1/checkpoints", json={"name": "First map!"}).status_code == 201
            # Names that differ only in case or punctuation would share an alias: refused like a duplicate.
            assert client.post("/api/projects/1/checkpoints", json={"name": "first map"}).status_code == 422
            mlflow = MlflowClient(settings.resolved_mlflow_uri)
            alias = _until(lambda: mlflow.get_registered_model(NAME).aliases.get("checkpoint-first-map"))
            assert alias == v2
            assert mlflow.get_model_version_by_alias(NAME, "current").version == v2

            # Lineage: parent, both label-set digests, strategy, source, the base it sits on; the run has metrics.
            first, second = mlflow.get_model_version(NAME, v1), mlflow.get_model_version(NAME, v2)
            assert first.tags["pearl.source"] == second.tags["pearl.source"] == "review-app"
            assert (first.tags["pearl.label_store_digest"], second.tags["pearl.label_store_digest"]) == (
                first_digest,
                second_digest,
            )
            assert second.tags["pearl.parent_model"] == f"models:/{NAME}/{v1}"
            assert second.tags["pearl.parent_version_id"] == first.tags["pearl.version_id"]
            assert first.tags["pearl.label_set_digest"].startswith("ls-")
            assert second.tags["pearl.strategy"] == "logistic_regression"
            assert second.tags["pearl.base_model"] == project["model"]["base_model"]  # no starter registered here
            run = mlflow.get_run(second.run_id)
            assert run.data.params["n_labels"] == "6"
            assert {"accuracy", "macro_f1"} <= set(run.data.metrics) or run.data.params.get("strategy")

            # Only a small local cache: v1 is neither recent, current nor named, and MLflow has it.
            paths = ProjectPaths.of(settings.home_abs, 1)
            assert _until(lambda: not paths.version_dir(1).exists())
            assert paths.version_dir(2).is_dir()

            # Restoring v1 reads it back from MLflow, maps with it, and `current` follows.
            layer = client.get(f"/api/projects/1/aois/{aoi['id']}").json()
            restore = client.post("/api/projects/1/checkpoints/1/restore").json()
            assert wait_job(client, restore["id"])["state"] == "done"
            assert (paths.version_dir(1) / "version.json").is_file()
            assert client.get("/api/projects/1").json()["model"]["current_version"] == 1
            after = client.get(f"/api/projects/1/aois/{aoi['id']}").json()
            assert after["prediction"]["version"] > layer["prediction"]["version"]
            _until(lambda: mlflow.get_model_version_by_alias(NAME, "current").version == v1)
            assert len(mlflow.search_model_versions(f"name = '{NAME}'")) == 2  # a restore makes no new version

        # MLflow gone again: a version cached nowhere but MLflow cannot be restored: a clear 409, nothing changes.
        shutil.rmtree(paths.version_dir(1))
        refused = client.post("/api/projects/1/checkpoints/1/restore")
        assert refused.status_code == 409 and "MLflow" in refused.json()["detail"]
    store.engine.dispose()
