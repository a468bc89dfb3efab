"""The app starts from settings alone even when nothing exists yet, and says what is missing instead of failing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from pearl_pipelines.settings import Settings
from tests.conftest import free_port
from tests.review_app.conftest import center, new_home, square


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """An empty PEARL_HOME: no catalog, no model, MLflow unreachable."""
    from review_app.main import create_app

    home = tmp_path_factory.mktemp("bare_home")
    settings = Settings(home=home, mlflow_port=free_port(), dagster_port=free_port())
    with TestClient(create_app(settings)) as client:
        yield client


def _settled(client: TestClient) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        project = client.get("/api/projects/1").json()
        if project["imagery"]["state"] != "building" and project["model"]["message"] != "loading the base model...":
            return project
        time.sleep(0.1)
    raise TimeoutError(project)


def test_empty_home_starts_and_explains(bare: TestClient) -> None:
    project = _settled(bare)
    assert project["name"].startswith("Demo")
    assert project["imagery"]["state"] == "missing"
    assert "pearl generate --regions demo" in project["imagery"]["message"]
    assert not project["model"]["ready"]
    assert "no model yet" in project["model"]["message"] and "make demo" in project["model"]["message"]
    page = bare.get("/")
    assert page.status_code == 200 and "<html" in page.text.lower()


def test_nothing_to_map_without_imagery_or_model(bare: TestClient) -> None:
    response = bare.post("/api/projects/1/aois", json={"geometry": square(-76.42, 38.97, 0.001)})
    assert response.status_code == 409 and "imagery is not ready" in response.json()["detail"]
    response = bare.post("/api/projects/1/retrain", json={})
    assert response.status_code == 409 and "no model yet" in response.json()["detail"]


def test_websocket_of_unknown_project_is_closed(bare: TestClient) -> None:
    with pytest.raises(WebSocketDisconnect) as closed, bare.websocket_connect("/api/projects/42/ws") as ws:
        ws.receive_json()
    assert closed.value.code == 4404


def test_model_found_later_is_picked_up(
    review_assets: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Imagery present, model trained after the app started: the next look at the project finds it."""
    from review_app.main import create_app
    from review_app.services import model_cache

    monkeypatch.setattr(model_cache, "MODEL_RETRY_S", 0.5)  # 10 s in the app
    settings = new_home(tmp_path_factory, review_assets, with_model=False)
    with TestClient(create_app(settings)) as client:
        project = _settled(client)
        assert project["imagery"]["state"] == "ready" and not project["model"]["ready"]
        (settings.home_abs / "models").symlink_to(review_assets / "models")
        time.sleep(0.6)
        deadline = time.monotonic() + 30
        while not client.get("/api/projects/1").json()["model"]["ready"]:
            assert time.monotonic() < deadline, "the model was not picked up"
            time.sleep(0.2)
        created = client.post("/api/projects/1/aois", json={"geometry": square(*center(project), 0.001)})
        assert created.status_code == 201
