"""Compare two versions as maps (routers/compare.py): the change table against a numpy count on the two kept COGs,
the change layer's pixels and tiles, two AOIs of the same place (their overlap), a second compare that is instant,
the disk bound, and the errors (unknown AOI or version, a map not made yet, maps that do not overlap).

Raster-level: pearl_pipelines/geo/change.py with map B on another grid (another date's imagery: coarser pixels,
shifted), checked against B's pixels repeated onto A's grid by hand.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any

import morecantile
import numpy as np
import pytest
import rasterio
from affine import Affine
from fastapi.testclient import TestClient
from PIL import Image
from rasterio.features import geometry_mask
from rasterio.warp import transform_geom

from pearl_pipelines.classes import NODATA_CLASS
from pearl_pipelines.geo.change import NoOverlap, compare_maps
from pearl_pipelines.geo.cog import write_cog
from pearl_pipelines.layout import CLASSES_FILE, ProjectPaths
from pearl_pipelines.settings import Settings
from tests.review_app.conftest import center, square, wait_job, wait_ready
from tests.review_app.data import class_places

CRS = "EPSG:32618"


# -- the raster part -----------------------------------------------------------------------------------------------
def _cog(path: Path, data: np.ndarray, transform: Affine) -> Path:
    return write_cog(path, data.astype(np.uint8), crs=CRS, transform=transform, nodata=NODATA_CLASS)


def test_change_of_a_map_on_another_grid_is_counted_on_the_first_maps_grid(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, size=(40, 60))
    a[:3] = NODATA_CLASS  # e.g. outside the AOI polygon: never a change
    a_transform = Affine(1.0, 0, 500_000.0, 0, -1.0, 4_300_000.0)
    # B: 2 m pixels from another date's imagery, starting 10 m east and 6 m south of A (its pixel edges on A's).
    b = rng.integers(0, 4, size=(30, 40))
    b[5, :] = NODATA_CLASS
    b_transform = Affine(2.0, 0, 500_010.0, 0, -2.0, 4_300_000.0 - 6)
    change = compare_maps(_cog(tmp_path / "a.tif", a, a_transform), _cog(tmp_path / "b.tif", b, b_transform))

    # B's pixels repeated onto A's grid by hand, over the overlap (A's columns 10.., rows 6..).
    b_on_a = np.repeat(np.repeat(b, 2, axis=0), 2, axis=1)[: 40 - 6, : 60 - 10]
    a_part = a[6:, 10:]
    valid = (a_part != NODATA_CLASS) & (b_on_a != NODATA_CLASS)
    expected = np.zeros((256, 256), dtype=np.int64)
    np.add.at(expected, (a_part[valid], b_on_a[valid]), 1)
    assert change.change.shape == a_part.shape
    assert change.transform == Affine(1.0, 0, 500_010.0, 0, -1.0, 4_300_000.0 - 6)
    assert np.array_equal(change.pairs, expected)
    assert change.unchanged_pixels == int(np.trace(expected))
    assert np.array_equal(change.change, np.where(valid & (a_part != b_on_a), b_on_a, NODATA_CLASS))
    rows = change.rows()
    assert [r.pixels for r in rows] == sorted((r.pixels for r in rows), reverse=True)
    assert all(r.source != r.target for r in rows)
    assert sum(r.pixels for r in rows) + change.unchanged_pixels == int(valid.sum())
    assert rows[0].hectares == rows[0].pixels * 1.0 / 10_000  # 1 m^2 pixels of A's grid


def test_maps_that_do_not_overlap_are_refused(tmp_path: Path) -> None:
    a = _cog(tmp_path / "a.tif", np.zeros((10, 10)), Affine(1.0, 0, 500_000.0, 0, -1.0, 4_300_000.0))
    b = _cog(tmp_path / "b.tif", np.zeros((10, 10)), Affine(1.0, 0, 501_000.0, 0, -1.0, 4_300_000.0))
    with pytest.raises(NoOverlap, match="do not overlap"):
        compare_maps(a, b)
    empty = _cog(tmp_path / "c.tif", np.full((10, 10), NODATA_CLASS), Affine(1.0, 0, 500_000.0, 0, -1.0, 4_300_000.0))
    with pytest.raises(NoOverlap, match="no mapped pixel"):
        compare_maps(a, empty)


# -- the API ---------------------------------------------------------------------------------------------------------
def _bounds(aoi: dict[str, Any]) -> tuple[float, float, float, float]:
    ring = aoi["geometry"]["coordinates"][0]
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    return min(xs), min(ys), max(xs), max(ys)


@pytest.fixture(scope="module")
def retrained(client: TestClient, settings: Settings, aoi: dict[str, Any]) -> int:
    """A second model version (v1) after labels of three classes: the AOI's current map is now v1's."""
    for name in ("water", "tree_canopy", "structures"):
        for place in class_places(settings, _bounds(aoi), name, n=3):
            point = {"type": "Point", "coordinates": list(place[0])}
            assert (
                client.post("/api/projects/1/labels", json={"class_name": name, "geometry": point}).status_code == 201
            )
    job = client.post("/api/projects/1/retrain", json={"aoi_id": aoi["id"]}).json()
    assert wait_job(client, job["id"])["state"] == "done"
    current = client.get("/api/projects/1").json()["model"]["current_version"]
    assert current == 1
    return int(current)


def _paths(settings: Settings) -> ProjectPaths:
    return ProjectPaths.of(settings.home_abs, 1)


def _compare(client: TestClient, **query: int) -> Any:
    return client.get("/api/projects/1/compare", params=query)


def _prepare(client: TestClient, **body: int) -> dict[str, Any]:
    response = client.post("/api/projects/1/compare", json=body)
    assert response.status_code == 202, response.text
    job = wait_job(client, response.json()["id"])
    assert job["state"] == "done", job
    return job


def _expected_pairs(a: np.ndarray, b: np.ndarray, valid: np.ndarray) -> dict[tuple[int, int], int]:
    keys, counts = np.unique(np.stack([a[valid], b[valid]]), axis=1, return_counts=True)
    return {(int(s), int(t)): int(n) for (s, t), n in zip(keys.T, counts, strict=True)}


def test_change_table_equals_a_numpy_count_of_the_two_versions_maps(
    client: TestClient, settings: Settings, aoi: dict[str, Any], retrained: int
) -> None:
    query = {"aoi": aoi["id"], "a": 0, "b": retrained}
    missing = _compare(client, **query)
    assert missing.status_code == 409 and "model v0" in missing.json()["detail"]  # v0's layer was replaced
    job = _prepare(client, **query)
    assert "maps made: v0" in job["message"]
    response = _compare(client, **query)
    assert response.status_code == 200, response.text
    out = response.json()

    names = [c["name"] for c in client.get("/api/projects/1").json()["classes"]]
    paths = _paths(settings)
    with rasterio.open(paths.version_map_dir(aoi["id"], 0) / CLASSES_FILE) as src:
        a, transform, crs = src.read(1), src.transform, src.crs
    with rasterio.open(paths.version_map_dir(aoi["id"], retrained) / CLASSES_FILE) as src:
        b = src.read(1)
        assert src.transform == transform  # one AOI, one cache: one grid
    footprint = transform_geom("EPSG:4326", crs, aoi["geometry"])
    inside = ~geometry_mask([footprint], out_shape=a.shape, transform=transform)
    valid = inside & (a != NODATA_CLASS) & (b != NODATA_CLASS)
    pairs = _expected_pairs(a, b, valid)
    pixel_m2 = abs(transform.a * transform.e)
    changed = {(names.index(r["from_class"]), names.index(r["to_class"])): r["pixels"] for r in out["rows"]}
    assert changed == {k: n for k, n in pairs.items() if k[0] != k[1]}
    assert changed, "retraining on labels changed no pixel: nothing was compared"
    assert [r["pixels"] for r in out["rows"]] == sorted(changed.values(), reverse=True)
    for r in out["rows"]:
        assert r["hectares"] == pytest.approx(r["pixels"] * pixel_m2 / 1e4, abs=1e-4)
    unchanged = sum(n for k, n in pairs.items() if k[0] == k[1])
    assert out["unchanged_hectares"] == pytest.approx(unchanged * pixel_m2 / 1e4, abs=1e-4)
    assert out["compared_hectares"] == pytest.approx(valid.sum() * pixel_m2 / 1e4, abs=1e-4)

    # The change raster: B's class where it differs, nodata elsewhere (as a COG), and served as tiles.
    folder = paths.change_dir(aoi["id"], 0, aoi["id"], retrained)
    with rasterio.open(folder / "change.tif") as src:
        change = src.read(1)
        assert src.nodata == NODATA_CLASS and src.transform == transform
    assert np.array_equal(change, np.where(valid & (a != b), b, NODATA_CLASS))
    tilejson = client.get(out["tilejson_change"]).json()
    lon, lat = center(client.get("/api/projects/1").json())
    tile = _tile_at(client, tilejson["tiles"][0], lon, lat)
    assert (tile[..., 3] > 0).any(), "the change layer shows no changed pixel"
    for key in ("tilejson_a", "tilejson_b"):
        assert (_tile_at(client, client.get(out[key]).json()["tiles"][0], lon, lat)[..., 3] > 0).any()

    # A second compare is instant: nothing predicted, the table read back.
    again = _prepare(client, **query)
    assert "maps made" not in again["message"]
    started = time.perf_counter()
    assert _compare(client, **query).json() == out
    assert time.perf_counter() - started < 1.0


def _tile_at(client: TestClient, template: str, lon: float, lat: float, z: int = 15) -> np.ndarray:
    t = morecantile.tms.get("WebMercatorQuad").tile(lon, lat, z)
    url = template.replace("{z}", str(z)).replace("{x}", str(t.x)).replace("{y}", str(t.y))
    response = client.get(url)
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGBA"))


def test_two_aois_of_the_same_place_are_compared_over_their_overlap(
    client: TestClient, settings: Settings, aoi: dict[str, Any], retrained: int
) -> None:
    """Map B from another AOI (as another date's imagery would give): only the overlap of the two polygons counts."""
    lon, lat = center(client.get("/api/projects/1").json())
    created = client.post(
        "/api/projects/1/aois", json={"name": "later", "geometry": square(lon + 0.0015, lat + 0.001, 0.002)}
    )
    assert created.status_code == 201, created.text
    other = created.json()
    job = client.post(f"/api/projects/1/aois/{other['id']}/inference").json()
    assert wait_job(client, job["id"])["state"] == "done"  # predicted with the current model (v1)

    query = {"aoi": aoi["id"], "a": retrained, "aoi_b": other["id"], "b": retrained}
    assert _compare(client, **query).status_code == 200  # both are current maps of v1: nothing to predict
    out = _compare(client, **query).json()
    assert out["aoi_b"] == other["id"]

    paths = _paths(settings)
    with rasterio.open(paths.version_map_dir(aoi["id"], retrained) / CLASSES_FILE) as src:
        a, ta, crs = src.read(1), src.transform, src.crs
    with rasterio.open(paths.version_map_dir(other["id"], retrained) / CLASSES_FILE) as src:
        b, tb = src.read(1), src.transform
    # Both maps are on the imagery's pixel grid: B's pixels sit a whole number of pixels from A's.
    dc, dr = (tb.c - ta.c) / ta.a, (tb.f - ta.f) / ta.e
    assert dc == round(dc) and dr == round(dr) and tb.a == ta.a
    dc, dr = round(dc), round(dr)
    rows = slice(max(dr, 0), min(a.shape[0], dr + b.shape[0]))
    cols = slice(max(dc, 0), min(a.shape[1], dc + b.shape[1]))
    a_part = a[rows, cols]
    b_part = b[rows.start - dr : rows.stop - dr, cols.start - dc : cols.stop - dc]
    window_transform = ta @ Affine.translation(cols.start, rows.start)
    inside = np.ones(a_part.shape, dtype=bool)
    for geometry in (aoi["geometry"], other["geometry"]):
        footprint = transform_geom("EPSG:4326", crs, geometry)
        inside &= ~geometry_mask([footprint], out_shape=a_part.shape, transform=window_transform)
    valid = inside & (a_part != NODATA_CLASS) & (b_part != NODATA_CLASS)
    pairs = _expected_pairs(a_part, b_part, valid)
    pixel_m2 = abs(ta.a * ta.e)
    assert out["compared_hectares"] == pytest.approx(valid.sum() * pixel_m2 / 1e4, abs=1e-4)
    assert out["compared_hectares"] < 0.75 * (a != NODATA_CLASS).sum() * pixel_m2 / 1e4  # the overlap only
    names = [c["name"] for c in client.get("/api/projects/1").json()["classes"]]
    changed = {(names.index(r["from_class"]), names.index(r["to_class"])): r["pixels"] for r in out["rows"]}
    assert changed == {k: n for k, n in pairs.items() if k[0] != k[1]}
    west, _, _, north = out["bounds"]
    assert west >= _bounds(other)[0] - 1e-4 and north <= _bounds(aoi)[3] + 1e-4


def test_compare_errors_say_what_is_wrong(client: TestClient, aoi: dict[str, Any], retrained: int) -> None:
    unknown = _compare(client, aoi=aoi["id"], a=0, b=99)
    assert unknown.status_code == 404 and "version b=99" in unknown.json()["detail"]
    unknown = client.post("/api/projects/1/compare", json={"aoi": aoi["id"], "a": 77, "b": 0})
    assert unknown.status_code == 404 and "version a=77" in unknown.json()["detail"]
    no_aoi = _compare(client, aoi=987654, a=0, b=retrained)
    assert no_aoi.status_code == 404 and "987654" in no_aoi.json()["detail"]
    bad = _compare(client, aoi=aoi["id"], a=-1, b=0)
    assert bad.status_code == 422 and "a" in bad.json()["detail"]

    # An AOI elsewhere on the imagery: nothing in common with the first one.
    project = client.get("/api/projects/1").json()
    west, south, _, _ = project["imagery"]["bounds"]
    far = client.post(
        "/api/projects/1/aois", json={"name": "far", "geometry": square(west + 0.0012, south + 0.0012, 0.001)}
    ).json()
    not_predicted = client.post("/api/projects/1/compare", json={"aoi": far["id"], "a": 0, "b": retrained})
    assert not_predicted.status_code == 409 and "predict the AOI first" in not_predicted.json()["detail"]
    job = client.post(f"/api/projects/1/aois/{far['id']}/inference").json()
    assert wait_job(client, job["id"])["state"] == "done"
    apart = _compare(client, aoi=aoi["id"], a=retrained, aoi_b=far["id"], b=retrained)
    assert apart.status_code == 422 and "do not overlap" in apart.json()["detail"]


def test_the_compare_cache_stays_within_its_bound(
    client: TestClient, settings: Settings, aoi: dict[str, Any], retrained: int
) -> None:
    services = client.app.state.services  # type: ignore[attr-defined]
    compare = services.compare
    root = _paths(settings).compare_dir
    _prepare(client, aoi=aoi["id"], a=0, b=retrained)
    old = root / "maps" / f"aoi-{aoi['id']}" / "m999"  # a stale entry, larger than the bound
    old.mkdir(parents=True)
    (old / CLASSES_FILE).write_bytes(b"\0" * (2 << 20))
    past = time.time() - 3600
    os.utime(old, (past, past))
    compare.settings = settings.model_copy(update={"compare_max_bytes": 1 << 20})
    try:
        assert _compare(client, aoi=aoi["id"], a=0, b=retrained).status_code == 200
    finally:
        compare.settings = settings
    assert not old.exists()  # the least recently used went first
    assert (root / "maps" / f"aoi-{aoi['id']}" / "m0" / CLASSES_FILE).is_file()  # the ones in use stay


def test_a_map_of_another_project_of_the_same_place(
    client: TestClient, settings: Settings, aoi: dict[str, Any], retrained: int
) -> None:
    """Map B from another project over the same place (a project per imagery date): its AOI's map is compared on A's
    grid; the caller needs a role in both projects."""
    created = client.post(
        "/api/projects", json={"name": "Same place, later", "imagery": {"source": "local", "collection": "demo"}}
    )
    assert created.status_code == 201, created.text
    other = created.json()["id"]
    wait_ready(client, other)
    shifted = square(*center(client.get("/api/projects/1").json()), 0.0015)
    made = client.post(f"/api/projects/{other}/aois", json={"name": "later", "geometry": shifted})
    assert made.status_code == 201, made.text
    aoi_b = made.json()["id"]
    job = client.post(f"/api/projects/{other}/aois/{aoi_b}/inference").json()
    assert wait_job(client, job["id"])["state"] == "done"

    query = {"aoi": aoi["id"], "a": retrained, "project_b": other, "aoi_b": aoi_b, "b": 0}
    response = _compare(client, **query)
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["project_b"] == other and out["tilejson_b"].startswith(f"/tiles/compare/{other}/maps/{aoi_b}/0/")
    assert 0 < out["compared_hectares"] <= (0.003 * 111_000) ** 2 / 1e4  # within B's smaller AOI
    assert client.get(out["tilejson_change"]).status_code == 200
    assert client.get(out["tilejson_b"]).status_code == 200

    no_aoi = _compare(client, aoi=aoi["id"], a=0, b=0, project_b=other)
    assert no_aoi.status_code == 422 and "aoi_b" in no_aoi.json()["detail"]
    unknown = _compare(client, aoi=aoi["id"], a=0, b=0, project_b=987654, aoi_b=aoi_b)
    assert unknown.status_code == 404 and "987654" in unknown.json()["detail"]
    wrong = _compare(client, aoi=aoi["id"], a=0, b=0, project_b=other, aoi_b=aoi["id"])  # an AOI of project 1
    assert wrong.status_code == 404


def test_classes_of_map_b_are_matched_by_a_lookup_table(tmp_path: Path) -> None:
    transform = Affine(1.0, 0, 500_000.0, 0, -1.0, 4_300_000.0)
    a = _cog(tmp_path / "a.tif", np.array([[0, 1], [2, 2]]), transform)
    b = _cog(tmp_path / "b.tif", np.array([[1, 0], [2, NODATA_CLASS]]), transform)  # B's 0 and 1 are A's 1 and 0
    lut = np.full(256, NODATA_CLASS, dtype=np.uint8)
    lut[[0, 1, 2]] = [1, 0, 2]
    change = compare_maps(a, b, b_classes=lut)
    assert change.unchanged_pixels == 3 and change.compared_pixels == 3


def test_compare_tiles_take_ids_only_and_answer_one_404(
    client: TestClient, aoi: dict[str, Any], retrained: int
) -> None:
    out = _compare(client, aoi=aoi["id"], a=0, b=retrained).json()
    good = client.get(out["tilejson_change"])
    assert good.status_code == 200
    for path in (
        f"/tiles/compare/1/maps/{aoi['id']}/98765/WebMercatorQuad/tilejson.json",  # no such version's map
        f"/tiles/compare/1/maps/{aoi['id']}/01/WebMercatorQuad/tilejson.json",  # not an id the server made
        f"/tiles/compare/1/maps/{aoi['id']}/-1/WebMercatorQuad/tilejson.json",
        f"/tiles/compare/1/changes/{aoi['id']}/0/987654/1/WebMercatorQuad/tilejson.json",  # no such AOI
        f"/tiles/compare/1/changes/{aoi['id']}/1/{aoi['id']}/0/WebMercatorQuad/tilejson.json",  # never computed
        "/tiles/compare/1/maps/..%2F..%2Fstate.json/0/WebMercatorQuad/tilejson.json",
    ):
        response = client.get(path)
        assert response.status_code == 404 and response.json() == {"detail": "Not Found"}, path
