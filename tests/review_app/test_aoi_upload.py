"""AOI upload (issue 24 item 3): GeoJSON, GeoPackage, KML and zipped Shapefile files built here with geopandas in
projected CRSs, one AOI per feature or all as one, every limit with the setting it names, bad files refused with
nothing stored; and the map of an uploaded (and a drawn) AOI covers its polygon, not its bounding box.

Real app (TestClient over the real services and worker), real files, real COGs.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from fastapi.testclient import TestClient
from rasterio.features import geometry_mask
from rasterio.warp import transform_geom
from shapely.geometry import MultiPolygon, Point, Polygon, box, mapping, shape

from pearl_pipelines.classes import NODATA_CLASS
from pearl_pipelines.geo.cog import write_cog
from pearl_pipelines.geo.masking import mask_outside
from pearl_pipelines.settings import Settings
from tests.review_app.conftest import center, new_home, wait_job, wait_ready

MAX_BYTES = 400_000
MAX_FEATURES = 20
MAX_VERTICES = 300
MAX_KM2 = 1.0
UPLOAD = "/api/projects/1/aois/upload"


@pytest.fixture(scope="module")
def settings(review_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    base = new_home(tmp_path_factory, review_assets)
    limits = {
        "aoi_upload_max_bytes": MAX_BYTES,
        "aoi_upload_max_features": MAX_FEATURES,
        "aoi_max_vertices": MAX_VERTICES,
        "live_aoi_max_km2": MAX_KM2,
    }
    return base.model_copy(update=limits)


@pytest.fixture(scope="module")
def client(settings: Settings) -> Any:
    from review_app.main import create_app

    with TestClient(create_app(settings)) as test_client:
        wait_ready(test_client)
        yield test_client


@pytest.fixture(scope="module")
def utm(project: dict[str, Any]) -> Any:
    lon, lat = center(project)
    return gpd.GeoSeries([Point(lon, lat)], crs="EPSG:4326").estimate_utm_crs()


@pytest.fixture(scope="module")
def middle(project: dict[str, Any], utm: Any) -> tuple[float, float]:
    """The imagery's centre in the UTM CRS."""
    point = gpd.GeoSeries([Point(*center(project))], crs="EPSG:4326").to_crs(utm).iloc[0]
    return point.x, point.y


def frame(geoms: list[Any], crs: Any, **columns: list[Any]) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(columns, geometry=geoms, crs=crs)


def file_bytes(gdf: gpd.GeoDataFrame, tmp_path: Path, name: str, driver: str) -> bytes:
    path = tmp_path / name
    gdf.to_file(path, driver=driver, engine="pyogrio")
    return path.read_bytes()


def zipped_shapefile(gdf: gpd.GeoDataFrame, tmp_path: Path, stem: str, *, drop: tuple[str, ...] = ()) -> bytes:
    folder = tmp_path / f"{stem}_shp"
    folder.mkdir()
    gdf.to_file(folder / f"{stem}.shp", engine="pyogrio")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for part in sorted(folder.iterdir()):
            if part.suffix not in drop:
                archive.write(part, part.name)
    return buffer.getvalue()


def upload(client: TestClient, filename: str, content: bytes, **form: str) -> Any:
    return client.post(UPLOAD, files={"file": (filename, content, "application/octet-stream")}, data=form)


def n_aois(client: TestClient) -> int:
    return len(client.get("/api/projects/1/aois").json())


def refused(client: TestClient, filename: str, content: bytes, status: int = 422, **form: str) -> str:
    """The refusal's message, after checking that nothing was stored."""
    before = n_aois(client)
    response = upload(client, filename, content, **form)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) <= {"detail", "errors"} and "Traceback" not in response.text
    assert n_aois(client) == before
    return body["detail"]


def lonlat_area_close(aoi: dict[str, Any], geom: Any, crs: Any) -> None:
    """The stored lon/lat AOI is the uploaded polygon, reprojected (same area in the UTM CRS within 0.5%)."""
    back = shape(transform_geom("EPSG:4326", crs, aoi["geometry"]))
    assert back.symmetric_difference(geom).area < 0.005 * geom.area


# -- formats, CRSs, grouping --------------------------------------------------------------------------------------
def test_geopackage_per_feature_in_utm_with_a_multipolygon(
    client: TestClient, tmp_path: Path, utm: Any, middle: tuple[float, float]
) -> None:
    x, y = middle
    square = box(x - 150, y - 150, x, y)
    two = MultiPolygon([box(x + 20, y + 20, x + 120, y + 120), box(x + 200, y + 20, x + 300, y + 120)])
    content = file_bytes(frame([square, two], utm, name=["Parcel A", "Parcels B"]), tmp_path, "fields.gpkg", "GPKG")
    response = upload(client, "fields.gpkg", content)
    assert response.status_code == 201, response.text
    made = response.json()
    assert [a["name"] for a in made] == ["Parcel A", "Parcels B"]
    assert made[1]["geometry"]["type"] == "MultiPolygon"
    lonlat_area_close(made[0], square, utm)
    lonlat_area_close(made[1], two, utm)
    assert made[0]["area_km2"] == pytest.approx(0.0225, rel=0.01)
    listed = {a["id"] for a in client.get("/api/projects/1/aois").json()}
    assert {a["id"] for a in made} <= listed


def test_geojson_in_utm_all_features_as_one(
    client: TestClient, tmp_path: Path, utm: Any, middle: tuple[float, float]
) -> None:
    x, y = middle
    parts = [box(x - 400, y - 400, x - 300, y - 300), box(x - 250, y - 400, x - 150, y - 300)]
    content = file_bytes(frame(parts, utm, name=["a", "b"]), tmp_path, "blocks.geojson", "GeoJSON")
    assert b"EPSG" in content  # the file says its CRS (not lon/lat): the server reprojects it
    response = upload(client, "blocks.geojson", content, grouping="one")
    assert response.status_code == 201, response.text
    (aoi,) = response.json()
    assert aoi["name"] == "blocks" and aoi["geometry"]["type"] == "MultiPolygon"
    lonlat_area_close(aoi, MultiPolygon(parts), utm)


def test_kml_per_feature_named_by_a_chosen_attribute(
    client: TestClient, tmp_path: Path, utm: Any, middle: tuple[float, float]
) -> None:
    x, y = middle
    tri = Polygon([(x + 300, y - 300), (x + 450, y - 300), (x + 300, y - 150)])
    gdf = frame([tri], utm, name=["ignored"], owner=["Farm 7"]).to_crs("EPSG:4326")  # KML is lon/lat by definition
    content = file_bytes(gdf, tmp_path, "farm.kml", "KML")
    response = upload(client, "farm.kml", content, name_field="owner")
    assert response.status_code == 201, response.text
    (aoi,) = response.json()
    assert aoi["name"] == "Farm 7"
    lonlat_area_close(aoi, tri, utm)
    detail = refused(client, "farm.kml", content, name_field="parcel_id")
    assert "no attribute 'parcel_id'" in detail and "owner" in detail


def test_zipped_shapefile_in_web_mercator(
    client: TestClient, tmp_path: Path, utm: Any, middle: tuple[float, float]
) -> None:
    x, y = middle
    geom = box(x + 150, y + 200, x + 300, y + 350)
    gdf = frame([geom], utm, id=[1]).to_crs("EPSG:3857")
    response = upload(client, "Parcels 2024.zip", zipped_shapefile(gdf, tmp_path, "parcels"))
    assert response.status_code == 201, response.text
    (aoi,) = response.json()
    assert aoi["name"] == "Parcels 2024"  # no name attribute: the file's name
    lonlat_area_close(aoi, geom, utm)


# -- limits, each naming its setting -------------------------------------------------------------------------------
def test_too_many_features(client: TestClient, tmp_path: Path, utm: Any, middle: tuple[float, float]) -> None:
    x, y = middle
    boxes = [box(x + 10 * i, y, x + 10 * i + 8, y + 8) for i in range(MAX_FEATURES + 1)]
    detail = refused(client, "many.gpkg", file_bytes(frame(boxes, utm), tmp_path, "many.gpkg", "GPKG"))
    assert f"more than {MAX_FEATURES} features" in detail and "PEARL_AOI_UPLOAD_MAX_FEATURES" in detail


def test_too_many_vertices(client: TestClient, tmp_path: Path, utm: Any, middle: tuple[float, float]) -> None:
    x, y = middle
    circle = Point(x, y).buffer(100, quad_segs=MAX_VERTICES // 2)  # about 2 x MAX_VERTICES vertices
    content = file_bytes(frame([circle], utm, name=["round field"]), tmp_path, "round.geojson", "GeoJSON")
    detail = refused(client, "round.geojson", content)
    assert "'round field'" in detail and f"an AOI may have {MAX_VERTICES}" in detail
    assert "PEARL_AOI_MAX_VERTICES" in detail and "nothing was stored" in detail


def test_too_large_for_live_mapping(client: TestClient, tmp_path: Path, utm: Any, middle: tuple[float, float]) -> None:
    x, y = middle
    small, big = box(x, y, x + 100, y + 100), box(x - 600, y - 600, x + 600, y + 600)  # 1.44 km^2 > MAX_KM2
    content = file_bytes(frame([small, big], utm, name=["ok", "county"]), tmp_path, "two.gpkg", "GPKG")
    detail = refused(client, "two.gpkg", content)
    assert detail.startswith("1 of 2 AOIs refused, nothing was stored")
    assert "'county' is 1.4 km^2" in detail and f"up to {MAX_KM2:g} km^2" in detail
    assert "PEARL_LIVE_AOI_MAX_KM2" in detail
    # The same two as one AOI are too large as well.
    assert "PEARL_LIVE_AOI_MAX_KM2" in refused(client, "two.gpkg", content, grouping="one")


def test_file_too_large(client: TestClient, utm: Any, middle: tuple[float, float]) -> None:
    x, y = middle
    feature = {"type": "Feature", "properties": {"note": "x" * MAX_BYTES}, "geometry": mapping(box(x, y, x + 9, y + 9))}
    content = json.dumps({"type": "FeatureCollection", "features": [feature]}).encode()
    detail = refused(client, "huge.geojson", content, status=413)
    assert "PEARL_AOI_UPLOAD_MAX_BYTES" in detail
    # A zip that expands past the limit (a zip bomb) is refused before GDAL reads it.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb.shp", b"\0" * (MAX_BYTES * 4))
    assert len(buffer.getvalue()) < MAX_BYTES
    assert "PEARL_AOI_UPLOAD_MAX_BYTES" in refused(client, "bomb.zip", buffer.getvalue(), status=413)


def test_over_the_aoi_quota(
    client: TestClient, settings: Settings, tmp_path: Path, utm: Any, middle: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = middle
    monkeypatch.setattr(settings, "quota_aois", n_aois(client) + 2)
    boxes = [box(x + 10 * i, y, x + 10 * i + 8, y + 8) for i in range(3)]
    content = file_bytes(frame(boxes, utm), tmp_path, "q.gpkg", "GPKG")
    detail = refused(client, "q.gpkg", content, status=403)
    assert "the file adds 3" in detail and "PEARL_QUOTA_AOIS" in detail
    assert upload(client, "q.gpkg", content, grouping="one").status_code == 201  # as one AOI it fits


# -- bad files ---------------------------------------------------------------------------------------------------
def test_bad_files_are_refused_and_nothing_is_stored(
    client: TestClient, tmp_path: Path, utm: Any, middle: tuple[float, float]
) -> None:
    x, y = middle
    polygon = box(x, y, x + 50, y + 50)
    cases: list[tuple[str, bytes, str]] = [
        ("photo.gpkg", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, "not a GeoPackage"),
        ("notes.geojson", b"hello, this is not json", "not GeoJSON"),
        ("list.json", b'{"type": "Topology", "objects": {}}', "not GeoJSON polygons"),
        ("empty.gpkg", b"", "is empty (0 bytes)"),
        ("aoi.txt", b"POLYGON ((0 0, 1 0, 1 1, 0 0))", "not an AOI file this app reads"),
        ("not.kml", b"<html><body>hi</body></html>", "not KML"),
        ("not.zip", b"PK but not really a zip", "not a zip archive"),
    ]
    # A VRT (which would read other files on the server) or a GDAL pipeline disguised as GeoJSON / KML.
    vrt = (
        b'<OGRVRTDataSource><OGRVRTLayer name="x"><SrcDataSource>/etc/passwd</SrcDataSource>'
        b"</OGRVRTLayer></OGRVRTDataSource>"
    )
    cases.append(("sneaky.kml", vrt, "not KML"))
    cases.append(("sneaky.geojson", vrt, "not GeoJSON"))
    pipeline = b'{"type": "gdal_streamed_alg", "command_line": "gdal vector read /etc/passwd"}'
    cases.append(("pipeline.geojson", pipeline, "not GeoJSON polygons"))
    # No features, points only, no CRS, a zip without a .shp.
    cases.append(("none.geojson", b'{"type": "FeatureCollection", "features": []}', "no features"))
    points = file_bytes(frame([Point(x, y), Point(x + 5, y)], utm), tmp_path, "pts.geojson", "GeoJSON")
    cases.append(("wells.geojson", points, "AOIs are polygons; the file holds Point features only"))
    no_prj = zipped_shapefile(frame([polygon], utm), tmp_path, "noprj", drop=(".prj",))
    cases.append(("noprj.zip", no_prj, "has no CRS (a Shapefile needs its .prj in the zip)"))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", "the shapefile is missing")
    cases.append(("parts.zip", buffer.getvalue(), "holds no Shapefile (.shp), only readme.txt"))
    crossing = Polygon([(x, y), (x + 50, y + 50), (x + 50, y), (x, y + 50)])  # a bow tie: repaired, not refused
    mixed = file_bytes(frame([polygon, Point(x, y)], utm, name=["field", "well"]), tmp_path, "mix.gpkg", "GPKG")
    cases.append(("mix.gpkg", mixed, "1 of 2 AOIs refused, nothing was stored: feature 2 ('well') is a Point"))
    for filename, content, expected in cases:
        assert expected in refused(client, filename, content), filename
    bow = file_bytes(frame([crossing], utm), tmp_path, "bow.geojson", "GeoJSON")
    response = upload(client, "bow.geojson", bow)
    assert response.status_code == 201 and response.json()[0]["area_km2"] > 0


def test_outside_the_imagery_stores_nothing(client: TestClient, tmp_path: Path, utm: Any, middle: Any) -> None:
    x, y = middle
    inside, far = box(x, y, x + 50, y + 50), box(x + 50_000, y, x + 50_050, y + 50)
    content = file_bytes(frame([inside, far], utm, name=["here", "far away"]), tmp_path, "far.gpkg", "GPKG")
    detail = refused(client, "far.gpkg", content)
    assert "1 of 2 AOIs refused" in detail and "'far away'" in detail and "outside the project's imagery" in detail


def test_the_upload_route_takes_a_form_from_this_origin_only(client: TestClient) -> None:
    content = b'{"type": "FeatureCollection", "features": []}'
    files = {"file": ("a.geojson", content, "application/geo+json")}
    foreign = client.post(UPLOAD, files=files, headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403
    # The JSON-only rule still holds everywhere else: a form to the AOI route is refused before any route runs.
    other = client.post("/api/projects/1/aois", files=files)
    assert other.status_code == 415 and "application/json" in other.json()["detail"]
    text = client.post(UPLOAD, content=content, headers={"Content-Type": "text/plain"})
    assert text.status_code == 415 and "multipart/form-data" in text.json()["detail"]


# -- the map covers the polygon only ------------------------------------------------------------------------------
def _inside_outside(classes_tif: bytes, geometry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    with rasterio.MemoryFile(classes_tif) as mem, mem.open() as src:
        band = src.read(1)
        footprint = transform_geom("EPSG:4326", src.crs, geometry)
        outside = geometry_mask([footprint], out_shape=band.shape, transform=src.transform)
    return band[~outside], band[outside]


def test_an_uploaded_triangle_is_predicted_inside_only(
    client: TestClient, tmp_path: Path, utm: Any, middle: tuple[float, float]
) -> None:
    x, y = middle
    tri = Polygon([(x - 300, y - 250), (x + 100, y - 250), (x - 300, y + 150)])
    content = file_bytes(frame([tri], utm, name=["triangle"]), tmp_path, "tri.gpkg", "GPKG")
    response = upload(client, "tri.gpkg", content)
    assert response.status_code == 201, response.text
    (aoi,) = response.json()
    job = client.post(f"/api/projects/1/aois/{aoi['id']}/inference").json()
    assert wait_job(client, job["id"])["state"] == "done"
    cog = client.get(f"/api/projects/1/aois/{aoi['id']}/export/classes.tif")
    assert cog.status_code == 200
    inside, outside = _inside_outside(cog.content, aoi["geometry"])
    assert outside.size > 0.3 * inside.size  # the bounding box's empty half is in the file ...
    assert (outside == NODATA_CLASS).all()  # ... as nodata
    assert (inside != NODATA_CLASS).mean() > 0.99
    rows = client.get(f"/api/projects/1/aois/{aoi['id']}/export/areas.csv").text.splitlines()[1:]
    assert sum(int(r.split(",")[3]) for r in rows) == int((inside != NODATA_CLASS).sum())
    # "Label here next" points inside the triangle too, never in the bounding box's empty half.
    suggested = client.get(f"/api/projects/1/aois/{aoi['id']}/suggestions", params={"n": 12}).json()["features"]
    assert len(suggested) >= 6
    polygon = shape(aoi["geometry"])
    assert all(polygon.covers(shape(f["geometry"])) for f in suggested)


def test_mask_outside_blanks_what_lies_outside_and_rewrites_nothing_twice(tmp_path: Path) -> None:
    transform = rasterio.transform.from_origin(500_000, 4_300_000, 1.0, 1.0)
    for name, value, nodata in (("classes.tif", 3, NODATA_CLASS), ("confidence.tif", 200, 0)):
        write_cog(
            tmp_path / name, np.full((64, 64), value, np.uint8), crs="EPSG:32618", transform=transform, nodata=nodata
        )
    # An L: edges on pixel edges, so no pixel centre is in doubt after the round trip through lon/lat.
    x, y = 500_000, 4_300_000
    tri = Polygon([(x, y), (x + 64, y), (x + 64, y - 20), (x + 20, y - 20), (x + 20, y - 64), (x, y - 64)])
    lonlat = transform_geom("EPSG:32618", "EPSG:4326", mapping(tri))
    blanked = mask_outside(lonlat, tmp_path)
    with rasterio.open(tmp_path / "classes.tif") as src:
        band = src.read(1)
        outside = geometry_mask([mapping(tri)], out_shape=band.shape, transform=src.transform)
        assert src.nodata == NODATA_CLASS
    with rasterio.open(tmp_path / "confidence.tif") as src:
        confidence = src.read(1)
    assert blanked == int(outside.sum()) > 1500
    assert (band[outside] == NODATA_CLASS).all() and (band[~outside] == 3).all()
    assert (confidence[outside] == 0).all() and (confidence[~outside] == 200).all()
    mtime = (tmp_path / "classes.tif").stat().st_mtime_ns
    assert mask_outside(lonlat, tmp_path) == 0
    assert (tmp_path / "classes.tif").stat().st_mtime_ns == mtime


def test_a_drawn_l_shape_is_predicted_inside_only(client: TestClient, utm: Any, middle: tuple[float, float]) -> None:
    x, y = middle
    ell = Polygon([(x, y), (x + 400, y), (x + 400, y + 120), (x + 120, y + 120), (x + 120, y + 400), (x, y + 400)])
    geometry = transform_geom(utm, "EPSG:4326", mapping(ell))
    created = client.post("/api/projects/1/aois", json={"name": "drawn L", "geometry": geometry})
    assert created.status_code == 201, created.text
    aoi = created.json()
    job = client.post(f"/api/projects/1/aois/{aoi['id']}/inference").json()
    assert wait_job(client, job["id"])["state"] == "done"
    inside, outside = _inside_outside(
        client.get(f"/api/projects/1/aois/{aoi['id']}/export/classes.tif").content, aoi["geometry"]
    )
    assert outside.size > 0.9 * inside.size  # the L's empty corner is about half of its bounding box
    assert (outside == NODATA_CLASS).all() and (inside != NODATA_CLASS).mean() > 0.99
