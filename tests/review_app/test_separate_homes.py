"""Two app processes with disks of their own (each its own PEARL_HOME, as pods with scratch volumes) serve one project
over one PostgreSQL label store, one Redis and one S3 server (PEARL_STORAGE_URL): what one writes that the other reads
goes through the store. Model versions are uploaded before the session state names them and fetched where missing;
an AOI's embedding cache is uploaded in chunks when inference completes it and downloaded by a process without it.

A predicts an AOI; B takes the labels and retrains from A's cache (downloaded: B never embedded it); both serve the
new map's tiles, the same bytes (A never wrote that version); the version is in the bucket; a restore through A of
B's version works (A fetches it)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import morecantile
import pytest

from pearl_pipelines.labels.pg_local import PostgresServer
from pearl_pipelines.layout import cache_complete
from pearl_pipelines.redis_local import RedisServer
from pearl_pipelines.settings import Settings
from tests.conftest import free_port
from tests.review_app.conftest import center, new_home, square
from tests.review_app.data import water_and_tree_points
from tests.review_app.servers import log_path, ready_project, uvicorn
from tests.s3_local import S3Server

PREFIX = "separate"


class Pods:
    def __init__(self, urls: list[str], homes: list[Settings], s3: S3Server) -> None:
        self.urls, self.homes, self.s3 = urls, homes, s3

    def wait_job(self, via: int, job_id: str, timeout: float = 180.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = httpx.get(f"{self.urls[via]}/api/jobs/{job_id}", timeout=10)
            assert response.status_code == 200, response.text
            job = response.json()
            if job["state"] in ("done", "failed"):
                return job
            time.sleep(0.1)
        raise TimeoutError(f"job {job_id} did not finish")

    def keys(self, under: str) -> list[str]:
        client, found, token = self.s3.client(), [], None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.s3.bucket, "Prefix": f"{PREFIX}/{under}"}
            if token:
                kwargs["ContinuationToken"] = token
            page = client.list_objects_v2(**kwargs)
            found += [o["Key"][len(PREFIX) + 1 :] for o in page.get("Contents", [])]
            token = page.get("NextContinuationToken")
            if not token:
                return found

    def logs(self) -> str:
        return "\n".join(
            log_path(h, int(u.rsplit(":", 1)[1])).read_text()[-4000:]
            for h, u in zip(self.homes, self.urls, strict=True)
        )


@pytest.fixture
def pods(
    review_assets: Path,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: PostgresServer,
    redis_server: RedisServer,
    s3_server: S3Server,
) -> Iterator[Pods]:
    homes = [new_home(tmp_path_factory, review_assets) for _ in range(2)]
    assert homes[0].home_abs != homes[1].home_abs
    with start_pods(homes, postgres_server, redis_server, s3_server) as started:
        yield started


@contextlib.contextmanager
def start_pods(
    homes: list[Settings], postgres_server: PostgresServer, redis_server: RedisServer, s3_server: S3Server
) -> Iterator[Pods]:
    """An app process per home on one new PostgreSQL database, one Redis and one S3 prefix. A first: it makes the
    project, builds the imagery mosaic on its disk and publishes it to the store; B then finds the imagery ready and
    builds none: it reads A's mosaic in the store."""
    store_url = postgres_server.new_database()
    redis_server.client().flushall()
    env = {
        "PEARL_EVENTS_URL": redis_server.url(1),
        "PEARL_RATE_LIMIT_STORAGE": redis_server.url(0),
        "PEARL_STORAGE_URL": s3_server.url(PREFIX),
        **s3_server.env(),
    }
    ports = [free_port() for _ in homes]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    with ExitStack() as stack:
        for url, home, port in zip(urls, homes, ports, strict=True):
            process = stack.enter_context(uvicorn(home, port, store_url=store_url, env=env))
            ready_project(url, 120, process=process, log=log_path(home, port))
        yield Pods(urls, homes, s3_server)


def _tile(url: str, aoi_id: int, version: int, lon: float, lat: float) -> bytes:
    tile = morecantile.tms.get("WebMercatorQuad").tile(lon, lat, 16)
    path = f"/tiles/predictions/1/{aoi_id}/{version}/tiles/WebMercatorQuad/16/{tile.x}/{tile.y}.png"
    response = httpx.get(f"{url}{path}", timeout=30)
    assert response.status_code == 200, (path, response.text)
    return response.content


def _imagery_tile(url: str, lon: float, lat: float) -> bytes:
    tile = morecantile.tms.get("WebMercatorQuad").tile(lon, lat, 16)
    path = f"/tiles/imagery/1/tiles/WebMercatorQuad/16/{tile.x}/{tile.y}.png?bidx=1&bidx=2&bidx=3"
    response = httpx.get(f"{url}{path}", timeout=30)
    assert response.status_code == 200, (path, response.text)
    return response.content


def _layer(url: str, aoi_id: int) -> dict[str, Any]:
    response = httpx.get(f"{url}/api/projects/1/aois/{aoi_id}", timeout=10)
    assert response.status_code == 200, response.text
    layer = response.json()["prediction"]
    assert layer is not None
    return layer  # type: ignore[no-any-return]


def _caches(home: Settings) -> list[Path]:
    """The complete embedding caches on one process's disk."""
    return [p.parent for p in home.home_abs.rglob("embeddings.json") if cache_complete(p.parent)]


def test_two_processes_with_separate_disks_serve_one_project(pods: Pods) -> None:
    a, b = 0, 1
    home_a, home_b = pods.homes
    project = httpx.get(f"{pods.urls[a]}/api/projects/1", timeout=10).json()
    lon, lat = center(project)

    # An AOI predicted through A: its cache goes to the store in chunks, before the layer says embeddings=True.
    created = httpx.post(
        f"{pods.urls[a]}/api/projects/1/aois", json={"name": "aoi", "geometry": square(lon, lat, 0.002)}
    )
    assert created.status_code == 201, created.text
    aoi_id = created.json()["id"]
    inference = httpx.post(f"{pods.urls[a]}/api/projects/1/aois/{aoi_id}/inference")
    assert inference.status_code == 202, inference.text
    done = pods.wait_job(b, inference.json()["id"])  # followed through B
    assert done["state"] == "done", (done.get("error"), pods.logs())
    assert _layer(pods.urls[b], aoi_id)["embeddings"]
    [cache_a] = _caches(home_a)
    cache_key = cache_a.relative_to(home_a.home_abs).as_posix()
    stored = pods.keys(cache_key + "/")
    assert f"{cache_key}/embeddings.json" in stored and f"{cache_key}/chunks.json" in stored
    assert any("/chunks/r0-c0.npz" in k for k in stored), stored
    assert _caches(home_b) == []  # B has no copy of it

    # Labels through B.
    d = 0.0015
    places = water_and_tree_points(home_a, lon, lat)
    assert len(places) >= 4
    for class_name, point in places:
        body = {"class_name": class_name, "geometry": {"type": "Point", "coordinates": list(point)}, "aoi_id": aoi_id}
        response = httpx.post(f"{pods.urls[b]}/api/projects/1/labels", json=body, timeout=10)
        assert response.status_code == 201, response.text

    # A retrain through B: B downloads A's cache from the chunks, and finishes with metrics.
    retrain = httpx.post(f"{pods.urls[b]}/api/projects/1/retrain", json={"aoi_id": aoi_id})
    assert retrain.status_code == 202, retrain.text
    job = pods.wait_job(a, retrain.json()["id"])
    assert job["state"] == "done", (job, pods.logs())
    [cache_b] = _caches(home_b)
    assert cache_b.relative_to(home_b.home_abs).as_posix() == cache_key
    assert (cache_b / "embeddings.json").read_bytes() == (cache_a / "embeddings.json").read_bytes()
    assert (cache_b / "embeddings.npy").read_bytes() == (cache_a / "embeddings.npy").read_bytes()
    checkpoints = httpx.get(
        f"{pods.urls[a]}/api/projects/1/checkpoints", params={"all_versions": True}, timeout=10
    ).json()
    [current] = [m for m in checkpoints if m["current"]]
    number = current["id"]
    assert current["kind"] == "retrain" and number >= 1
    metrics = httpx.get(f"{pods.urls[a]}/api/projects/1/metrics", timeout=10).json()
    assert metrics["model_version"] == number and metrics["per_class"] and metrics["n_labels"] == len(places), metrics

    # The version folder is in the bucket (version.json uploaded last), and on B's disk only.
    version_key = f"review/projects/1/models/v{number}"
    assert {f"{version_key}/version.json", f"{version_key}/head.npz"} <= set(pods.keys(version_key + "/"))
    assert (home_b.home_abs / version_key / "version.json").is_file()
    assert not (home_a.home_abs / version_key).exists()

    # The new map's tiles: A (which never wrote that version) and B serve the same bytes.
    layer = _layer(pods.urls[a], aoi_id)
    assert layer["model_version"] == number and not layer["partial"]
    retrained = [_tile(url, aoi_id, layer["version"], lon, lat) for url in pods.urls]
    assert retrained[0] == retrained[1] and len(retrained[0]) > 100

    # Back to the base model through B, then B's version restored through A: A fetches it from the store, and
    # re-predicts its own cache with it to the same map.
    base = next(m for m in checkpoints if m["kind"] == "base")
    back = httpx.post(f"{pods.urls[b]}/api/projects/1/checkpoints/{base['id']}/restore")
    assert back.status_code == 202, back.text
    assert pods.wait_job(a, back.json()["id"])["state"] == "done"
    restored = httpx.post(f"{pods.urls[a]}/api/projects/1/checkpoints/{number}/restore")
    assert restored.status_code == 202, restored.text
    job = pods.wait_job(b, restored.json()["id"])
    assert job["state"] == "done", (job, pods.logs())
    assert (home_a.home_abs / version_key / "version.json").is_file()
    for url in pods.urls:
        current_ids = [m["id"] for m in httpx.get(f"{url}/api/projects/1/checkpoints").json() if m["current"]]
        assert current_ids == [number]
    layer = _layer(pods.urls[b], aoi_id)
    assert layer["model_version"] == number
    again = [_tile(url, aoi_id, layer["version"], lon, lat) for url in pods.urls]
    assert again[0] == again[1] == retrained[0]

    # B never built the imagery mosaic: its imagery tiles, and a new AOI's inference through B (the worker reads the
    # AOI's windows), read A's published copy in place; nothing downloads it.
    [mosaic_a] = (home_a.home_abs / "review" / "imagery").rglob("mosaic.tif")
    mosaic_key = mosaic_a.relative_to(home_a.home_abs).as_posix()
    assert mosaic_key in pods.keys(mosaic_key.rsplit("/", 1)[0] + "/")
    assert not (home_b.home_abs / mosaic_key).exists()
    imagery = [_imagery_tile(url, lon, lat) for url in pods.urls]
    assert imagery[0] == imagery[1] and len(imagery[0]) > 1000
    assert not (home_b.home_abs / mosaic_key).exists()
    other = httpx.post(
        f"{pods.urls[b]}/api/projects/1/aois", json={"name": "through B", "geometry": square(lon + d, lat, 0.001)}
    )
    assert other.status_code == 201, other.text
    predicted = httpx.post(f"{pods.urls[b]}/api/projects/1/aois/{other.json()['id']}/inference")
    assert predicted.status_code == 202, predicted.text
    assert pods.wait_job(a, predicted.json()["id"])["state"] == "done", pods.logs()
    assert not (home_b.home_abs / mosaic_key).exists()
    layers = [_layer(url, other.json()["id"]) for url in pods.urls]
    assert layers[0] == layers[1] and layers[0]["embeddings"]
