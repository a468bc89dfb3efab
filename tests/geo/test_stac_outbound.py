"""Outbound requests of the STAC client (SSRF): only the API's own origin is contacted, redirects and links off it
are refused before they are sent, errors name the API and the HTTP status but never quote the remote body, and
asset hrefs reach GDAL only as http(s) URLs (or, for the local catalog, files inside it)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import rasterio
from shapely.geometry import box, mapping

from pearl_pipelines.geo import mosaic
from pearl_pipelines.geo.grid import aoi_to_tile_keys
from pearl_pipelines.geo.stac import StacCatalog, StacError, UnsafeHref, checked_href
from pearl_pipelines.geo.tiles import read_tile, search_tile_sources
from tests.recording_http import Listener, failing, listening, redirect_to, stac_api

BBOX = (-76.50, 38.95, -76.49, 38.96)
SECRET = "SECRET-d41d8cd98f00b204"


@pytest.fixture
def elsewhere() -> Any:
    """A host nothing may contact: it records whatever reaches it."""
    with listening() as listener:
        yield listener


@pytest.mark.parametrize(
    "href",
    [
        "/etc/passwd",
        "file:///etc/passwd",
        "/vsicurl/http://127.0.0.1:9/x.tif",
        "/vsizip//tmp/a.zip/x.tif",
        "relative/x.tif",
        "../x.tif",
        "ftp://example.org/x.tif",
        "zip+https://example.org/a.zip!x.tif",
        "http:///no-host.tif",
        " https://example.org/padded.tif",
        "https://example.org/x.tif\n",
        "",
    ],
)
def test_hrefs_of_a_remote_api_must_be_http_urls(href: str) -> None:
    with pytest.raises(UnsafeHref):
        checked_href(href)


def test_http_urls_pass_unchanged() -> None:
    for href in ("https://naipeuwest.blob.core.windows.net/naip/x.tif?st=1&sig=2", "http://127.0.0.1:8080/a.tif"):
        assert checked_href(href) == href
        assert checked_href(href, local_root=Path("/nonexistent")) == href


def test_local_hrefs_must_resolve_inside_the_catalog(tmp_path: Path) -> None:
    catalog, outside = tmp_path / "catalog", tmp_path / "outside"
    (catalog / "demo").mkdir(parents=True)
    outside.mkdir()
    (catalog / "demo" / "a.tif").write_bytes(b"x")
    (outside / "b.tif").write_bytes(b"x")
    (catalog / "demo" / "link.tif").symlink_to(outside / "b.tif")
    assert checked_href(str(catalog / "demo" / "a.tif"), local_root=catalog) == str(catalog / "demo" / "a.tif")
    for href in (
        str(outside / "b.tif"),
        str(catalog / "demo" / ".." / ".." / "outside" / "b.tif"),
        str(catalog / "demo" / "link.tif"),  # a symlink out of the catalog
        "/etc/passwd",
        f"file://{catalog / 'demo' / 'a.tif'}",
        f"/vsigzip/{catalog / 'demo' / 'a.tif'}",
        "demo/a.tif",
    ):
        with pytest.raises(UnsafeHref):
            checked_href(href, local_root=catalog)


@pytest.mark.parametrize("kind", ["path", "file-url", "vsicurl"])
def test_asset_hrefs_off_the_rules_are_refused_and_never_opened(
    kind: str, elsewhere: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    href = {
        "path": "/etc/passwd",
        "file-url": "file:///etc/passwd",
        "vsicurl": f"/vsicurl/{elsewhere.url}/x.tif",
    }[kind]
    opened: list[str] = []
    real_open = rasterio.open

    def recording_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(mosaic.rasterio, "open", recording_open)
    with listening(stac_api([href], BBOX)) as api:
        catalog = StacCatalog(url=api.url, name="fake")
        items = catalog.search(bbox=BBOX)
        assert len(items) == 1
        with pytest.raises(UnsafeHref, match=r"'fake'.*not opened") as excinfo:
            list(catalog.image_hrefs(items))
        assert href not in str(excinfo.value)
        key = aoi_to_tile_keys(mapping(box(*BBOX)))[0]
        with pytest.raises(UnsafeHref):
            read_tile(key, search_tile_sources(catalog, key))
    assert opened == []
    assert elsewhere.requests == []


def test_a_redirect_to_another_host_is_not_followed(elsewhere: Listener, caplog: pytest.LogCaptureFixture) -> None:
    with listening(redirect_to(elsewhere.url)) as api:
        catalog = StacCatalog(url=api.url, name="moved")
        with caplog.at_level(logging.WARNING), pytest.raises(StacError) as excinfo:
            catalog.search(bbox=BBOX)
        assert api.requests, "the configured API was asked"
    assert elsewhere.requests == []
    message = str(excinfo.value)
    assert "'moved'" in message and "another host" in message
    for leak in (elsewhere.url, str(elsewhere.port), api.url, "moved to"):
        assert leak not in message
    assert api.url in caplog.text  # the operator's log says which API


def test_a_redirect_within_the_api_is_followed() -> None:
    def respond(listener: Listener, method: str, path: str) -> Any:
        if path.startswith("/v1"):
            return stac_api([], BBOX)(listener, method, path.removeprefix("/v1") or "/")
        return redirect_to(f"{listener.url}/v1")(listener, method, path)

    with listening(respond) as api:
        assert StacCatalog(url=api.url).search(bbox=BBOX) == []
        assert ("GET", "/v1/") in api.requests


def test_a_search_link_to_another_host_is_not_followed(elsewhere: Listener) -> None:
    with (
        listening(stac_api([], BBOX, search_url=f"{elsewhere.url}/search")) as api,
        pytest.raises(StacError, match="another host"),
    ):
        StacCatalog(url=api.url, name="linked").search(bbox=BBOX)
    assert elsewhere.requests == []


@pytest.mark.parametrize("status", [400, 500, 503])
def test_error_bodies_are_neither_shown_nor_logged(status: int, caplog: pytest.LogCaptureFixture) -> None:
    body = f'{{"detail": "{SECRET} internal path /srv/app"}}'.encode()
    with (
        listening(failing(status, body)) as api,
        caplog.at_level(logging.DEBUG, logger="pearl_pipelines"),
        pytest.raises(StacError) as excinfo,
    ):
        StacCatalog(url=api.url, name="broken").search(bbox=BBOX)
    message = str(excinfo.value)
    assert f"HTTP {status}" in message and "'broken'" in message
    assert SECRET not in message and "/srv/app" not in message and api.url not in message
    assert SECRET not in caplog.text


def test_an_unreachable_api_is_named_by_its_id() -> None:
    with listening() as api:
        url = api.url
    with pytest.raises(StacError, match="cannot reach the STAC API 'gone'") as excinfo:
        StacCatalog(url=url, name="gone").search(bbox=BBOX)
    assert url not in str(excinfo.value)
