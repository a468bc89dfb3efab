"""Every bad input gets a clear 4xx that says what is accepted, and nothing is stored (checked in the DB)."""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pearl_pipelines.labels.store import LabelStore
from pearl_pipelines.settings import Settings
from tests.conftest import free_port
from tests.review_app.conftest import center, new_home, square

DEAD_STAC_API = f"http://127.0.0.1:{free_port()}"  # a configured STAC API nothing answers at


@pytest.fixture(scope="module")
def settings(review_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return new_home(tmp_path_factory, review_assets).model_copy(update={"stac_apis": {"down": DEAD_STAC_API}})


@pytest.fixture(scope="module")
def store(settings: Settings) -> LabelStore:
    return LabelStore(settings.resolved_label_store_url)


@pytest.fixture
def unchanged(store: LabelStore) -> Iterator[None]:
    """Asserts that the test stored nothing: same labels, AOIs, classes and label events."""
    before = (store.max_label_id(), len(store.list_aois(1)), store.schema(1).names, store.max_event_id())
    yield
    assert (store.max_label_id(), len(store.list_aois(1)), store.schema(1).names, store.max_event_id()) == before


def _detail(response: Any) -> str:
    body = response.json()
    assert set(body) <= {"detail", "errors"}, body  # no stack trace, no internals
    assert "Traceback" not in response.text
    return body["detail"]


def _label(client: TestClient, geometry: Any, class_name: str = "water", **extra: Any) -> Any:
    return client.post("/api/projects/1/labels", json={"class_name": class_name, "geometry": geometry, **extra})


def test_retrain_without_labels_is_refused(client: TestClient, unchanged: None) -> None:
    response = client.post("/api/projects/1/retrain", json={})
    assert response.status_code == 422
    assert "no labels" in _detail(response)


@pytest.mark.parametrize(
    ("geometry", "expected"),
    [
        ({"type": "Polygon"}, "not valid GeoJSON"),
        ({"coordinates": [1, 2]}, "GeoJSON geometry"),
        ({"type": "Pointy", "coordinates": [1, 2]}, "not valid GeoJSON"),
        ({"type": "LineString", "coordinates": [[-76.42, 38.97], [-76.41, 38.98]]}, "Polygon or MultiPolygon"),
        (
            {
                "type": "Polygon",
                "coordinates": [[[-76.43, 38.97], [-76.42, 38.98], [-76.42, 38.97], [-76.43, 38.98], [-76.43, 38.97]]],
            },
            "does not cross itself",
        ),
        (square(376600.0, 4315400.0, 100.0), "not lon/lat degrees"),  # UTM metres sent as lon/lat
        (square(-76.42, 38.97, 0.05), "live mapping accepts AOIs up to 25 km^2"),  # ~ 96 km^2
        (square(10.0, 50.0, 0.001), "outside the project's imagery"),
    ],
    ids=[
        "no-coordinates",
        "no-type",
        "unknown-type",
        "line",
        "self-intersecting",
        "wrong-crs",
        "oversize",
        "elsewhere",
    ],
)
def test_bad_aoi(client: TestClient, unchanged: None, geometry: dict[str, Any], expected: str) -> None:
    response = client.post("/api/projects/1/aois", json={"geometry": geometry})
    assert response.status_code == 422, response.text
    assert expected in _detail(response)


def test_aoi_with_unknown_crs(client: TestClient, project: dict[str, Any], unchanged: None) -> None:
    response = client.post(
        "/api/projects/1/aois", json={"geometry": square(*center(project), 0.001), "crs": "EPSG:999999"}
    )
    assert response.status_code == 422
    assert "unknown CRS" in _detail(response)


def test_aoi_in_its_own_crs_is_accepted(client: TestClient, project: dict[str, Any], store: LabelStore) -> None:
    """The counterpart of the wrong-CRS case: UTM coordinates with crs=EPSG:26918 are transformed, not refused."""
    from pyproj import Transformer

    x, y = Transformer.from_crs("EPSG:4326", "EPSG:26918", always_xy=True).transform(*center(project))
    before = len(store.list_aois(1))
    response = client.post("/api/projects/1/aois", json={"geometry": square(x, y, 60.0), "crs": "EPSG:26918"})
    assert response.status_code == 201, response.text
    assert 0.012 < response.json()["area_km2"] < 0.016
    assert len(store.list_aois(1)) == before + 1


@pytest.fixture(scope="module")
def aoi_id(client: TestClient, project: dict[str, Any]) -> int:
    lon, lat = center(project)
    return client.post("/api/projects/1/aois", json={"geometry": square(lon + 0.003, lat, 0.001)}).json()["id"]


def test_label_point_outside_the_aoi(client: TestClient, project: dict[str, Any], aoi_id: int, unchanged: None) -> None:
    lon, lat = center(project)
    response = _label(client, {"type": "Point", "coordinates": [lon - 0.003, lat]}, aoi_id=aoi_id)
    assert response.status_code == 422
    assert f"not inside AOI {aoi_id}" in _detail(response)


def test_label_outside_every_aoi(client: TestClient, aoi_id: int, unchanged: None) -> None:
    response = _label(client, {"type": "Point", "coordinates": [-76.0, 38.5]})
    assert response.status_code == 422
    assert "outside every AOI" in _detail(response)


def test_label_of_unknown_class(client: TestClient, project: dict[str, Any], aoi_id: int, unchanged: None) -> None:
    lon, lat = center(project)
    response = _label(client, {"type": "Point", "coordinates": [lon + 0.003, lat]}, class_name="lava")
    assert response.status_code == 422
    assert "unknown class 'lava'" in (detail := _detail(response)) and "water" in detail


@pytest.mark.parametrize(
    ("geometry", "expected"),
    [
        ({"type": "LineString", "coordinates": [[0, 0], [1, 1]]}, "Points or Polygons"),
        ({"type": "Point", "coordinates": [376600.0, 4315400.0]}, "not lon/lat degrees"),
        ({"type": "Point"}, "not valid GeoJSON"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}, "do not cross each other"),
        ("POINT (1 2)", "invalid request"),
    ],
    ids=["line", "wrong-crs", "no-coordinates", "self-intersecting", "wkt-string"],
)
def test_bad_label_geometry(client: TestClient, aoi_id: int, unchanged: None, geometry: Any, expected: str) -> None:
    response = _label(client, geometry)
    assert response.status_code == 422, response.text
    assert expected in _detail(response)


def test_missing_fields_say_what_is_expected(client: TestClient, unchanged: None) -> None:
    response = client.post("/api/projects/1/labels", json={"geometry": {"type": "Point", "coordinates": [0, 0]}})
    assert response.status_code == 422
    body = response.json()
    assert body["errors"][0]["field"] == "class_name" and "class_name" in body["detail"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"name": "Solar Panels", "color": "#ff0000"}, "snake_case"),
        ({"name": "solar", "color": "red"}, "#rrggbb"),
        ({"name": "water", "color": "#ff0000"}, "already exists"),
    ],
    ids=["name", "colour", "duplicate"],
)
def test_bad_class(client: TestClient, unchanged: None, body: dict[str, str], expected: str) -> None:
    response = client.post("/api/projects/1/classes", json=body)
    assert response.status_code == 422
    assert expected in _detail(response)


def test_class_update_errors(client: TestClient, unchanged: None) -> None:
    assert client.patch("/api/projects/1/classes/lava", json={"color": "#000000"}).status_code == 404
    assert client.patch("/api/projects/1/classes/water", json={}).status_code == 422
    response = client.patch("/api/projects/1/classes/water", json={"name": "tree_canopy"})
    assert response.status_code == 422 and "already exists" in _detail(response)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/projects/99"),
        ("GET", "/api/projects/1/aois/999"),
        ("POST", "/api/projects/1/aois/999/inference"),
        ("DELETE", "/api/projects/1/labels/999999"),
        ("POST", "/api/projects/99/labels/undo"),
        ("POST", "/api/projects/1/checkpoints/42/restore"),
        ("GET", "/api/projects/1/checkpoints/compare?a=0&b=42"),
        ("GET", "/api/jobs/nope"),
        ("GET", "/api/projects/1/aois/999/export/classes.tif"),
    ],
)
def test_unknown_ids_are_404(client: TestClient, unchanged: None, method: str, path: str) -> None:
    response = client.request(method, path)
    assert response.status_code == 404, response.text
    assert _detail(response).startswith("no ")


def test_state_conflicts_are_409(client: TestClient, aoi_id: int, unchanged: None) -> None:
    response = client.get(f"/api/projects/1/aois/{aoi_id}/export/classes.tif")
    assert response.status_code == 409 and "run inference first" in _detail(response)


def test_checkpoint_name_must_be_unique(client: TestClient) -> None:
    assert client.post("/api/projects/1/checkpoints", json={"name": "mine"}).status_code == 201
    response = client.post("/api/projects/1/checkpoints", json={"name": "mine"})
    assert response.status_code == 422 and "exists already" in _detail(response)
    assert client.post("/api/projects/1/checkpoints", json={"name": ""}).status_code == 422


def test_bad_project(client: TestClient, store: LabelStore) -> None:
    count = len(store.list_projects())
    response = client.post("/api/projects", json={"name": "x", "imagery": {"source": "ftp"}})
    assert response.status_code == 422 and "imagery" in _detail(response)
    response = client.post(
        "/api/projects", json={"name": "x", "imagery": {"collection": "demo"}, "class_schema": "nope"}
    )
    assert response.status_code == 422 and "unknown class schema" in _detail(response)
    assert len(store.list_projects()) == count


BBOX = [-76.43, 38.96, -76.41, 38.98]
HUGE = str(2**64 + 5)  # beyond SQLite's and PostgreSQL's 64-bit integers


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/api/projects/{HUGE}"),
        ("GET", f"/api/projects/1/aois/{HUGE}"),
        ("POST", f"/api/projects/1/aois/{HUGE}/inference"),
        ("GET", f"/api/projects/1/aois/{HUGE}/suggestions"),
        ("DELETE", f"/api/projects/1/labels/{HUGE}"),
        ("POST", f"/api/projects/1/checkpoints/{HUGE}/restore"),
        ("GET", f"/api/projects/1/checkpoints/compare?a=0&b={HUGE}"),
        ("GET", f"/api/projects/1/labels?aoi_id={HUGE}"),
    ],
)
def test_ids_beyond_64_bits_are_unknown_ids(client: TestClient, unchanged: None, method: str, path: str) -> None:
    response = client.request(method, path)
    assert response.status_code in (404, 422), response.text
    assert _detail(response)


@pytest.mark.parametrize("path", ["/api/projects/1/retrain", "/api/projects/1/checkpoints", "/api/projects"])
@pytest.mark.parametrize("body", [b"\xff\xfe\x00garbage", b"{not json", b"[1, 2", b"\x80"])
def test_bodies_that_are_not_json_are_422(client: TestClient, unchanged: None, path: str, body: bytes) -> None:
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert "JSON" in _detail(response)


def test_timestamps_carry_their_timezone(client: TestClient) -> None:
    stamps = [client.get("/api/projects/1").json()["created_at"]]
    stamps += [c["created_at"] for c in client.get("/api/projects/1/checkpoints").json()]
    for stamp in stamps:
        assert dt.datetime.fromisoformat(stamp).utcoffset() == dt.timedelta(0), stamp


def test_unreachable_stac_api_is_named_and_nothing_else_breaks(client: TestClient, store: LabelStore) -> None:
    body = {"name": "stac down", "imagery": {"source": "stac", "api": "down", "collections": ["naip"], "bbox": BBOX}}
    response = client.post("/api/projects", json=body)
    assert response.status_code == 201, response.text  # the project is kept; its imagery says what is wrong
    project_id = response.json()["id"]
    deadline = time.monotonic() + 60
    while (imagery := client.get(f"/api/projects/{project_id}").json()["imagery"])["state"] in ("missing", "building"):
        assert time.monotonic() < deadline, imagery
        time.sleep(0.1)
    assert imagery["state"] == "error" and "STAC API 'down'" in imagery["message"]
    assert DEAD_STAC_API not in imagery["message"]  # the API's id, not its URL
    assert client.get("/api/projects/1").status_code == 200


def test_bodies_over_the_limit_are_413_and_not_read(client: TestClient, settings: Settings, unchanged: None) -> None:
    huge = b'{"name": "' + b"x" * settings.max_body_bytes + b'"}'
    response = client.post("/api/projects", content=huge, headers={"content-type": "application/json"})
    assert response.status_code == 413 and str(settings.max_body_bytes) in _detail(response)

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"name": "'
        for _ in range(settings.max_body_bytes // 65536 + 1):
            yield b"x" * 65536
        yield b'"}'

    response = client.post("/api/projects", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_geometries_with_too_many_vertices_are_refused(
    client: TestClient, project: dict[str, Any], unchanged: None
) -> None:
    lon, lat = center(project)
    turn = [t / 12_000 * math.tau for t in range(12_000)]
    ring = [[lon + 1e-4 * math.cos(a), lat + 1e-4 * math.sin(a)] for a in turn]
    polygon = {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}
    response = _label(client, polygon)
    assert response.status_code == 422 and "more than 10000 vertices" in _detail(response)
    response = client.post("/api/projects/1/aois", json={"name": "many", "geometry": polygon})
    assert response.status_code == 422 and "more than 10000 vertices" in _detail(response)


def test_security_headers_and_closed_cors(client: TestClient) -> None:
    for path in ("/", "/api/projects/1", "/api/projects/99"):
        response = client.get(path, headers={"origin": "https://evil.example"})
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "access-control-allow-origin" not in response.headers
    preflight = client.options(
        "/api/projects/1/labels",
        headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_opens_only_to_configured_origins(settings: Settings) -> None:
    from review_app.main import create_app

    app = create_app(settings.model_copy(update={"cors_origins": ["https://maps.example"]}))
    with TestClient(app) as other:
        asked = {"access-control-request-method": "GET"}
        allowed = other.options("/api/projects", headers={"origin": "https://maps.example", **asked})
        assert allowed.headers["access-control-allow-origin"] == "https://maps.example"
        refused = other.options("/api/projects", headers={"origin": "https://evil.example", **asked})
        assert "access-control-allow-origin" not in refused.headers


def test_tiles_below_the_zoom_floor_are_404_at_once(client: TestClient, project: dict[str, Any]) -> None:
    """Schemathesis' z=0 imagery tile ran for hours (rio-tiler warps ~4x longer per zoom level down) and pinned a
    worker thread past shutdown: below review_app.gtiff_reader.MIN_ZOOM a tile is the uniform 404, at once."""
    import morecantile

    from review_app.gtiff_reader import MIN_ZOOM

    lon, lat = center(project)
    tms = morecantile.tms.get("WebMercatorQuad")
    for z in (0, 1, MIN_ZOOM - 1):
        tile = tms.tile(lon, lat, z)
        started = time.monotonic()
        response = client.get(f"/tiles/imagery/1/tiles/WebMercatorQuad/{z}/{tile.x}/{tile.y}.png?padding=1")
        assert (response.status_code, response.json()) == (404, {"detail": "Not Found"}), z
        assert time.monotonic() - started < 2, z
    tile = tms.tile(lon, lat, MIN_ZOOM)
    response = client.get(
        f"/tiles/imagery/1/tiles/WebMercatorQuad/{MIN_ZOOM}/{tile.x}/{tile.y}.png?bidx=1&bidx=2&bidx=3"
    )
    assert (response.status_code, response.headers["content-type"]) == (200, "image/png")
