"""More of a project's keys through the object store, between two app processes with disks of their own (each its own
PEARL_HOME) on one PostgreSQL, one Redis and one S3 server (tests/review_app/test_separate_homes.py's `pods`).

Through A: an AOI mapped, a fill patch and a checkpoint patch (the model's output kept beside the patched map, and
the base model's checkpoint map, both in the bucket), a share link, an imagery upload. Through B, which never wrote
any of it: the same map export; a patch removed (B re-applies the patches from the model's output and the checkpoint
map it fetched, no model run); the share's page, legend, tiles (read in place) and COG, the same bytes as A's; the
share revoked (gone from the bucket); the upload listed, previewed and ingested, followed through A. Last, a project
deleted through B: its prefix is gone from the bucket, project 1's objects and the shared mosaic stay."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import morecantile
import numpy as np
import pytest
import rasterio

from pearl_pipelines.geo.patching import MODEL_PREFIX
from pearl_pipelines.labels.pg_local import PostgresServer
from pearl_pipelines.layout import CLASSES_FILE, ProjectPaths
from pearl_pipelines.redis_local import RedisServer
from tests.review_app.conftest import center, new_home, square, wait_ready
from tests.review_app.test_patches import Map
from tests.review_app.test_separate_homes import PREFIX, Pods, _caches, _layer, start_pods
from tests.review_app.test_uploads import geotiff, unique, upload, wait_ingest
from tests.s3_local import S3Server

TMS = morecantile.tms.get("WebMercatorQuad")
FILL_CLASS = "structures"


@pytest.fixture
def pods(
    review_assets: Path,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: PostgresServer,
    redis_server: RedisServer,
    s3_server: S3Server,
) -> Iterator[Pods]:
    """test_separate_homes.py's two processes, B with a local catalog of its own (empty: A builds the demo project's
    mosaic and publishes it; an upload B ingests lands in B's catalog and the store only)."""
    homes = [new_home(tmp_path_factory, review_assets) for _ in range(2)]
    (homes[1].home_abs / "catalog").unlink()
    (homes[1].home_abs / "catalog").mkdir()
    with start_pods(homes, postgres_server, redis_server, s3_server) as started:
        yield started


def _ok(response: httpx.Response, code: int = 200) -> httpx.Response:
    assert response.status_code == code, (response.request.url, response.text)
    return response


def _patch_job(group: Pods, via: int, response: httpx.Response, code: int) -> dict[str, Any]:
    out = _ok(response, code).json()
    assert out["job"] is not None
    job = group.wait_job(via, out["job"]["id"])
    assert job["state"] == "done", (job, group.logs())
    return out  # type: ignore[no-any-return]


def _export(url: str, aoi_id: int) -> bytes:
    return _ok(httpx.get(f"{url}/api/projects/1/aois/{aoi_id}/export/classes.tif", timeout=30)).content


def _tile_path(lon: float, lat: float, z: int = 16) -> str:
    tile = TMS.tile(lon, lat, z)
    return f"/tiles/WebMercatorQuad/{z}/{tile.x}/{tile.y}.png"


def test_shares_patches_uploads_and_deletion_across_separate_disks(pods: Pods, tmp_path: Path) -> None:
    a, b = 0, 1
    url_a, url_b = pods.urls
    home_a, home_b = (h.home_abs for h in pods.homes)
    project = _ok(httpx.get(f"{url_a}/api/projects/1", timeout=10)).json()
    lon, lat = center(project)

    # An AOI mapped through A.
    created = _ok(
        httpx.post(f"{url_a}/api/projects/1/aois", json={"name": "aoi", "geometry": square(lon, lat, 0.002)}), 201
    )
    aoi = created.json()
    inference = _ok(httpx.post(f"{url_a}/api/projects/1/aois/{aoi['id']}/inference"), 202)
    assert pods.wait_job(a, inference.json()["id"])["state"] == "done", pods.logs()

    # Through A: a fill patch, then a checkpoint patch painting the base model's map (checkpoint 0).
    fill_place = square(lon + 0.0017, lat + 0.0006, 0.0006)
    paint_place = square(lon - 0.001, lat - 0.001, 0.0006)
    fill = _patch_job(
        pods,
        a,
        httpx.post(
            f"{url_a}/api/projects/1/patches", json={"kind": "fill", "geometry": fill_place, "class_name": FILL_CLASS}
        ),
        201,
    )["patch"]
    _patch_job(
        pods,
        a,
        httpx.post(
            f"{url_a}/api/projects/1/patches", json={"kind": "checkpoint", "geometry": paint_place, "checkpoint": 0}
        ),
        201,
    )
    paths_a, paths_b = ProjectPaths.of(home_a, 1), ProjectPaths.of(home_b, 1)
    version = _layer(url_a, aoi["id"])["version"]
    map_dir = paths_a.prediction_dir(aoi["id"], version)
    map_key = map_dir.relative_to(home_a).as_posix()
    # The model's output kept beside the patched map is in the bucket with the map, and so is the checkpoint map.
    stored_map = set(pods.keys(map_key + "/"))
    assert {f"{map_key}/{MODEL_PREFIX}{CLASSES_FILE}", f"{map_key}/{CLASSES_FILE}"} <= stored_map, stored_map
    checkpoint_dir = paths_a.checkpoint_map_dir(aoi["id"], 0)
    checkpoint_key = checkpoint_dir.relative_to(home_a).as_posix()
    assert f"{checkpoint_key}/{CLASSES_FILE}" in pods.keys(checkpoint_key + "/")
    raw_model = (map_dir / f"{MODEL_PREFIX}{CLASSES_FILE}").read_bytes()

    # B (no copy of the map) exports the same COG as A.
    assert not paths_b.prediction_dir(aoi["id"], version).exists()
    before = _export(url_a, aoi["id"])
    assert _export(url_b, aoi["id"]) == before

    # The fill patch removed through B: B re-applies the patches from A's kept model output and A's checkpoint map.
    _patch_job(pods, b, httpx.delete(f"{url_b}/api/projects/1/patches/{fill['id']}"), 200)
    assert (paths_b.checkpoint_map_dir(aoi["id"], 0) / CLASSES_FILE).read_bytes() == (
        checkpoint_dir / CLASSES_FILE
    ).read_bytes()
    assert _caches(pods.homes[b]) == []  # the checkpoint map was fetched: B never needed the AOI's cache
    after_version = _layer(url_a, aoi["id"])["version"]
    assert after_version == version + 1
    assert not paths_a.prediction_dir(aoi["id"], after_version).exists()  # made by B only
    after = Map(_export(url_a, aoi["id"]))
    old = Map(before)
    with rasterio.MemoryFile(raw_model) as memfile, memfile.open() as src:
        model_pixels = src.read(1)
    inside_fill = old.inside(fill_place, aoi["geometry"])
    assert inside_fill.sum() > 100
    classes = [c["name"] for c in project["classes"]]
    assert (old.data[inside_fill & (old.data != 255)] == classes.index(FILL_CLASS)).all()
    expected = np.where(inside_fill, model_pixels, old.data)  # the model's own map back under the fill, the rest kept
    assert (after.data == expected).all()
    assert (model_pixels[inside_fill] != classes.index(FILL_CLASS)).any()  # so the removal did change pixels

    # A share made through A, opened through B: page, legend, areas, tiles (read in place) and COG, A's bytes.
    share = _ok(
        httpx.post(f"{url_a}/api/projects/1/shares", json={"title": "two disks", "aoi_ids": [aoi["id"]]}), 201
    ).json()
    token, share_id = share["token"], share["id"]
    share_key = paths_a.share_dir(share_id).relative_to(home_a).as_posix()
    assert {f"{share_key}/share.json", f"{share_key}/aoi-{aoi['id']}.tif"} <= set(pods.keys(share_key + "/"))
    views = [_ok(httpx.get(f"{url}/api/shares/{token}", timeout=10)).json() for url in pods.urls]
    assert views[0] == views[1] and views[1]["legend"] and views[1]["maps"][0]["areas"]
    map_tiles = [
        _ok(httpx.get(f"{url}/tiles/shares/{token}/maps/{aoi['id']}" + _tile_path(lon, lat), timeout=30)).content
        for url in pods.urls
    ]
    assert map_tiles[0] == map_tiles[1] and len(map_tiles[0]) > 100
    assert not (paths_b.share_dir(share_id) / f"aoi-{aoi['id']}.tif").exists()  # read in place, not downloaded
    imagery = [
        _ok(
            httpx.get(
                f"{url}/tiles/shares/{token}/imagery" + _tile_path(lon, lat) + "?bidx=1&bidx=2&bidx=3", timeout=30
            )
        ).content
        for url in pods.urls
    ]
    assert imagery[0] == imagery[1] and len(imagery[0]) > 1000
    cogs = [_ok(httpx.get(f"{url}{views[0]['maps'][0]['download']}", timeout=30)).content for url in pods.urls]
    assert cogs[0] == cogs[1] == (paths_a.share_dir(share_id) / f"aoi-{aoi['id']}.tif").read_bytes()
    areas = [_ok(httpx.get(f"{url}{views[0]['maps'][0]['areas_csv']}", timeout=10)).text for url in pods.urls]
    assert areas[0] == areas[1]
    # Revoked through B: gone from the bucket, and the link is the same 404 on both.
    _ok(httpx.delete(f"{url_b}/api/projects/1/shares/{share_id}"))
    assert pods.keys(share_key + "/") == []
    for url in pods.urls:
        assert httpx.get(f"{url}/api/shares/{token}", timeout=10).status_code == 404

    # An imagery upload accepted by A is listed, previewed and ingested through B, the ingest followed through A.
    content = geotiff(tmp_path / "scene.tif", descriptions=("blue", "green", "red", "nir"))
    with httpx.Client(base_url=url_a, timeout=30) as client_a, httpx.Client(base_url=url_b, timeout=30) as client_b:
        sent = upload(client_a, "scene.tif", content)  # type: ignore[arg-type]
        assert sent["state"] == "ready", sent
        upload_keys = [k for k in pods.keys("review/uploads/") if f"/{sent['id']}/" in k]
        assert any(k.endswith("/meta.json") for k in upload_keys) and any(k.endswith(".tif") for k in upload_keys)
        assert _ok(client_b.get(f"/api/uploads/{sent['id']}")).json() == sent
        assert sent["id"] in [u["id"] for u in _ok(client_b.get("/api/uploads")).json()]
        previews = [_ok(c.get(f"/api/uploads/{sent['id']}/preview.png")).content for c in (client_a, client_b)]
        assert previews[0] == previews[1] and previews[0][:4] == b"\x89PNG"
        name = unique("two disks")
        started = _ok(
            client_b.post("/api/uploads/ingests", json={"name": name, "files": [{"upload_id": sent["id"]}]}), 202
        )
        collection = started.json()["collection"]
        try:
            job = wait_ingest(client_a, started.json()["id"])  # type: ignore[arg-type]
            assert job["state"] == "done", job
            # The raw upload is gone once ingested, on both processes and from the bucket; the collection is in B's
            # catalog and in the bucket, not in A's catalog.
            assert [k for k in pods.keys("review/uploads/") if f"/{sent['id']}/" in k] == []
            for client in (client_a, client_b):
                assert client.get(f"/api/uploads/{sent['id']}").status_code == 404
            assert (home_b / "catalog" / collection / "collection.json").is_file()
            assert f"catalog/{collection}/collection.json" in pods.keys(f"catalog/{collection}/")
            assert not (home_a / "catalog" / collection).exists()
            # A project of it made through A: A fetches the collection (hrefs made its own) and builds its mosaic.
            body = {"name": "uploaded", "imagery": {"source": "local", "collection": collection}}
            body |= {"class_schema": "chesapeake9", "base_model": "models:/pearl-starter-chesapeake9@starter"}
            uploaded = _ok(client_a.post("/api/projects", json=body), 201).json()
            ready = wait_ready(client_a, uploaded["id"], timeout=120)  # type: ignore[arg-type]
            assert ready["imagery"]["state"] == "ready" and ready["imagery"]["bounds"]
            fetched = (home_a / "catalog" / collection / "collection.json").read_text()
            assert str((home_a / "catalog").resolve() / collection) in fetched
            assert str((home_b / "catalog").resolve()) not in fetched
        finally:
            shutil.rmtree(home_a / "catalog" / collection, ignore_errors=True)  # A's is the session's shared catalog
            with contextlib.suppress(OSError):
                os.rmdir(home_a / "catalog" / ".staging")  # only when this test left it empty

    # A project deleted through B (which never opened it): its prefix is gone from the bucket; project 1's objects
    # and the shared imagery mosaic stay.
    body = {"name": "doomed", "imagery": {"source": "local", "collection": "demo"}, "class_schema": "chesapeake9"}
    body["base_model"] = "models:/pearl-starter-chesapeake9@starter"
    doomed = _ok(httpx.post(f"{url_a}/api/projects", json=body, timeout=30), 201).json()
    pid = doomed["id"]
    with httpx.Client(base_url=url_a, timeout=30) as client_a:
        wait_ready(client_a, pid, timeout=120)  # type: ignore[arg-type]
    made = _ok(httpx.post(f"{url_a}/api/projects/{pid}/aois", json={"geometry": square(lon, lat, 0.001)}), 201)
    job = _ok(httpx.post(f"{url_a}/api/projects/{pid}/aois/{made.json()['id']}/inference"), 202).json()
    assert pods.wait_job(a, job["id"])["state"] == "done", pods.logs()
    doomed_prefix = f"review/projects/{pid}/"
    assert pods.keys(doomed_prefix)
    kept_before = pods.keys("review/projects/1/")
    mosaics = pods.keys("review/imagery/")
    assert kept_before and mosaics
    # The label-set snapshots its Dagster runs published sit outside its folder, beside other projects' snapshots.
    client = pods.s3.client()
    for owner in (pid, 1):
        key = f"{PREFIX}/label_sets/project-{owner}/{'0' * 16}.parquet"
        client.put_object(Bucket=pods.s3.bucket, Key=key, Body=b"PAR1")
    assert pods.keys(f"label_sets/project-{pid}/")
    assert not (home_b / doomed_prefix).exists()
    _ok(httpx.delete(f"{url_b}/api/projects/{pid}", params={"confirm": "doomed"}, timeout=30))
    assert pods.keys(doomed_prefix) == []
    assert pods.keys("review/projects/1/") == kept_before
    assert pods.keys("review/imagery/") == mosaics
    assert pods.keys(f"label_sets/project-{pid}/") == []
    assert pods.keys("label_sets/project-1/") == [f"label_sets/project-1/{'0' * 16}.parquet"]
    assert httpx.get(f"{url_a}/api/projects/{pid}", timeout=10).status_code == 404
    assert _export(url_b, aoi["id"]) == _export(url_a, aoi["id"])  # project 1 still served on both
