"""Map patches through the API, on the real app and model: a fill patch and a checkpoint patch change exactly the
pixels inside their polygon (and the AOI) in the exported COG, the tiles, the confidence layer and the areas CSV;
they survive a retrain, removal restores the model's output, undo brings a patch back, they are labels only when the
mapper asks, bad requests are refused with what is accepted, and a version's lineage in MLflow names them."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import morecantile
import numpy as np
import pytest
import rasterio
from fastapi.testclient import TestClient
from PIL import Image
from rasterio.features import geometry_mask
from rasterio.warp import transform_geom
from shapely.geometry import mapping, shape

from pearl_pipelines.geo.patching import MODEL_PREFIX
from pearl_pipelines.layout import CLASSES_FILE, CONFIDENCE_FILE, ProjectPaths
from pearl_pipelines.settings import Settings
from review_app.services import version_store
from tests.review_app.conftest import center, square, wait_job
from tests.review_app.data import class_places

FILL_CLASS = "structures"  # rare in the demo scene: a fill with it changes many pixels
NODATA = 255


class Map:
    """The AOI's exported class COG: pixels and grid."""

    def __init__(self, content: bytes) -> None:
        with rasterio.MemoryFile(content) as memfile, memfile.open() as src:
            self.data, self.crs, self.transform = src.read(1), src.crs, src.transform

    def inside(self, *geometries: dict[str, Any]) -> np.ndarray:
        """Pixel centres inside every lon/lat geometry given (the patch, its AOI)."""
        mask = np.ones(self.data.shape, dtype=bool)
        for geometry in geometries:
            footprint = transform_geom("EPSG:4326", self.crs, geometry)
            mask &= ~geometry_mask([footprint], out_shape=self.data.shape, transform=self.transform)
        return mask


def _map(client: TestClient, aoi_id: int) -> Map:
    response = client.get(f"/api/projects/1/aois/{aoi_id}/export/classes.tif")
    assert response.status_code == 200, response.text
    return Map(response.content)


def _version(client: TestClient, aoi_id: int) -> int:
    return int(client.get(f"/api/projects/1/aois/{aoi_id}").json()["prediction"]["version"])


def _areas(client: TestClient, aoi_id: int) -> dict[str, int]:
    rows = client.get(f"/api/projects/1/aois/{aoi_id}/export/areas.csv").text.strip().splitlines()[1:]
    return {r.split(",")[1]: int(r.split(",")[3]) for r in rows}


def _patch(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/api/projects/1/patches", json=body)
    assert response.status_code == 201, response.text
    out = response.json()
    assert out["job"] is not None and wait_job(client, out["job"]["id"])["state"] == "done"
    return out["patch"]


def _finish(client: TestClient, response: Any) -> dict[str, Any]:
    """A patch change's answer, once the job re-applying the patches is done."""
    assert response.status_code == 200, response.text
    out = response.json()
    if out["job"] is not None:
        assert wait_job(client, out["job"]["id"])["state"] == "done"
    return out


def _layer_file(settings: Settings, aoi_id: int, version: int, name: str) -> np.ndarray:
    with rasterio.open(ProjectPaths.of(settings.home_abs, 1).prediction_dir(aoi_id, version) / name) as src:
        return src.read(1)


def _tile_rgb(client: TestClient, aoi_id: int, version: int, lon: float, lat: float, z: int = 18) -> tuple:
    """The colour of the prediction tile's pixel at lon/lat (WebMercatorQuad, nearest-neighbour class colours)."""
    tms = morecantile.tms.get("WebMercatorQuad")
    tile = tms.tile(lon, lat, z)
    bounds = tms.xy_bounds(tile)
    x, y = tms.xy(lon, lat)
    col = int((x - bounds.left) / (bounds.right - bounds.left) * 256)
    row = int((bounds.top - y) / (bounds.top - bounds.bottom) * 256)
    url = f"/tiles/predictions/1/{aoi_id}/{version}/tiles/WebMercatorQuad/{z}/{tile.x}/{tile.y}"
    response = client.get(url)
    assert response.status_code == 200, response.text
    pixel = Image.open(io.BytesIO(response.content)).convert("RGB").getpixel((col, row))
    assert isinstance(pixel, tuple)
    return pixel


def _class(project: dict[str, Any], name: str) -> tuple[int, str]:
    """The class's index (its pixel value) and colour."""
    classes = project["classes"]
    index = [c["name"] for c in classes].index(name)
    return index, classes[index]["color"]


def _hex_rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


@pytest.fixture(scope="module")
def places(client: TestClient, project: dict[str, Any], aoi: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Two disjoint patch polygons over the AOI: `fill` crosses its east edge (clipped there), `paint` lies inside."""
    lon, lat = center(project)
    return {"fill": square(lon + 0.0017, lat + 0.0006, 0.0006), "paint": square(lon - 0.001, lat - 0.001, 0.0006)}


def test_a_fill_patch_changes_exactly_the_pixels_inside_it(
    client: TestClient, settings: Settings, project: dict[str, Any], aoi: dict[str, Any], places: dict[str, Any]
) -> None:
    class_index, color = _class(project, FILL_CLASS)
    before, version = _map(client, aoi["id"]), _version(client, aoi["id"])
    labels = len(client.get("/api/projects/1/labels").json()["features"])

    patch = _patch(client, {"kind": "fill", "geometry": places["fill"], "class_name": FILL_CLASS})
    assert patch["aoi_ids"] == [aoi["id"]] and patch["class_name"] == FILL_CLASS and patch["user"]
    after = _map(client, aoi["id"])
    assert _version(client, aoi["id"]) == version + 1  # a new layer version: the browser refetches its tiles

    inside = before.inside(places["fill"], aoi["geometry"]) & (before.data != NODATA)
    assert inside.sum() > 200
    assert (after.data[inside] == class_index).all()
    assert (after.data[~inside] == before.data[~inside]).all()  # nothing else moved, nodata outside the AOI stays
    assert ((before.data[inside] != class_index).sum()) > 100  # the patch did change something

    # The confidence layer marks patched pixels as certain (255 = 1.0); the model's output is kept beside.
    confidence = _layer_file(settings, aoi["id"], version + 1, CONFIDENCE_FILE)
    assert (confidence[inside] == 255).all()
    raw = _layer_file(settings, aoi["id"], version + 1, MODEL_PREFIX + CLASSES_FILE)
    assert (raw == before.data).all()

    # The areas CSV counts the patched map; the tiles show the class's colour inside the patch.
    assert _areas(client, aoi["id"])[FILL_CLASS] == int((after.data == class_index).sum())
    centre = shape(places["fill"]).intersection(shape(aoi["geometry"])).representative_point()
    assert _tile_rgb(client, aoi["id"], version + 1, centre.x, centre.y) == _hex_rgb(color)

    # Not a label: the labels did not change.
    assert len(client.get("/api/projects/1/labels").json()["features"]) == labels
    listed = client.get("/api/projects/1/patches").json()
    assert [p["id"] for p in listed] == [patch["id"]]


def test_patches_survive_a_retrain_and_paint_a_checkpoint_map(
    client: TestClient, settings: Settings, project: dict[str, Any], aoi: dict[str, Any], places: dict[str, Any]
) -> None:
    class_index, _ = _class(project, FILL_CLASS)
    version = _version(client, aoi["id"])
    base_raw = _layer_file(settings, aoi["id"], version, MODEL_PREFIX + CLASSES_FILE)  # the base model's own map
    (fill,) = client.get("/api/projects/1/patches").json()

    # Labels only when asked: the fill patch becomes labels of its class, inside the AOI.
    made = client.post(f"/api/projects/1/patches/{fill['id']}/labels")
    assert made.status_code == 201, made.text
    features = made.json()["features"]
    assert features and {f["properties"]["class_name"] for f in features} == {FILL_CLASS}
    assert {f["properties"]["aoi_id"] for f in features} == {aoi["id"]}
    ring = aoi["geometry"]["coordinates"][0]
    bounds = (ring[0][0], ring[0][1], ring[2][0], ring[2][1])
    for name in ("water", "tree_canopy"):
        for place in class_places(settings, bounds, name, n=2):
            body = {"class_name": name, "geometry": {"type": "Point", "coordinates": list(place[0])}}
            assert client.post("/api/projects/1/labels", json=body).status_code == 201

    job = client.post("/api/projects/1/retrain", json={"aoi_id": aoi["id"]}).json()
    assert wait_job(client, job["id"])["state"] == "done"
    retrained = _map(client, aoi["id"])
    inside_fill = retrained.inside(places["fill"], aoi["geometry"]) & (retrained.data != NODATA)
    assert (retrained.data[inside_fill] == class_index).all()  # the patch is drawn over the new version's map
    retrained_raw = _layer_file(settings, aoi["id"], _version(client, aoi["id"]), MODEL_PREFIX + CLASSES_FILE)
    assert (retrained_raw != base_raw).any()  # the retrain did change the model's map

    # Paint the base model's map (checkpoint 0) into a second polygon.
    before = retrained
    paint = _patch(client, {"kind": "checkpoint", "geometry": places["paint"], "checkpoint": 0})
    assert paint["checkpoint"] == 0 and paint["class_name"] is None
    after = _map(client, aoi["id"])
    inside = before.inside(places["paint"], aoi["geometry"]) & (before.data != NODATA)
    assert inside.sum() > 200
    assert (after.data[inside] == base_raw[inside]).all()
    assert (after.data[~inside] == before.data[~inside]).all()

    # Remove the fill patch: the model's output is back there (no model run), the painted one stays.
    version = _version(client, aoi["id"])
    current_raw = _layer_file(settings, aoi["id"], version, MODEL_PREFIX + CLASSES_FILE)
    removed = _finish(client, client.delete(f"/api/projects/1/patches/{fill['id']}"))
    assert removed["patch"]["removed_at"] is not None
    restored = _map(client, aoi["id"])
    assert (restored.data[inside_fill] == current_raw[inside_fill]).all()
    assert (restored.data[inside] == base_raw[inside]).all()
    confidence = _layer_file(settings, aoi["id"], _version(client, aoi["id"]), CONFIDENCE_FILE)
    assert (confidence[inside_fill] != 255).any()

    # Undo the removal: the fill is drawn again.
    undone = _finish(client, client.post("/api/projects/1/patches/undo"))
    assert undone["patch"]["id"] == fill["id"] and undone["restored"] is True
    assert (_map(client, aoi["id"]).data[inside_fill] == class_index).all()
    everything = client.get("/api/projects/1/patches", params={"include_removed": True}).json()
    assert [p["id"] for p in everything] == [fill["id"], paint["id"]]


def test_bad_patches_are_refused_and_write_nothing(
    client: TestClient, project: dict[str, Any], aoi: dict[str, Any], places: dict[str, Any]
) -> None:
    before = client.get("/api/projects/1/patches").json()
    lon, lat = center(project)
    cases = [
        ({"kind": "fill", "geometry": places["fill"]}, "class_name"),
        ({"kind": "fill", "geometry": places["fill"], "class_name": "lava"}, "water"),
        ({"kind": "checkpoint", "geometry": places["fill"], "checkpoint": 99}, "no model version 99"),
        ({"kind": "checkpoint", "geometry": places["fill"]}, "checkpoint"),
        ({"kind": "fill", "geometry": {"type": "Point", "coordinates": [lon, lat]}, "class_name": "water"}, "Polygon"),
        ({"kind": "fill", "geometry": square(lon + 1, lat, 0.001), "class_name": "water"}, "covers no AOI"),
        ({"kind": "blur", "geometry": places["fill"]}, "kind"),
    ]
    for body, expected in cases:
        response = client.post("/api/projects/1/patches", json=body)
        assert response.status_code == 422, (body, response.text)
        assert expected in response.text, (body, response.text)
    # At most PEARL_PATCH_MAX_PER_PROJECT patches in force; the message names the limit.
    services = client.app.state.services  # type: ignore[attr-defined]
    settings = services.patches.settings
    services.patches.settings = settings.model_copy(update={"patch_max_per_project": len(before)})
    try:
        body = {"kind": "fill", "geometry": places["fill"], "class_name": "water"}
        refused = client.post("/api/projects/1/patches", json=body)
        assert refused.status_code == 422 and "PEARL_PATCH_MAX_PER_PROJECT" in refused.json()["detail"]
    finally:
        services.patches.settings = settings
    assert client.get("/api/projects/1/patches").json() == before
    assert client.delete("/api/projects/1/patches/987654").status_code == 404
    assert client.post("/api/projects/1/patches/987654/labels").status_code == 404
    paint = next(p for p in before if p["kind"] == "checkpoint")
    refused = client.post(f"/api/projects/1/patches/{paint['id']}/labels")
    assert refused.status_code == 422 and "fill patch" in refused.json()["detail"]


@pytest.mark.slow
def test_a_versions_lineage_in_mlflow_names_its_patches(
    client: TestClient, settings: Settings, aoi: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    from pearl_pipelines.services import mlflow_server

    monkeypatch.setattr(version_store, "RETRY_S", 0.5)
    live = client.get("/api/projects/1/patches").json()
    assert live  # the tests above left patches in force
    with mlflow_server(tmp_path, settings.mlflow_port):
        job = client.post("/api/projects/1/retrain", json={"aoi_id": aoi["id"]}).json()
        assert wait_job(client, job["id"])["state"] == "done"
        mlflow = MlflowClient(settings.resolved_mlflow_uri)

        def newest() -> Any:
            versions = client.get("/api/projects/1/checkpoints", params={"all_versions": True}).json()
            return max(versions, key=lambda m: m["id"])["mlflow_version"]

        registered = _until(newest)
        version = mlflow.get_model_version("pearl-project-1", registered)
        assert version.run_id is not None
        assert len(version.tags["pearl.patches_digest"]) == 16
        run = mlflow.get_run(version.run_id)
        assert run.data.tags["pearl.patches_digest"] == version.tags["pearl.patches_digest"]
        local = mlflow.download_artifacts(version.run_id, "patches/patches.geojson", str(tmp_path))
        import json

        collection = json.loads(Path(local).read_text())
        assert sorted(f["id"] for f in collection["features"]) == sorted(p["id"] for p in live)
        assert {f["properties"]["kind"] for f in collection["features"]} == {p["kind"] for p in live}
        geometries = {f["id"]: shape(f["geometry"]) for f in collection["features"]}
        assert all(geometries[p["id"]].equals(shape(p["geometry"])) for p in live)
        assert mapping(geometries[live[0]["id"]])["type"] == "Polygon"


def _until(what: Callable[[], Any], timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := what()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)
    return found
