"""Abuse limits: writes per user (429 with Retry-After), and at most one running + one waiting job of each
expensive kind per project (the same request joins the waiting job; another is refused with 429)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pearl_pipelines.classes import load_schema
from pearl_pipelines.labels.accounts import Accounts
from pearl_pipelines.labels.app_state import AppState
from pearl_pipelines.labels.store import LabelStore, sqlite_url
from review_app.events import EventHub
from review_app.jobs import JobRunner
from review_app.rate_limits import TooManyRequests
from tests.review_app.conftest import new_home, wait_ready


@pytest.fixture(scope="module")
def limited(review_assets: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    from review_app.main import create_app

    settings = new_home(tmp_path_factory, review_assets).model_copy(update={"write_rate_limit": "3/minute"})
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


def test_writes_per_user_are_limited_reads_and_other_users_are_not(limited: TestClient) -> None:
    answers = [limited.post("/api/projects/1/labels/undo").status_code for _ in range(4)]
    assert answers[:3] == [200, 200, 200] and answers[3] == 429
    refused = limited.post("/api/projects/1/labels/undo")
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert "at most 3 per 1 minute" in refused.json()["detail"]
    assert limited.get("/api/projects/1/labels").status_code == 200  # reads are not counted
    accounts: Accounts = limited.app.state.services.accounts  # type: ignore[attr-defined]
    token = accounts.issue_token(accounts.user("script", "script"), "t", 1).token
    other = limited.post("/api/tokens", json={"name": "x"}, headers={"authorization": f"Bearer {token}"})
    assert other.status_code == 201  # another user has their own budget


def test_one_running_and_one_waiting_job_of_a_kind_per_project(tmp_path: Path) -> None:
    store = LabelStore(sqlite_url(tmp_path))
    for name in ("one", "two"):
        store.create_project(name, {}, load_schema("chesapeake4"), "models:/starter/1")
    runner = JobRunner(EventHub(), AppState(store), workers=2)
    release = threading.Event()
    try:
        running = runner.submit(1, "retrain", lambda ctx: str(release.wait(10)))
        while running.state != "running":
            threading.Event().wait(0.01)
        waiting = runner.submit(1, "retrain", lambda ctx: "second")
        assert runner.submit(1, "retrain", lambda ctx: "third") is waiting  # a burst joins the waiting retrain
        first_aoi = runner.submit(1, "inference", lambda ctx: "a", aoi_id=7)
        assert runner.submit(1, "inference", lambda ctx: "a again", aoi_id=7) is first_aoi
        with pytest.raises(TooManyRequests, match="already waiting in project 1"):
            runner.submit(1, "inference", lambda ctx: "b", aoi_id=8)
        assert runner.submit(2, "retrain", lambda ctx: "other project").project_id == 2  # per project
        assert runner.submit(1, "restore", lambda ctx: "restore").kind == "restore"  # not a limited kind
    finally:
        release.set()
        runner.shutdown()
