"""A new AOI shows its first block within seconds: the block in the mapper's view is predicted and published as a
partial layer version, then the whole AOI (with its embedding cache) as the next one (review_app/tasks.py,
ml/preview.py). Real app, real worker process, real tile server.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import rasterio
from fastapi.testclient import TestClient
from PIL import Image

from pearl_pipelines.settings import Settings
from review_app.workspace import ProjectPaths
from tests.review_app.conftest import center, follow_job, square, wait_job
from tests.review_app.data import class_places

ZOOM = 17


def tile_at(lon: float, lat: float, z: int = ZOOM) -> tuple[int, int, int, int]:
    """(x, y) of the WebMercatorQuad tile holding lon/lat at zoom z, and the pixel (col, row) in a 512 px tile."""
    n = 2**z
    fx = (lon + 180) / 360 * n
    fy = (1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n
    return int(fx), int(fy), int((fx % 1) * 512), int((fy % 1) * 512)


def tile_alpha(client: TestClient, tilejson_url: str, lon: float, lat: float) -> int:
    """Alpha of the layer's tile pixel at lon/lat (0: transparent, or no tile there: outside the layer's bounds)."""
    template = client.get(tilejson_url).json()["tiles"][0]
    x, y, col, row = tile_at(lon, lat)
    response = client.get(template.replace("{z}", str(ZOOM)).replace("{x}", str(x)).replace("{y}", str(y)))
    if response.status_code == 404:
        return 0
    assert response.status_code == 200 and response.headers["content-type"] == "image/png", response.text[:200]
    image = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGBA"))
    return int(image[row, col, 3])


def infer(client: TestClient, aoi_id: int, body: dict[str, Any] | None, on_partial: Any = None) -> list[dict]:
    """Start inference over the AOI and follow the websocket to the job's end; its events."""
    return follow_job(client, f"/api/projects/1/aois/{aoi_id}/inference", body, on_partial)


def test_a_new_aoi_shows_the_block_in_view_first(
    client: TestClient, settings: Settings, project: dict[str, Any]
) -> None:
    lon, lat = center(project)
    d = 0.0045  # ~0.8 x 1 km: several window cores
    created = client.post("/api/projects/1/aois", json={"name": "big AOI", "geometry": square(lon, lat, d)})
    assert created.status_code == 201, created.text
    aoi_id = created.json()["id"]
    vx, vy = lon + 0.6 * d, lat + 0.6 * d  # the mapper looks at the AOI's north-east part
    view = [vx - 0.001, vy - 0.001, vx + 0.001, vy + 0.001]
    seen: dict[str, Any] = {}

    def on_partial(event: dict[str, Any]) -> None:  # while the rest of the AOI runs: the block's tiles serve
        seen["alpha_view"] = tile_alpha(client, event["tilejson"]["classes"], vx, vy)
        seen["alpha_far"] = tile_alpha(client, event["tilejson"]["classes"], lon - 0.8 * d, lat - 0.8 * d)
        seen["aoi"] = client.get(f"/api/projects/1/aois/{aoi_id}").json()

    events = infer(client, aoi_id, {"view": view}, on_partial)
    job = events[-1]
    assert job["state"] == "done", job
    layers = [e for e in events if e["type"] == "prediction_updated"]
    assert [(e["version"], e["partial"]) for e in layers] == [(1, True), (2, False)]
    first_s, full_s = layers[0]["t"], layers[1]["t"]
    print(f"first block shown after {first_s:.2f} s, the whole AOI after {full_s:.2f} s ({job['message']})")
    assert first_s < full_s and "the block in view shown after" in job["message"]
    assert seen["alpha_view"] > 0 and seen["alpha_far"] == 0  # the view's block, not the far corner
    progress = [e for e in events if e["type"] == "job" and e["state"] == "running" and "window" in e["message"]]
    assert any("the rest of the AOI" in e["message"] for e in progress)  # the bar keeps moving after the block
    if seen["aoi"]["prediction"]["version"] == 1:  # read before the whole AOI's layer replaced it
        assert seen["aoi"]["prediction"]["partial"] and not seen["aoi"]["prediction"]["embeddings"]

    final = client.get(f"/api/projects/1/aois/{aoi_id}").json()["prediction"]
    assert final["version"] == 2 and final["embeddings"] and not final["partial"]
    assert tile_alpha(client, final["tilejson"]["classes"], lon - 0.8 * d, lat - 0.8 * d) > 0  # the whole AOI now
    # The block's pixels are those of the whole AOI's layer (one global window grid).
    paths = ProjectPaths.of(settings.home_abs, 1)
    with rasterio.open(paths.classes_path(aoi_id, 1)) as small, rasterio.open(paths.classes_path(aoi_id, 2)) as big:
        block, whole = small.read(1), big.read(1)
        r = round((small.transform.f - big.transform.f) / big.transform.e)
        c = round((small.transform.c - big.transform.c) / big.transform.a)
        assert 0 < block.size < whole.size / 2
        np.testing.assert_array_equal(block, whole[r : r + block.shape[0], c : c + block.shape[1]])

    # A retrain right after uses the whole AOI's embeddings.
    bounds = (lon - d, lat - d, lon + d, lat + d)
    for name in ("water", "tree_canopy"):
        for place in class_places(settings, bounds, name, n=3):
            point = {"type": "Point", "coordinates": list(place[0])}
            r = client.post("/api/projects/1/labels", json={"class_name": name, "geometry": point, "aoi_id": aoi_id})
            assert r.status_code == 201, r.text
    retrain = client.post("/api/projects/1/retrain", json={"aoi_id": aoi_id})
    assert retrain.status_code == 202, retrain.text
    assert wait_job(client, retrain.json()["id"])["state"] == "done"
    after = client.get(f"/api/projects/1/aois/{aoi_id}").json()["prediction"]
    # Of this large AOI, the retrain re-predicts the block at its centre first (version 3), then the whole AOI.
    assert after["version"] == 4 and after["embeddings"] and not after["partial"] and after["model_version"] == 1


def test_a_small_aoi_is_one_layer_version(client: TestClient, project: dict[str, Any]) -> None:
    lon, lat = center(project)
    created = client.post("/api/projects/1/aois", json={"geometry": square(lon - 0.002, lat - 0.002, 0.0015)})
    aoi_id = created.json()["id"]
    events = infer(client, aoi_id, None)  # no body: as before
    assert events[-1]["state"] == "done", events[-1]
    layers = [(e["version"], e["partial"]) for e in events if e["type"] == "prediction_updated"]
    assert layers == [(1, False)]
    assert client.get(f"/api/projects/1/aois/{aoi_id}").json()["prediction"]["embeddings"]


def test_a_failed_pass_after_the_block_leaves_the_layer_partial(
    client: TestClient, settings: Settings, project: dict[str, Any]
) -> None:
    lon, lat = center(project)
    created = client.post("/api/projects/1/aois", json={"geometry": square(lon, lat, 0.004)})
    aoi_id = created.json()["id"]
    # The whole AOI's layer cannot be written (a file holds its folder's name): its pass fails after the block.
    in_the_way = ProjectPaths.of(settings.home_abs, 1).prediction_dir(aoi_id, 2)
    in_the_way.parent.mkdir(parents=True, exist_ok=True)
    in_the_way.write_text("in the way")
    try:
        events = infer(client, aoi_id, {"view": None})
    finally:
        in_the_way.unlink()
    job = events[-1]
    assert job["state"] == "failed" and job["error"], job
    assert [(e["version"], e["partial"]) for e in events if e["type"] == "prediction_updated"] == [(1, True)]
    layer = client.get(f"/api/projects/1/aois/{aoi_id}").json()["prediction"]
    assert layer["version"] == 1 and layer["partial"] and not layer["embeddings"]
    # Retrains leave the partial AOI out (no embeddings); predicting it again completes it.
    events = infer(client, aoi_id, None)
    assert events[-1]["state"] == "done", events[-1]
    layer = client.get(f"/api/projects/1/aois/{aoi_id}").json()["prediction"]
    assert not layer["partial"] and layer["embeddings"] and layer["version"] == 3
