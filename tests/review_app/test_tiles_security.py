"""Tile routes read only the files that ids map to: URL tricks, traversal, VRTs and unknown ids all get the same 404."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import morecantile
import pytest
from fastapi.testclient import TestClient

from pearl_pipelines.settings import Settings

UNIFORM = {"detail": "Not Found"}
SIZES = ("tilesize", "buffer", "padding")


@pytest.fixture(scope="module")
def tile(project: dict[str, Any]) -> tuple[int, int, int]:
    west, south, east, north = project["imagery"]["bounds"]
    t = morecantile.tms.get("WebMercatorQuad").tile((west + east) / 2, (south + north) / 2, 16)
    return t.z, t.x, t.y


def test_real_tiles_render(client: TestClient, tile: tuple[int, int, int]) -> None:
    z, x, y = tile
    response = client.get(f"/tiles/imagery/1/tiles/WebMercatorQuad/{z}/{x}/{y}.png?bidx=4&bidx=1&bidx=2")
    assert response.status_code == 200 and response.content[:4] == b"\x89PNG"
    assert response.headers["cache-control"].startswith("private")  # for callers allowed to read it: no shared cache


@pytest.mark.parametrize(
    "path",
    [
        "/tiles/imagery/1/tiles/WebMercatorQuad/{z}/{x}/{y}?url=/etc/passwd",
        "/tiles/imagery/1/info?url=file:///etc/passwd",
        "/tiles/imagery/1/tiles/WebMercatorQuad/{z}/{x}/{y}?expression=b1*2",
        "/tiles/imagery/1/tiles/WebMercatorQuad/{z}/{x}/{y}?algorithm=hillshade",
    ],
)
def test_url_and_expression_parameters_are_ignored(client: TestClient, tile: tuple[int, int, int], path: str) -> None:
    """There is no `url` or `expression` parameter: the tile is the project's imagery, whatever is appended."""
    z, x, y = tile
    response = client.get(path.format(z=z, x=x, y=y))
    assert response.status_code == 200
    assert b"root:" not in response.content
    if "info" in path:
        assert response.json()["count"] == 4  # the RGBN mosaic, not /etc/passwd


def test_small_buffer_and_padding_still_render(client: TestClient, tile: tuple[int, int, int]) -> None:
    z, x, y = tile
    query = "bidx=1&bidx=2&bidx=3&buffer=64&padding=64"
    response = client.get(f"/tiles/imagery/1/tiles/WebMercatorQuad/{z}/{x}/{y}.png?{query}")
    assert response.status_code == 200 and response.content[:4] == b"\x89PNG"
    paths = client.get("/openapi.json").json()["paths"]
    parameters = paths["/tiles/imagery/{project_id}/tiles/{tileMatrixSetId}/{z}/{x}/{y}"]["get"]["parameters"]
    limits = {p["name"]: p["schema"]["anyOf"][0]["maximum"] for p in parameters if p["name"] in SIZES}
    assert limits == {"tilesize": 1024, "buffer": 64, "padding": 64}  # documented, so clients and fuzzers keep to them


@pytest.mark.parametrize(
    "path",
    [
        "/tiles/imagery/99/tiles/WebMercatorQuad/{z}/{x}/{y}",  # unknown project
        "/tiles/imagery/0/tiles/WebMercatorQuad/{z}/{x}/{y}",
        "/tiles/imagery/-1/info",
        "/tiles/imagery/01/info",
        "/tiles/imagery/1e3/info",
        "/tiles/imagery/..%2F..%2Fetc%2Fpasswd/info",
        "/tiles/imagery/%2Fetc%2Fpasswd/info",
        "/tiles/imagery/1/../../../etc/passwd",
        "/tiles/imagery/1%2F..%2F2/info",
        "/tiles/imagery/etc/passwd/info",
        "/tiles/predictions/1/999/1/tiles/WebMercatorQuad/{z}/{x}/{y}",  # unknown AOI
        "/tiles/predictions/1/1/999/WebMercatorQuad/tilejson.json",  # unknown version
        "/tiles/predictions/99/1/1/info",
        "/tiles/confidence/1/1/0/info",
        "/tiles/predictions/1/1/1/tiles/WebMercatorQuad/{z}/{x}/{y}?url=/etc/passwd",
        "/tiles/imagery/1/tiles/WebMercatorQuad/40/1/1",  # tile outside the TMS
        "/tiles/imagery/1/tiles/WebMercatorQuad/16/0/0",  # tile outside the raster
        "/tiles/imagery/1/tiles/OtherTMS/{z}/{x}/{y}",
        "/tiles/imagery/1/tiles/WebMercatorQuad/{z}/{x}/{y}?tilesize=100000",
        # titiler leaves these unbounded: schemathesis' buffer=2000 took 12 s, larger ones allocate gigabytes
        "/tiles/imagery/1/tiles/WebMercatorQuad/{z}/{x}/{y}?buffer=2000",
        "/tiles/imagery/1/tiles/WebMercatorQuad/{z}/{x}/{y}?buffer=1e9",
        "/tiles/imagery/1/tiles/WebMercatorQuad/{z}/{x}/{y}?padding=100000",
        "/tiles/imagery/1/tiles/WebMercatorQuad/{z}/{x}/{y}.vrt",
        "/tiles/imagery/1/statistics",
        "/tiles/imagery/1/preview",
        "/tiles/imagery/1/bbox/0,0,1,1.png",
        "/tiles/imagery/1/map.html",
    ],
)
def test_uniform_404(client: TestClient, tile: tuple[int, int, int], path: str) -> None:
    z, x, y = tile
    response = client.get(path.format(z=z, x=x, y=y))
    assert response.status_code == 404, (path, response.status_code, response.text[:200])
    assert response.json() == UNIFORM, response.text


def test_a_vrt_in_place_of_a_raster_is_never_read(
    client: TestClient, settings: Settings, tile: tuple[int, int, int], tmp_path: Path
) -> None:
    """Even a VRT sitting exactly where a raster is expected (named .tif) is refused: the reader opens GTiff only."""
    z, x, y = tile
    mosaic = client.app.state.services.states.imagery_path(1)  # type: ignore[attr-defined]
    target = tmp_path / "secret.tif"
    shutil.copy(mosaic, target)
    backup = tmp_path / "mosaic.backup.tif"
    shutil.copy(mosaic, backup)
    vrt = (
        '<VRTDataset rasterXSize="64" rasterYSize="64"><VRTRasterBand dataType="Byte" band="1"><SimpleSource>'
        f"<SourceFilename>{target}</SourceFilename><SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>"
    )
    try:
        mosaic.write_text(vrt)
        for path in (f"/tiles/imagery/1/tiles/WebMercatorQuad/{z}/{x}/{y}", "/tiles/imagery/1/info"):
            response = client.get(path)
            assert response.status_code == 404 and response.json() == UNIFORM
    finally:
        shutil.copy(backup, mosaic)
    assert client.get(f"/tiles/imagery/1/tiles/WebMercatorQuad/{z}/{x}/{y}").status_code == 200


def test_missing_file_and_unknown_id_look_the_same(client: TestClient, settings: Settings) -> None:
    """A known id whose file vanished answers exactly like an id that never existed (no oracle for file names)."""
    mosaic = client.app.state.services.states.imagery_path(1)  # type: ignore[attr-defined]
    moved = mosaic.with_name("moved.tif")
    mosaic.rename(moved)
    try:
        gone = client.get("/tiles/imagery/1/info")
    finally:
        moved.rename(mosaic)
    never = client.get("/tiles/imagery/77/info")
    headers = [{k: v for k, v in r.headers.items() if k != "date"} for r in (gone, never)]
    assert (gone.status_code, gone.content, headers[0]) == (never.status_code, never.content, headers[1])


def test_tokens_in_tile_and_websocket_urls_stay_out_of_the_access_log(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """uvicorn logs each request's path; a browser sends its bearer token in the query of tiles and the websocket."""
    import logging

    access = logging.getLogger("uvicorn.access")
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        path = "/tiles/predictions/1/1/1/tiles/WebMercatorQuad/16/1/2.png?access_token=eyJ.secret-part.sig&x=1"
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", path, "1.1", 200)
    assert "secret-part" not in caplog.text
    assert "access_token=***&x=1" in caplog.text
