"""Review-app fixtures: an isolated PEARL_HOME per module (own label DB and review state) that shares the
session's small demo catalog and one tiny starter model; MLflow points at a port nobody listens on, so the
app takes the local-model fallback exactly as it does on a laptop without MLflow.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pearl_pipelines.redis_local import RedisServer
from pearl_pipelines.settings import Settings
from tests.conftest import SmallCatalog, free_port
from tests.review_app.data import build_tiny_model
from tests.review_app.idp import AUDIENCE, Issuer

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "review_app"


@pytest.fixture(scope="session")
def review_assets(small_catalog: SmallCatalog, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """catalog/ (the shared small catalog) and models/ (the tiny starter model), built once per session."""
    root = tmp_path_factory.mktemp("review_assets")
    (root / "catalog").symlink_to(small_catalog.catalog_dir)
    build_tiny_model(Settings(home=root, mlflow_port=free_port()))
    return root


def new_home(tmp_path_factory: pytest.TempPathFactory, assets: Path, *, with_model: bool = True) -> Settings:
    home = tmp_path_factory.mktemp("review_home")
    (home / "catalog").symlink_to(assets / "catalog")
    if with_model:
        (home / "models").symlink_to(assets / "models")
    # Nothing listens on these ports: no MLflow (local model fallback), no Dagster (label runs logged, not sent).
    # Tests write faster than any mapper clicks: the per-user write limit is tested on its own (test_limits.py).
    return Settings(home=home, mlflow_port=free_port(), dagster_port=free_port(), write_rate_limit="1000/second")


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    """A real OpenID Connect issuer on loopback (tests/review_app/idp.py), one per test module."""
    issuer = Issuer()
    yield issuer
    issuer.close()


def oidc(settings: Settings, issuer: Issuer, **more: Any) -> Settings:
    """`settings` in oidc mode, trusting `issuer`'s tokens for the test audience (with a fresh secret)."""
    update = {"auth_mode": "oidc", "oidc_issuer": issuer.url, "oidc_audience": AUDIENCE}
    return settings.model_copy(update={**update, "auth_secret": secrets.token_urlsafe(48), **more})


def wait_ready(
    client: TestClient, project_id: int = 1, timeout: float = 60.0, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        project = client.get(f"/api/projects/{project_id}", headers=headers).json()
        if project["imagery"]["state"] == "ready" and project["model"]["ready"]:
            return project
        if project["imagery"]["state"] == "error":
            raise AssertionError(project["imagery"]["message"])
        time.sleep(0.1)
    raise TimeoutError(f"project {project_id} not ready: {project}")


def wait_job(client: TestClient, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} did not finish: {job}")


@pytest.fixture(scope="module")
def settings(review_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return new_home(tmp_path_factory, review_assets)


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    from review_app.main import create_app

    with TestClient(create_app(settings)) as test_client:
        wait_ready(test_client)
        yield test_client


@pytest.fixture(scope="module")
def project(client: TestClient) -> dict[str, Any]:
    return client.get("/api/projects/1").json()


def square(lon: float, lat: float, d: float) -> dict[str, Any]:
    ring = [[lon - d, lat - d], [lon + d, lat - d], [lon + d, lat + d], [lon - d, lat + d], [lon - d, lat - d]]
    return {"type": "Polygon", "coordinates": [ring]}


def center(project: dict[str, Any]) -> tuple[float, float]:
    west, south, east, north = project["imagery"]["bounds"]
    return (west + east) / 2, (south + north) / 2


@pytest.fixture(scope="module")
def aoi(client: TestClient, project: dict[str, Any]) -> dict[str, Any]:
    """An AOI (~350 x 450 m) at the middle of the imagery, predicted (embeddings cached)."""
    lon, lat = center(project)
    created = client.post("/api/projects/1/aois", json={"name": "test AOI", "geometry": square(lon, lat, 0.002)})
    assert created.status_code == 201, created.text
    job = client.post(f"/api/projects/1/aois/{created.json()['id']}/inference").json()
    assert wait_job(client, job["id"])["state"] == "done"
    return client.get(f"/api/projects/1/aois/{created.json()['id']}").json()


def follow_job(client: TestClient, path: str, body: dict[str, Any] | None, on_partial: Any = None) -> list[dict]:
    """POST `body` to `path` (a job: inference, retrain) and follow the websocket to the job's end; its events
    (`t`: seconds since the request). `on_partial(event)` is called on each partial layer as it arrives."""
    events: list[dict[str, Any]] = []
    with client.websocket_connect("/api/projects/1/ws") as ws:
        assert ws.receive_json()["type"] == "hello"
        started = time.perf_counter()
        response = client.post(path, json=body)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        while True:
            event = ws.receive_json()
            event["t"] = time.perf_counter() - started
            events.append(event)
            if event["type"] == "prediction_updated" and event["partial"] and on_partial is not None:
                on_partial(event)
            if event["type"] == "job" and event["id"] == job_id and event["state"] in ("done", "failed"):
                return events


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on loopback (pearl_pipelines/redis_local.py); skipped where it is not installed, failed
    instead when PEARL_REQUIRE_REDIS is set (make test in CI)."""
    binary = RedisServer.find()
    if binary is None:
        message = "redis-server not found: apt-get install redis-server"
        if os.environ.get("PEARL_REQUIRE_REDIS", "") not in ("", "0"):
            pytest.fail(f"{message} (PEARL_REQUIRE_REDIS is set)", pytrace=False)
        pytest.skip(message)
    server = RedisServer(binary, free_port()).start()
    try:
        yield server
    finally:
        server.cleanup()
