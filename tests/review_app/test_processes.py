"""Three app processes, one team: three uvicorn processes over one PostgreSQL label store, one Redis (events and
write limits), one S3 server (the published maps, read by the tile routes in place) and one PEARL_HOME serve the
same project as one service.

Labels go through all three; a job started through one is seen, with its progress, on a websocket of another; the
one-running-one-waiting limit holds across processes (a request joins the waiting job, or is refused); a process
killed with SIGKILL mid-job loses no acknowledged label and leaves no job running (another process fails it with a
message, and runs the project's next job); the others keep serving; a restore through one is the model of all.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import morecantile
import pytest
from sqlalchemy import select
from websockets.sync.client import connect

from pearl_pipelines.labels.app_state import JobRow
from pearl_pipelines.labels.pg_local import PostgresServer
from pearl_pipelines.labels.store import LabelRow, LabelStore
from pearl_pipelines.redis_local import RedisServer
from pearl_pipelines.settings import Settings
from review_app.jobs import HEARTBEAT_S, STALE_S
from tests.conftest import free_port
from tests.review_app.conftest import center, new_home, square
from tests.review_app.data import water_and_tree_points
from tests.review_app.servers import ready_project, uvicorn
from tests.s3_local import S3Server

BIG = 0.0045  # ~0.8 x 1 km: its inference takes seconds, long enough to queue more jobs behind it and to kill it


@pytest.fixture(scope="module")
def home(review_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return new_home(tmp_path_factory, review_assets)


class Cluster:
    def __init__(self, urls: list[str], processes: list[Any], store: LabelStore, s3: S3Server) -> None:
        self.urls, self.processes, self.store, self.s3 = urls, processes, store, s3

    def job(self, via: int, job_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.urls[via]}/api/jobs/{job_id}", timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def wait_job(self, via: int, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(via, job_id)
            if job["state"] in ("done", "failed"):
                return job
            time.sleep(0.1)
        raise TimeoutError(f"job {job_id} did not finish: {self.job(via, job_id)}")


@pytest.fixture
def cluster(
    home: Settings, postgres_server: PostgresServer, redis_server: RedisServer, s3_server: S3Server
) -> Iterator[Cluster]:
    store_url = postgres_server.new_database()
    redis_server.client().flushall()
    env = {
        "PEARL_EVENTS_URL": redis_server.url(1),
        "PEARL_RATE_LIMIT_STORAGE": redis_server.url(0),
        "PEARL_STORAGE_URL": s3_server.url("processes"),
        **s3_server.env(),
    }
    ports = [free_port() for _ in range(3)]
    with ExitStack() as stack:
        # All three start at once, as replicas of a Deployment do (one of them makes the demo project).
        processes = [stack.enter_context(uvicorn(home, port, store_url=store_url, env=env)) for port in ports]
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for url in urls:
            ready_project(url, 120)
        store = LabelStore(store_url)
        stack.callback(store.engine.dispose)
        yield Cluster(urls, processes, store, s3_server)


def _events(url: str, seen: list[dict[str, Any]], stop: threading.Event, connected: threading.Event) -> None:
    ws_url = url.replace("http://", "ws://") + "/api/projects/1/ws"
    with connect(ws_url, open_timeout=10) as socket:
        connected.set()
        while not stop.is_set():
            try:
                seen.append(json.loads(socket.recv(timeout=0.2)))
            except TimeoutError:
                continue


def test_three_processes_serve_one_project(cluster: Cluster, home: Settings) -> None:
    a, b, c = 0, 1, 2
    project = httpx.get(f"{cluster.urls[a]}/api/projects/1", timeout=10).json()
    lon, lat = center(project)

    # A websocket on B sees what every process does.
    seen: list[dict[str, Any]] = []
    stop, connected = threading.Event(), threading.Event()
    listener = threading.Thread(target=_events, args=(cluster.urls[b], seen, stop, connected), daemon=True)
    listener.start()
    assert connected.wait(10)

    try:
        # Labels through all three processes, each one acknowledged by one of them.
        small = httpx.post(
            f"{cluster.urls[c]}/api/projects/1/aois", json={"name": "small", "geometry": square(lon, lat, 0.002)}
        )
        assert small.status_code == 201, small.text
        aoi_id = small.json()["id"]
        inference = httpx.post(f"{cluster.urls[c]}/api/projects/1/aois/{aoi_id}/inference")
        assert inference.status_code == 202, inference.text
        assert cluster.wait_job(a, inference.json()["id"])["state"] == "done"  # started through C, followed on A
        places = water_and_tree_points(home, lon, lat)
        assert len(places) >= 4
        acknowledged: list[int] = []
        for n, (class_name, point) in enumerate(places):
            body = {
                "class_name": class_name,
                "geometry": {"type": "Point", "coordinates": list(point)},
                "aoi_id": aoi_id,
            }
            response = httpx.post(f"{cluster.urls[n % 3]}/api/projects/1/labels", json=body, timeout=10)
            assert response.status_code == 201, response.text
            acknowledged.append(int(response.json()["id"]))

        # A retrain through A: its events reach the websocket on B.
        retrain = httpx.post(f"{cluster.urls[a]}/api/projects/1/retrain", json={"aoi_id": aoi_id})
        assert retrain.status_code == 202, retrain.text
        first = cluster.wait_job(c, retrain.json()["id"])
        assert first["state"] == "done", first
        _wait_for(lambda: any(_is_job(e, first["id"], "done") for e in seen), "B's websocket sees A's retrain done")
        assert any(_is_job(e, first["id"], "running") for e in seen)
        layers = [e for e in seen if e["type"] == "prediction_updated" and e["aoi_id"] == aoi_id]
        assert layers

        # That map is in the object store, and every process serves its tiles from there (GDAL's /vsis3/).
        listed = cluster.s3.client().list_objects_v2(Bucket=cluster.s3.bucket, Prefix="processes/review/projects/1/")
        keys = [o["Key"] for o in listed.get("Contents", [])]
        version = layers[-1]["version"]
        assert any(k.endswith(f"v{version}/classes.tif") for k in keys), keys
        tiles = [_map_tile(cluster.urls[via], aoi_id, version, lon, lat) for via in (a, b, c)]
        assert tiles[0] == tiles[1] == tiles[2] and len(tiles[0]) > 100

        # A big AOI's inference through A runs for seconds; the limit holds across processes behind it.
        big = httpx.post(
            f"{cluster.urls[a]}/api/projects/1/aois", json={"name": "big", "geometry": square(lon, lat, BIG)}
        )
        assert big.status_code == 201, big.text
        started = httpx.post(f"{cluster.urls[a]}/api/projects/1/aois/{big.json()['id']}/inference")
        assert started.status_code == 202, started.text
        running = started.json()
        _wait_for(lambda: cluster.job(b, running["id"])["state"] == "running", "the big inference runs")
        waiting = httpx.post(f"{cluster.urls[b]}/api/projects/1/retrain", json={"aoi_id": aoi_id})
        assert waiting.status_code == 202, waiting.text
        assert waiting.json()["state"] == "queued"
        joined = httpx.post(f"{cluster.urls[c]}/api/projects/1/retrain", json={"aoi_id": aoi_id})
        assert joined.status_code == 202 and joined.json()["id"] == waiting.json()["id"]  # one retrain follows
        other = httpx.post(f"{cluster.urls[c]}/api/projects/1/aois/{aoi_id}/inference")
        assert other.status_code == 202 and other.json()["state"] == "queued"  # one inference waits ...
        refused = httpx.post(f"{cluster.urls[b]}/api/projects/1/aois/{big.json()['id']}/inference")
        assert refused.status_code == 429, refused.text  # ... and another AOI's is refused, by another process
        assert "already waiting" in refused.json()["detail"]

        # Labels keep coming through every process while A is killed in the middle of its inference.
        writing = _write_labels_during(cluster, places, aoi_id, acknowledged)
        cluster.processes[a].send_signal(signal.SIGKILL)
        cluster.processes[a].wait(10)
        writing()

        # A's job is failed with a message by another process, within the heartbeat's timeout; nothing stays running.
        killed = cluster.wait_job(b, running["id"], timeout=STALE_S + 4 * HEARTBEAT_S + 30)
        assert killed["state"] == "failed" and "process running this inference stopped" in killed["error"]
        _wait_for(lambda: any(e["type"] == "error" and e["job_id"] == running["id"] for e in seen), "error event")
        # The project's next jobs run on the survivors: the waiting retrain (B's) and inference (C's) finish.
        assert cluster.wait_job(c, waiting.json()["id"])["state"] == "done"
        assert cluster.wait_job(b, other.json()["id"])["state"] == "done"
        with cluster.store.session() as s:
            stuck = s.scalars(select(JobRow).where(JobRow.state.in_(("queued", "running")))).all()
            assert not stuck, [(j.id, j.kind, j.state) for j in stuck]

        # No acknowledged label lost; B and C keep serving reads and writes.
        with cluster.store.session() as s:
            stored = set(s.scalars(select(LabelRow.id).where(LabelRow.project_id == 1)))
        assert set(acknowledged) <= stored, sorted(set(acknowledged) - stored)
        for via in (b, c):
            labels = httpx.get(f"{cluster.urls[via]}/api/projects/1/labels", timeout=10).json()["features"]
            assert {int(f["id"]) for f in labels} == stored

        # A restore through C is the model of B too (the session state is shared).
        saved = httpx.post(f"{cluster.urls[b]}/api/projects/1/checkpoints", json={"name": "kept"})
        assert saved.status_code == 201, saved.text
        base = next(m for m in httpx.get(f"{cluster.urls[b]}/api/projects/1/checkpoints").json() if m["kind"] == "base")
        restored = httpx.post(f"{cluster.urls[c]}/api/projects/1/checkpoints/{base['id']}/restore")
        assert restored.status_code == 202, restored.text
        assert cluster.wait_job(b, restored.json()["id"])["state"] == "done"
        for via in (b, c):
            current = [m for m in httpx.get(f"{cluster.urls[via]}/api/projects/1/checkpoints").json() if m["current"]]
            assert [m["id"] for m in current] == [base["id"]]
    finally:
        stop.set()
        listener.join(5)


def _map_tile(url: str, aoi_id: int, version: int, lon: float, lat: float) -> bytes:
    """The AOI map's PNG tile at zoom 16 over lon/lat, through one process."""
    tile = morecantile.tms.get("WebMercatorQuad").tile(lon, lat, 16)
    path = f"/tiles/predictions/1/{aoi_id}/{version}/tiles/WebMercatorQuad/16/{tile.x}/{tile.y}.png"
    response = httpx.get(f"{url}{path}", timeout=30)
    assert response.status_code == 200, (path, response.text)
    return response.content


def _is_job(event: dict[str, Any], job_id: str, state: str) -> bool:
    return event.get("type") == "job" and event.get("id") == job_id and event.get("state") == state


def _wait_for(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise TimeoutError(what)


def _write_labels_during(cluster: Cluster, places: list[Any], aoi_id: int, acknowledged: list[int]) -> Any:
    """Writers posting labels through all three processes (until the returned `stop` is called); every one
    acknowledged is added to `acknowledged`. A request to the killed process fails: never acknowledged."""
    done = threading.Event()
    lock = threading.Lock()

    def writer(via: int) -> None:
        n = 0
        with httpx.Client(timeout=5) as client:
            while not done.is_set():
                class_name, point = places[n % len(places)]
                body = {
                    "class_name": class_name,
                    "geometry": {"type": "Point", "coordinates": list(point)},
                    "aoi_id": aoi_id,
                }
                n += 1
                try:
                    response = client.post(f"{cluster.urls[via]}/api/projects/1/labels", json=body)
                except httpx.HTTPError:
                    time.sleep(0.05)
                    continue
                if response.status_code == 201:
                    with lock:
                        acknowledged.append(int(response.json()["id"]))

    threads = [threading.Thread(target=writer, args=(via,), daemon=True) for via in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)

    def stop() -> None:
        time.sleep(0.5)
        done.set()
        for thread in threads:
            thread.join(10)

    return stop
