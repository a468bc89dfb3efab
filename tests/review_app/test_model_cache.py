"""Base models in memory and on disk: projects on the same base share one loaded model and one local copy, and
the loaded bases are bounded (PEARL_MODEL_CACHE_SIZE, least recently used first out, reloaded on demand).

52 projects once took 3.8 GB: each loaded its own copy of the starter, and each saved its own copy on disk.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from pearl_pipelines.ml.base_model import POINTER_FILE, project_base_file
from pearl_pipelines.ml.models import MODEL_FILE, load_model, save_model
from pearl_pipelines.settings import Settings
from review_app.services.model_cache import ModelCache
from review_app.workspace import ProjectPaths
from tests.review_app.conftest import new_home, wait_ready

OTHER_BASE = "models:/pearl-project-1@current"  # MLflow is down: its local copy under PEARL_HOME/models is used


@pytest.fixture(scope="module")
def home(review_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A home with room for one loaded base model, the tiny starter, and a second, different base model."""
    settings = new_home(tmp_path_factory, review_assets, with_model=False)
    starter = settings.models_dir / "starter-chesapeake9-fcn"
    shutil.copytree(review_assets / "models" / starter.name, starter)
    other = load_model(starter / MODEL_FILE)
    with torch.no_grad():
        other.head.bias.add_(0.5)  # another base: same architecture, other weights
    save_model(other, settings.models_dir / "pearl-project-1" / "current" / MODEL_FILE)
    return settings.model_copy(update={"model_cache_size": 1})


@pytest.fixture(scope="module")
def client(home: Settings) -> Iterator[TestClient]:
    from review_app.main import create_app

    with TestClient(create_app(home)) as client:
        wait_ready(client)
        yield client


def _cache(client: TestClient) -> ModelCache:
    return client.app.state.services.model_cache  # type: ignore[attr-defined,no-any-return]


def _create(client: TestClient, name: str, base_model: str | None = None) -> int:
    body: dict[str, Any] = {"name": name, "imagery": {"collection": "demo"}}
    if base_model is not None:
        body["base_model"] = base_model
    created = client.post("/api/projects", json=body)
    assert created.status_code == 201, created.text
    project_id = int(created.json()["id"])
    wait_ready(client, project_id)
    return project_id


def _model_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(MODEL_FILE) if p.is_file())


def test_projects_on_the_same_starter_share_one_loaded_model_and_one_copy(client: TestClient, home: Settings) -> None:
    second = _create(client, "same starter")
    cache = _cache(client)
    one, two = cache.require(1), cache.require(second)
    assert one.base is two.base
    # No project keeps a copy of its own: one copy of the starter besides the starter's own folder.
    for project_id in (1, second):
        assert not (ProjectPaths.of(home.home_abs, project_id).base_model_dir / MODEL_FILE).exists()
    starter = home.models_dir / "starter-chesapeake9-fcn" / MODEL_FILE
    copies = [p for p in _model_files(home.home_abs) if p.read_bytes() == starter.read_bytes()]
    assert len(copies) == 2, copies  # the starter's folder and the one shared copy


def test_the_loaded_base_models_are_bounded_and_reload_on_demand(client: TestClient) -> None:
    cache = _cache(client)
    first = cache.require(1).base
    other = _create(client, "other base", OTHER_BASE)
    assert cache.require(other).base is not first
    assert cache.loaded(1) is None  # cache size 1: the starter made room for the other base
    again = cache.require(1)
    assert again.base is not first and cache.loaded(other) is None
    for key, value in first.model.state_dict().items():
        assert torch.equal(again.base.model.state_dict()[key], value)
    # Evicted or not, every project is ready for the page: its base reloads when something needs it.
    for project_id in (1, other):
        assert client.get(f"/api/projects/{project_id}").json()["model"]["ready"]


def test_a_project_saved_with_a_copy_of_its_own_still_maps_with_it(client: TestClient, home: Settings) -> None:
    """A PEARL_HOME from before shared copies: the project's own copy (models/base/model.pt) is what it maps with."""
    project_id = _create(client, "legacy")
    services = client.app.state.services  # type: ignore[attr-defined]
    base_dir = ProjectPaths.of(home.home_abs, project_id).base_model_dir
    legacy = load_model(home.models_dir / "starter-chesapeake9-fcn" / MODEL_FILE)
    save_model(legacy, base_dir / MODEL_FILE, extra={"source": "models:/pearl-starter-chesapeake9/1"})
    (base_dir / POINTER_FILE).unlink()
    restarted = ModelCache(settings=home, store=services.store, states=services.states, hub=services.hub)
    base = restarted.require(project_id).base
    assert base.folder == base_dir
    assert project_base_file(home, base_dir) == base_dir / MODEL_FILE  # and the worker reads the same file
    for key, value in legacy.state_dict().items():
        assert torch.equal(base.model.state_dict()[key], value)
