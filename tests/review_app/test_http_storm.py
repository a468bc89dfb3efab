"""Concurrency through uvicorn on SQLite and PostgreSQL, checked in the database: label writers, imagery and
prediction tile readers and a retrain at once (no 5xx, every acknowledged label stored once); and undos racing adds
and deletes (replaying label_events gives exactly the live labels, and the `undone` flags agree with the replay)."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import morecantile
import pytest
from sqlalchemy import select

from pearl_pipelines.labels.store import LabelEventRow, LabelStore
from pearl_pipelines.settings import Settings
from tests.conftest import free_port
from tests.review_app.conftest import center, new_home, square
from tests.review_app.servers import ready_project, uvicorn

CLASSES = ("water", "tree_canopy")


@pytest.fixture(scope="module")
def storm_home(review_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return new_home(tmp_path_factory, review_assets)


def wait_job(url: str, job_id: str, timeout: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/api/jobs/{job_id}", timeout=30).json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} did not finish: {job}")


def new_aoi(url: str, name: str, *, predicted: bool) -> tuple[dict[str, Any], tuple[float, float]]:
    lon, lat = center(ready_project(url))
    created = httpx.post(f"{url}/api/projects/1/aois", json={"name": name, "geometry": square(lon, lat, 0.002)})
    assert created.status_code == 201, created.text
    aoi_id = created.json()["id"]
    if predicted:
        job = httpx.post(f"{url}/api/projects/1/aois/{aoi_id}/inference", timeout=30).json()
        assert wait_job(url, job["id"])["state"] == "done"
    return httpx.get(f"{url}/api/projects/1/aois/{aoi_id}", timeout=30).json(), (lon, lat)


def tile_urls(url: str, tilejson_path: str, lon: float, lat: float) -> list[str]:
    """The zoom 16 and 17 tiles around (lon, lat) of one layer."""
    template = httpx.get(f"{url}{tilejson_path}", timeout=30).json()["tiles"][0]
    tms = morecantile.tms.get("WebMercatorQuad")
    tiles = tms.tiles(lon - 0.0015, lat - 0.0015, lon + 0.0015, lat + 0.0015, [16, 17])
    return [template.replace("{z}", str(t.z)).replace("{x}", str(t.x)).replace("{y}", str(t.y)) for t in tiles]


class Storm:
    """Threads hammering the app until `stop`; every response status and every transport error is recorded."""

    def __init__(self, url: str, lon: float, lat: float) -> None:
        self.url, self.lon, self.lat = url, lon, lat
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.statuses: dict[str, list[int]] = {}
        self.errors: list[str] = []
        self.acknowledged: list[int] = []
        self.threads: list[threading.Thread] = []

    def call(self, client: httpx.Client, kind: str, method: str, path: str, **kw: Any) -> httpx.Response | None:
        try:
            response = client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            with self.lock:
                self.errors.append(f"{kind}: {exc!r}")
            return None
        with self.lock:
            self.statuses.setdefault(kind, []).append(response.status_code)
        return response

    def spawn(self, target: Callable[..., None], *args: Any) -> None:
        self.threads.append(threading.Thread(target=target, args=args, daemon=True))

    def writer(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self.stop.is_set():
                point = [self.lon + rng.uniform(-0.0015, 0.0015), self.lat + rng.uniform(-0.0015, 0.0015)]
                body = {"class_name": rng.choice(CLASSES), "geometry": {"type": "Point", "coordinates": point}}
                response = self.call(client, "write", "POST", "/api/projects/1/labels", json=body)
                if response is not None and response.status_code == 201:
                    with self.lock:
                        self.acknowledged.append(int(response.json()["id"]))

    def reader(self, urls: list[str], seed: int) -> None:
        rng = random.Random(1000 + seed)
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self.stop.is_set():
                kind = "prediction tile" if "/tiles/predictions/" in (tile := rng.choice(urls)) else "imagery tile"
                self.call(client, kind, "GET", tile)

    def undoer(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self.stop.is_set():
                self.call(client, "undo", "POST", "/api/projects/1/labels/undo")
                time.sleep(0.02)

    def deleter(self, seed: int) -> None:
        rng = random.Random(2000 + seed)
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self.stop.is_set():
                with self.lock:
                    target = rng.choice(self.acknowledged) if self.acknowledged else None
                if target is not None:  # 404 when an undo or another delete got there first
                    self.call(client, "delete", "DELETE", f"/api/projects/1/labels/{target}")
                time.sleep(0.03)

    def __enter__(self) -> Storm:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in self.threads)

    def counts(self) -> dict[str, dict[int, int]]:
        return {k: {s: v.count(s) for s in sorted(set(v))} for k, v in self.statuses.items()}


def stored_labels(store_url: str) -> tuple[list[int], list[int], list[tuple[int, int, str, bool]]]:
    """(live label ids, all label ids, label_events as (id, label_id, action, undone) by id), from the database."""
    store = LabelStore(store_url)
    try:
        live = [row.id for row in store.list_labels(1)]
        every = [row.id for row in store.list_labels(1, include_deleted=True)]
        with store.session() as s:
            columns = (LabelEventRow.id, LabelEventRow.label_id, LabelEventRow.action, LabelEventRow.undone)
            query = select(*columns).where(LabelEventRow.project_id == 1).order_by(LabelEventRow.id)
            events = [(int(i), int(label), str(action), bool(undone)) for i, label, action, undone in s.execute(query)]
    finally:
        store.engine.dispose()
    return live, every, events


def replay(events: list[tuple[int, int, str, bool]]) -> tuple[set[int], set[int], int]:
    """Replay the undo log: (live label ids, ids of the add/delete events reverted, undos that reverted an action
    other than the newest one in log order). An undo event names its label; it reverts that label's newest
    not-yet-reverted add or delete (per label the log order is causal: an undo reads the action it reverts)."""
    live: set[int] = set()
    pending: list[tuple[int, int, str]] = []  # add/delete events not reverted yet, oldest first
    reverted: set[int] = set()
    out_of_order = 0
    for event_id, label_id, action, _ in events:
        if action in ("add", "delete"):
            (live.add if action == "add" else live.discard)(label_id)
            pending.append((event_id, label_id, action))
            continue
        assert action == "undo", action
        index = max((i for i, p in enumerate(pending) if p[1] == label_id), default=None)
        assert index is not None, f"undo event {event_id} of label {label_id} has nothing of that label to revert"
        out_of_order += index != len(pending) - 1
        reverted_id, _, reverted_action = pending.pop(index)
        reverted.add(reverted_id)
        (live.discard if reverted_action == "add" else live.add)(label_id)
    return live, reverted, out_of_order


def test_writers_tile_readers_and_a_retrain_at_once(storm_home: Settings, store_url: str) -> None:
    """4 label writers, 4 readers of imagery and prediction tiles, and a retrain (waited for) at once."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with uvicorn(storm_home, port, store_url=store_url):
        aoi, (lon, lat) = new_aoi(url, "storm", predicted=True)
        project = ready_project(url)
        urls = tile_urls(url, project["imagery"]["tilejson"]["true_color"], lon, lat)
        urls += tile_urls(url, aoi["prediction"]["tilejson"]["classes"], lon, lat)
        before = set(stored_labels(store_url)[1])
        storm = Storm(url, lon, lat)
        for i in range(4):
            storm.spawn(storm.writer, i)
            storm.spawn(storm.reader, urls, i)
        with storm:
            time.sleep(2)  # labels of both classes exist: the retrain has something to learn
            retrain = httpx.post(f"{url}/api/projects/1/retrain", json={}, timeout=60)
            assert retrain.status_code == 202, retrain.text
            job = wait_job(url, retrain.json()["id"])
            time.sleep(1)
        assert job["state"] == "done", job
    live, every, events = stored_labels(store_url)
    counts = storm.counts()
    print(f"{store_url.split(':', maxsplit=1)[0]}: {counts}, {len(storm.acknowledged)} acknowledged")
    assert storm.errors == [], storm.errors[:5]
    assert set(counts) == {"write", "imagery tile", "prediction tile"}, counts
    assert set(counts["write"]) == {201} and set(counts["imagery tile"]) == set(counts["prediction tile"]) == {200}
    assert len(storm.acknowledged) > 20 and len(storm.acknowledged) == len(set(storm.acknowledged))
    assert len(every) == len(set(every))  # no label row twice
    assert set(every) - before == set(storm.acknowledged)  # none lost, none that nobody was told about
    assert set(storm.acknowledged) <= set(live)
    added = [label for _, label, action, _ in events if action == "add"]
    assert sorted(added) == sorted(every)  # one "add" event per row


def test_undo_log_replays_to_the_live_labels_after_undos_race_adds(storm_home: Settings, store_url: str) -> None:
    """4 writers, 2 undoers and a deleter through HTTP; then the label_events replayed give the live label set."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with uvicorn(storm_home, port, store_url=store_url):
        _, (lon, lat) = new_aoi(url, "undo storm", predicted=False)
        storm = Storm(url, lon, lat)
        for i in range(4):
            storm.spawn(storm.writer, i)
        storm.spawn(storm.undoer)
        storm.spawn(storm.undoer)
        storm.spawn(storm.deleter, 0)
        with storm:
            time.sleep(5)
        served = {f["id"] for f in httpx.get(f"{url}/api/projects/1/labels", timeout=30).json()["features"]}
    live, every, events = stored_labels(store_url)
    counts = storm.counts()
    assert storm.errors == [], storm.errors[:5]
    assert set(counts["write"]) == {201} and set(counts["undo"]) == {200}, counts
    assert set(counts.get("delete", {})) <= {200, 404}, counts
    assert len(storm.acknowledged) == len(set(storm.acknowledged)) and set(storm.acknowledged) <= set(every)
    assert len(every) == len(set(every))
    undos = sum(1 for e in events if e[2] == "undo")
    assert undos > 10 and sum(1 for e in events if e[2] == "delete") > 0  # the storm did undo and delete
    replayed, reverted, out_of_order = replay(events)
    flagged = {event_id for event_id, _, action, undone in events if undone and action != "undo"}
    print(
        f"{store_url.split(':', maxsplit=1)[0]}: {counts}; {len(events)} events, {undos} undos "
        f"({out_of_order} reverted an action other than the newest in log order), {len(live)} live"
    )
    assert all(undone for _, _, action, undone in events if action == "undo")
    assert reverted == flagged  # the undone flags mark exactly the actions the undo events reverted
    assert replayed == set(live) == served
    if store_url.startswith("sqlite"):
        # One writer at a time: log order is commit order, so every undo reverted the newest action of the log.
        # (PostgreSQL assigns event ids at insert, before commit: an add still in flight when an undo commits has
        # a lower id than the undo's event, so log order and undo order differ there; per label they agree.)
        assert out_of_order == 0
