"""A live retrain shows the block in view first: of a large AOI, the block around the mapper's view is re-predicted
from the embedding cache and published as a partial layer version, then the whole AOI as the next one, then the
metrics (review_app/tasks.py run_retrain, ml/loop.view_block). Real app, real worker process, real tile server.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import rasterio
from fastapi.testclient import TestClient
from PIL import Image
from rasterio.warp import transform as transform_xy
from rasterio.windows import Window

from pearl_pipelines.labels.store import LabelStore
from pearl_pipelines.ml import loop
from pearl_pipelines.settings import Settings
from review_app.workspace import ProjectPaths, StateStore
from tests.review_app.conftest import center, follow_job, square
from tests.review_app.data import class_places
from tests.review_app.test_first_block import ZOOM, infer, tile_at

BIG = 0.0045  # ~0.8 x 1 km: its cache holds several 512 px blocks
SMALL = 0.0015  # ~0.25 x 0.35 km: smaller than two blocks


def tile_rgba(client: TestClient, tilejson_url: str, lon: float, lat: float) -> np.ndarray:
    """The RGBA pixels of the layer's tile holding lon/lat (asserted a 200 PNG)."""
    template = client.get(tilejson_url).json()["tiles"][0]
    x, y, _, _ = tile_at(lon, lat)
    response = client.get(template.replace("{z}", str(ZOOM)).replace("{x}", str(x)).replace("{y}", str(y)))
    assert response.status_code == 200 and response.headers["content-type"] == "image/png", response.text[:200]
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGBA"))


def retrain(client: TestClient, body: dict[str, Any], on_partial: Any = None) -> list[dict[str, Any]]:
    """Start a retrain and follow the websocket to the job's end; its events (`t`: seconds since the request)."""
    return follow_job(client, "/api/projects/1/retrain", body, on_partial)


def layers_of(events: list[dict[str, Any]], aoi_id: int) -> list[tuple[int, bool]]:
    return [(e["version"], e["partial"]) for e in events if e["type"] == "prediction_updated" and e["aoi_id"] == aoi_id]


def add_labels(client: TestClient, settings: Settings, aoi_id: int, lon: float, lat: float, d: float) -> None:
    for name in ("water", "tree_canopy"):
        for place in class_places(settings, (lon - d, lat - d, lon + d, lat + d), name, n=3):
            point = {"type": "Point", "coordinates": list(place[0])}
            r = client.post("/api/projects/1/labels", json={"class_name": name, "geometry": point, "aoi_id": aoi_id})
            assert r.status_code == 201, r.text


@pytest.fixture(scope="module")
def big(client: TestClient, settings: Settings, project: dict[str, Any]) -> int:
    """A large AOI, predicted whole (embeddings cached), with labels of two classes."""
    lon, lat = center(project)
    created = client.post("/api/projects/1/aois", json={"name": "big AOI", "geometry": square(lon, lat, BIG)})
    assert created.status_code == 201, created.text
    aoi_id = int(created.json()["id"])
    assert infer(client, aoi_id, None)[-1]["state"] == "done"
    add_labels(client, settings, aoi_id, lon, lat, BIG)
    return aoi_id


def test_a_retrain_shows_the_block_in_view_first(
    client: TestClient, settings: Settings, project: dict[str, Any], big: int
) -> None:
    lon, lat = center(project)
    before = client.get(f"/api/projects/1/aois/{big}").json()["prediction"]
    assert not before["partial"] and before["embeddings"]
    v = before["version"]
    vx, vy = lon + 0.5 * BIG, lat + 0.5 * BIG  # the mapper looks at the AOI's north-east part
    view = [vx - 0.001, vy - 0.001, vx + 0.001, vy + 0.001]
    seen: dict[str, Any] = {}

    def on_partial(event: dict[str, Any]) -> None:  # while the whole AOI is re-predicted: the block's tiles serve
        seen["event"] = event
        seen["tile"] = tile_rgba(client, event["tilejson"]["classes"], vx, vy)
        seen["aoi"] = client.get(f"/api/projects/1/aois/{big}").json()
        seen["under"] = ProjectPaths.of(settings.home_abs, 1).classes_path(big, v).is_file()

    events = retrain(client, {"aoi_id": big, "view": view}, on_partial)
    job = events[-1]
    assert job["state"] == "done", job
    assert layers_of(events, big) == [(v + 1, True), (v + 2, False)]
    partial, whole = (e for e in events if e["type"] == "prediction_updated" and e["aoi_id"] == big)
    assert partial["model_version"] == whole["model_version"] == 1
    assert partial["embeddings"] and whole["embeddings"]  # the cache stays usable: a retrain keeps the AOI
    steps = [e["message"] for e in events if e["type"] == "job"]
    print(
        f"retrain: the block in view shown after {partial['t']:.2f} s, the whole AOI after {whole['t']:.2f} s "
        f"({job['message']})"
    )
    assert partial["t"] < whole["t"] and "the block in view shown in" in job["message"]
    assert any("re-predicting the rest of the AOI" in m for m in steps)
    # Metrics come after both layers, and the version is saved.
    metrics = [e for e in events if e["type"] == "metrics_updated"]
    assert metrics and metrics[0]["t"] > whole["t"]

    # While the block was shown: the AOI's layer was the partial one, and the whole layer under it still served.
    if seen["aoi"]["prediction"]["version"] == v + 1:
        assert seen["aoi"]["prediction"]["partial"] and seen["aoi"]["prediction"]["embeddings"]
    assert seen["under"]
    # The block's tile at the view's centre: its drawn pixels are the whole layer's.
    block_tile = seen["tile"]
    whole_tile = tile_rgba(client, whole["tilejson"]["classes"], vx, vy)
    drawn = block_tile[..., 3] > 0
    assert drawn.mean() > 0.25, drawn.mean()
    np.testing.assert_array_equal(block_tile[drawn], whole_tile[drawn])
    # ... and so are its COG's pixels (the same cache, the same head, per pixel), classes and confidence.
    paths = ProjectPaths.of(settings.home_abs, 1)
    for path in (paths.classes_path, paths.confidence_path):
        with rasterio.open(path(big, v + 1)) as small, rasterio.open(path(big, v + 2)) as large:
            block, full = small.read(1), large.read(1)
            r = round((small.transform.f - large.transform.f) / large.transform.e)
            c = round((small.transform.c - large.transform.c) / large.transform.a)
            assert block.shape == (512, 512) and block.size < full.size / 2
            np.testing.assert_array_equal(block, full[r : r + 512, c : c + 512])
            xs, ys = transform_xy("EPSG:4326", small.crs, [vx], [vy])
            row, col = small.index(xs[0], ys[0])
            assert 0 <= row < 512 and 0 <= col < 512  # the view's centre is in the block

    # The bookkeeping: the previous whole layer, the block and the whole AOI are all kept (the browser may still
    # draw the first two while it swaps); the AOI's layer is the whole one; the metrics/version flow goes on.
    for version in (v, v + 1, v + 2):
        assert paths.classes_path(big, version).is_file(), version
    final = client.get(f"/api/projects/1/aois/{big}").json()["prediction"]
    assert final["version"] == v + 2 and not final["partial"] and final["embeddings"]
    m = client.get("/api/projects/1/metrics").json()
    assert m["model_version"] == 1 and {"water", "tree_canopy"} <= set(m["classes"])
    saved = client.post("/api/projects/1/checkpoints", json={"name": "after the block"})
    assert saved.status_code in (200, 201), saved.text


def test_a_retrain_without_a_view_starts_at_the_aoi_centre(
    client: TestClient, settings: Settings, project: dict[str, Any], big: int
) -> None:
    lon, lat = center(project)
    v = client.get(f"/api/projects/1/aois/{big}").json()["prediction"]["version"]
    events = retrain(client, {"aoi_id": big})
    assert events[-1]["state"] == "done", events[-1]
    assert layers_of(events, big) == [(v + 1, True), (v + 2, False)]
    with rasterio.open(ProjectPaths.of(settings.home_abs, 1).classes_path(big, v + 1)) as small:
        xs, ys = transform_xy("EPSG:4326", small.crs, [lon], [lat])
        row, col = small.index(xs[0], ys[0])
        assert abs(row - 256) <= 2 and abs(col - 256) <= 2  # centred on the AOI's centre
    # The version folder before the last three is gone; the last three stay.
    paths = ProjectPaths.of(settings.home_abs, 1)
    assert not paths.prediction_dir(big, v - 1).exists()
    assert all(paths.classes_path(big, version).is_file() for version in (v, v + 1, v + 2))


def test_a_small_aoi_is_re_predicted_whole_once(
    client: TestClient, settings: Settings, project: dict[str, Any], big: int
) -> None:
    lon, lat = center(project)
    slon, slat = lon - 0.003, lat - 0.003  # inside the big AOI's imagery, its own AOI
    created = client.post("/api/projects/1/aois", json={"geometry": square(slon, slat, SMALL)})
    aoi_id = int(created.json()["id"])
    assert infer(client, aoi_id, None)[-1]["state"] == "done"
    v_small = client.get(f"/api/projects/1/aois/{aoi_id}").json()["prediction"]["version"]
    v_big = client.get(f"/api/projects/1/aois/{big}").json()["prediction"]["version"]
    view = [slon - 0.001, slat - 0.001, slon + 0.001, slat + 0.001]
    events = retrain(client, {"aoi_id": aoi_id, "view": view})
    assert events[-1]["state"] == "done", events[-1]
    assert "the block in view" not in events[-1]["message"]
    assert layers_of(events, aoi_id) == [(v_small + 1, False)]
    assert layers_of(events, big) == [(v_big + 1, False)]  # not the AOI in view: whole, after it
    assert client.get("/api/projects/1/metrics").json()["model_version"] >= 2


def test_the_block_is_around_the_view_and_inside_the_cache(settings: Settings, big: int) -> None:
    ws = StateStore(settings.home_abs, LabelStore(settings.resolved_label_store_url)).workspace(1)
    cache = loop.open_cache(ws.embeddings_dir(big))
    height, width = cache.shape

    def lonlat(row: float, col: float) -> tuple[float, float]:
        x, y = cache.transform @ (col, row)
        lons, lats = transform_xy(cache.crs, "EPSG:4326", [x], [y])
        return lons[0], lats[0]

    def view_at(row: float, col: float) -> list[float]:
        lon, lat = lonlat(row, col)
        return [lon - 1e-4, lat - 1e-4, lon + 1e-4, lat + 1e-4]

    middle = Window(round(width / 2 - 256), round(height / 2 - 256), 512, 512)
    assert loop.view_block(cache, None) == middle  # no view: the cache's centre
    assert loop.view_block(cache, view_at(300, 400)) == Window(400 - 256, 300 - 256, 512, 512)
    assert loop.view_block(cache, view_at(5, 5)) == Window(0, 0, 512, 512)  # moved inside the cache
    corner = loop.view_block(cache, view_at(height - 3, width - 3))
    assert corner == Window(width - 512, height - 512, 512, 512)
    # A view off the cache: the AOI's centre given, else the cache's.
    off = view_at(-2000, -2000)
    assert loop.view_block(cache, off) == middle
    assert loop.view_block(cache, off, centre=lonlat(400, 300)) == Window(300 - 256, 400 - 256, 512, 512)
    # A cache not clearly larger than a block: none.
    assert loop.view_block(cache, None, size=max(height, width)) is None
    assert loop.view_block(cache.window(Window(0, 0, 600, 600)), None) is None
