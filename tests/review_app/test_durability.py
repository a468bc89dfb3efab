"""Durability: uvicorn killed with SIGKILL in the middle of a label burst loses no acknowledged label, on SQLite
and on PostgreSQL; after a restart the store, its undo log and the API agree. (Concurrent writers, tile readers,
retrains and undos: test_http_storm.py.)"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from pearl_pipelines.labels.store import LabelEventRow, LabelStore
from pearl_pipelines.settings import Settings
from tests.conftest import free_port
from tests.review_app.conftest import center, new_home, square
from tests.review_app.servers import ready_project, uvicorn

WRITERS = 6


@pytest.fixture(scope="module")
def home(review_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return new_home(tmp_path_factory, review_assets)


def test_sigkill_during_a_label_burst_loses_no_acknowledged_label(home: Settings, store_url: str) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with uvicorn(home, port, store_url=store_url) as process:
        project = ready_project(url)
        lon, lat = center(project)
        aoi = httpx.post(f"{url}/api/projects/1/aois", json={"name": "burst", "geometry": square(lon, lat, 0.002)})
        assert aoi.status_code == 201, aoi.text
        acknowledged: list[int] = []
        refused: list[int] = []
        stop = threading.Event()
        lock = threading.Lock()

        def writer(seed: int) -> None:
            rng = random.Random(seed)
            with httpx.Client(timeout=5) as client:
                while not stop.is_set():
                    point = [lon + rng.uniform(-0.0015, 0.0015), lat + rng.uniform(-0.0015, 0.0015)]
                    body = {"class_name": "water", "geometry": {"type": "Point", "coordinates": point}}
                    try:
                        response = client.post(f"{url}/api/projects/1/labels", json=body)
                    except httpx.HTTPError:
                        return  # killed mid-request: stored or not, it was never acknowledged
                    with lock:
                        (acknowledged if response.status_code == 201 else refused).append(
                            int(response.json()["id"]) if response.status_code == 201 else response.status_code
                        )

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(acknowledged) < 60 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)  # no shutdown, no flush: what was acknowledged must be on disk
        process.wait(timeout=10)
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    assert refused == [], refused
    assert len(acknowledged) >= 60 and len(set(acknowledged)) == len(acknowledged)

    port = free_port()
    with uvicorn(home, port, store_url=store_url):
        restarted = f"http://127.0.0.1:{port}"
        ready_project(restarted)
        served = [f["id"] for f in httpx.get(f"{restarted}/api/projects/1/labels").json()["features"]]
    store = LabelStore(store_url)
    try:
        stored = [row.id for row in store.list_labels(1)]
        with store.session() as s:  # the undo log holds exactly one "add" per stored label
            added = list(s.scalars(select(LabelEventRow.label_id).where(LabelEventRow.action == "add")))
    finally:
        store.engine.dispose()
    assert set(acknowledged) <= set(stored), f"lost: {sorted(set(acknowledged) - set(stored))}"
    assert len(stored) == len(set(stored)) and sorted(served) == sorted(stored)
    # At most one unacknowledged write per writer can have been committed just before the kill.
    assert len(stored) - len(acknowledged) <= WRITERS
    assert sorted(added) == sorted(stored)
    print(
        f"{store_url.split(':', maxsplit=1)[0]}: {len(acknowledged)} acknowledged, {len(stored)} stored after SIGKILL"
    )
