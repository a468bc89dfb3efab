"""A project's base model is a registered model reference the caller may use, never a file on the server.

`POST /api/projects` once took `base_model` as a path and the app unpickled that file: any signed-in user could run
code on the server, learn whether a file exists, or load another project's model. Here every such value is
refused with one 422 that reveals nothing (no path, no "exists"), the planted files never run, and the references
a caller may use (a starter; the registered model of a project they have a role in) are accepted.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from pearl_pipelines.labels.accounts import Accounts, Role
from pearl_pipelines.labels.store import LabelStore
from pearl_pipelines.ml.models import MODEL_FILE
from pearl_pipelines.settings import Settings
from tests.review_app.conftest import new_home, oidc, wait_ready
from tests.review_app.idp import Issuer

STARTER = "models:/pearl-starter-chesapeake9@starter"
REFUSED_FOR_SURE = "models:/no-such-model@champion"


class RunsCode:
    """Unpickling this touches `marker` (os.system)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def copy_of_home(tmp_path_factory: pytest.TempPathFactory, review_assets: Path) -> Settings:
    """A PEARL_HOME with its own models folder (a copy of the tiny starter), so files can be planted in it."""
    settings = new_home(tmp_path_factory, review_assets, with_model=False)
    name = "starter-chesapeake9-fcn"
    shutil.copytree(review_assets / "models" / name, settings.models_dir / name)
    return settings


@pytest.fixture(scope="module")
def home(review_assets: Path, tmp_path_factory: pytest.TempPathFactory, issuer: Issuer) -> Settings:
    base = copy_of_home(tmp_path_factory, review_assets)
    return oidc(base, issuer)


@pytest.fixture(scope="module")
def marker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("marker") / "pwned"


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory, marker: Path) -> Path:
    """A code-running pickle outside PEARL_HOME, e.g. one a user uploaded somewhere on the server."""
    path = tmp_path_factory.mktemp("upload") / MODEL_FILE
    torch.save({"spec": RunsCode(marker), "state_dict": {}, "extra": {}}, path)
    return path


@pytest.fixture(scope="module")
def app(home: Settings, outside: Path, marker: Path) -> Iterator[TestClient]:
    from review_app.main import create_app

    # The same pickle wherever an old loader would have looked for the values tried below.
    for where in (
        home.models_dir / "evil",
        home.home_abs,
        home.models_dir / "pearl-project-2" / "current",
        home.models_dir / "no-such-model" / "champion",
        home.models_dir / "pearl-starter-nosuch" / "starter",
    ):
        where.mkdir(parents=True, exist_ok=True)
        shutil.copy(outside, where / MODEL_FILE)
    shutil.copy(outside, home.home_abs / "evil.pt")
    with TestClient(create_app(home)) as client:
        yield client


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def people(app: TestClient, issuer: Issuer) -> dict[str, dict[str, str]]:
    """owner and viewer of the demo project (1), a stranger (no role anywhere), `other` who owns project 2."""
    accounts: Accounts = app.app.state.services.accounts  # type: ignore[attr-defined]
    headers = {name: _bearer(issuer.token(name)) for name in ("owner", "viewer", "stranger", "other")}
    for name, role in (("owner", Role.owner), ("viewer", Role.viewer)):
        accounts.set_role(1, accounts.user(issuer.subject(name), name), role)
    wait_ready(app, headers=headers["owner"])
    created = app.post("/api/projects", json=_body("other's", STARTER), headers=headers["other"])
    assert created.status_code == 201, created.text
    assert created.json()["id"] == 2
    return headers


def _body(name: str, base_model: str) -> dict[str, Any]:
    return {"name": name, "imagery": {"collection": "demo"}, "base_model": base_model}


def _store(app: TestClient) -> LabelStore:
    return app.app.state.services.store  # type: ignore[attr-defined,no-any-return]


def _settle(app: TestClient, project_id: int, headers: dict[str, str]) -> None:
    """Wait until a project's background model load finished, one way or the other."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        model = app.get(f"/api/projects/{project_id}", headers=headers).json()["model"]
        if model["ready"] or "loading" not in model["message"]:
            return
        time.sleep(0.1)


REFUSED = {
    "absolute path": "{outside}",
    "relative path": "evil/model.pt",
    "relative folder": "evil",
    "parent folder": "../evil.pt",
    "file url": "file://{outside}",
    "other project": "models:/pearl-project-2@current",
    "other project, by version": "models:/pearl-project-2/1",
    "other project, padded id": "models:/pearl-project-02@current",
    "no such project": "models:/pearl-project-999@current",
    "unregistered name": "models:/no-such-model@champion",
    "unknown starter": "models:/pearl-starter-nosuch@starter",
    "alias that climbs": "models:/pearl-starter-chesapeake9@../../evil",
    "bare name": "models:/pearl-starter-chesapeake9",
    "empty": "",
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_base_model_that_is_not_a_reference_the_caller_may_use_is_refused_alike(
    app: TestClient, people: dict[str, dict[str, str]], home: Settings, outside: Path, marker: Path, case: str
) -> None:
    ref = REFUSED[case].format(outside=outside)
    marker.unlink(missing_ok=True)
    before = len(_store(app).list_projects())
    response = app.post("/api/projects", json=_body(f"try {case}", ref), headers=people["owner"])
    if response.status_code == 201:  # what the old code did: created it and loaded the file in the background
        _settle(app, response.json()["id"], people["owner"])
    assert not marker.exists(), f"{ref!r} ran code on the server"
    assert response.status_code == 422, response.text
    assert len(_store(app).list_projects()) == before
    detail = response.json()["detail"]
    # One answer for every refusal: it cannot tell a missing file or model from one that is not the caller's.
    baseline = app.post("/api/projects", json=_body("baseline", REFUSED_FOR_SURE), headers=people["owner"])
    assert baseline.status_code == 422 and baseline.json()["detail"] == detail
    assert "models:/<name>@<alias>" in detail  # it says what is accepted
    for secret in (str(home.home_abs), str(outside.parent), "evil", "exist", "not found", "no model file"):
        assert secret not in detail, (secret, detail)


def test_a_stranger_may_not_name_a_project_model(app: TestClient, people: dict[str, dict[str, str]]) -> None:
    for ref in ("models:/pearl-project-1@current", "models:/pearl-project-2@current"):
        response = app.post("/api/projects", json=_body("stranger's", ref), headers=people["stranger"])
        assert response.status_code == 422, response.text
        baseline = app.post("/api/projects", json=_body("b", REFUSED_FOR_SURE), headers=people["stranger"])
        assert response.json()["detail"] == baseline.json()["detail"]


def test_a_starter_reference_is_accepted(app: TestClient, people: dict[str, dict[str, str]]) -> None:
    for ref in (STARTER, "models:/pearl-starter-chesapeake9/1", "models:/pearl-starter-chesapeake4@champion"):
        created = app.post("/api/projects", json=_body(f"starter {ref}", ref), headers=people["stranger"])
        assert created.status_code == 201, created.text
        assert created.json()["model"]["base_model"] == ref


def test_the_model_of_a_project_the_caller_has_a_role_in_is_accepted(
    app: TestClient, people: dict[str, dict[str, str]], marker: Path
) -> None:
    for who, ref in (("owner", "models:/pearl-project-1@current"), ("viewer", "models:/pearl-project-1/3")):
        created = app.post("/api/projects", json=_body(f"{who}'s on 1", ref), headers=people[who])
        assert created.status_code == 201, created.text
        _settle(app, created.json()["id"], people[who])
        model = app.get(f"/api/projects/{created.json()['id']}", headers=people[who]).json()["model"]
        # MLflow is down and project 1 has no local copy: not found, and the status names no server path.
        assert not model["ready"] and str(app.app.state.services.settings.home_abs) not in model["message"]  # type: ignore[attr-defined]
    assert not marker.exists()
