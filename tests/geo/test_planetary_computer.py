"""The Planetary Computer NAIP path, against recorded-style responses served on loopback.

What this covers: `stac_source="planetary-computer"` alone makes `StacCatalog` search the configured
STAC API in collection `naip` and sign every blob href with a SAS token from the token endpoint
(`planetary_computer.sign_inplace` as pystac-client's modifier); the local source leaves hrefs alone.

What remains untested here (no network): the real service (its current response shapes, paging with
`next` links over many items, rate limits, subscription keys), real SAS tokens, and reading real NAIP
blobs with rasterio over HTTPS (GDAL's /vsicurl/ with a signed URL).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from planetary_computer import sas as pc_sas
from planetary_computer.settings import Settings as PcSettings
from pystac.extensions.projection import ProjectionExtension

from pearl_pipelines.geo.stac import StacCatalog, StacError
from pearl_pipelines.settings import Settings

RECORDED = Path(__file__).parents[1] / "data" / "planetary_computer"
PC_API = "https://planetarycomputer.microsoft.com/api/stac/v1"
BLOB_PREFIX = "https://naipeuwest.blob.core.windows.net/naip/v002/md/2021/md_060cm_2021/38076/"
ITEM_IDS = {"md_m_3807619_se_18_060_20211111", "md_m_3807619_sw_18_060_20211111"}
BBOX = (-76.70, 38.63, -76.64, 38.68)  # inside both quarter quads (they overlap by ~300 m)


@dataclass
class FakePlanetaryComputer:
    """A loopback stand-in for the STAC API and the SAS token endpoint; records what it was asked."""

    url: str
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    token_status: int = 200

    def paths(self, method: str | None = None) -> list[str]:
        return [path for m, path, _ in self.requests if method in (None, m)]


def _recorded(name: str, base_url: str) -> bytes:
    text = (RECORDED / f"{name}.json").read_text()
    return text.replace(PC_API, base_url).encode()  # links point back at the loopback server


def _handler(fake: FakePlanetaryComputer) -> type[BaseHTTPRequestHandler]:
    routes = {
        "/": "landing",
        "/conformance": "conformance",
        "/collections/naip": "collection_naip",
        "/search": "search_naip",
    }

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def _reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _answer(self, method: str, body: Any) -> None:
            path = self.path.split("?", 1)[0].rstrip("/") or "/"
            fake.requests.append((method, path, body))
            if path == "/token/naipeuwest/naip" and method == "GET":
                if fake.token_status != 200:
                    self._reply(fake.token_status, b'{"detail": "denied"}')
                    return
                token = json.loads((RECORDED / "sas_token_naip.json").read_text())
                # A recording's expiry is in the past; the SDK would refetch forever. Give it an hour.
                expiry = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
                token["msft:expiry"] = expiry.strftime("%Y-%m-%dT%H:%M:%SZ")
                self._reply(200, json.dumps(token).encode())
            elif path in routes and (method == "GET" or path == "/search"):
                kind = "application/geo+json" if path == "/search" else "application/json"
                self._reply(200, _recorded(routes[path], fake.url), kind)
            else:
                self._reply(404, b'{"code": "NotFoundError", "description": "not found"}')

        def do_GET(self) -> None:
            self._answer("GET", None)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self._answer("POST", json.loads(self.rfile.read(length) or b"null"))

    return Handler


@pytest.fixture(scope="module")
def fake_pc() -> Iterator[FakePlanetaryComputer]:
    fake = FakePlanetaryComputer(url="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()


@pytest.fixture
def pc(fake_pc: FakePlanetaryComputer, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakePlanetaryComputer]:
    """The fake with a clean request log, and the PC SDK pointed at its token endpoint (PC_SDK_SAS_URL)."""
    fake_pc.requests.clear()
    fake_pc.token_status = 200
    monkeypatch.setenv("PC_SDK_SAS_URL", f"{fake_pc.url}/token")
    # The SDK caches its settings and tokens process-wide: reset both around each test.
    PcSettings.get.cache_clear()
    pc_sas.TOKEN_CACHE.clear()
    yield fake_pc
    PcSettings.get.cache_clear()
    pc_sas.TOKEN_CACHE.clear()


def test_planetary_computer_settings_search_naip_and_sign_hrefs(pc: FakePlanetaryComputer) -> None:
    catalog = StacCatalog.from_settings(Settings(stac_source="planetary-computer", stac_url=pc.url))
    assert catalog.sign_planetary_computer
    assert list(catalog.collections or []) == ["naip"]

    items = catalog.search(bbox=BBOX)

    assert {item.id for item in items} == ITEM_IDS
    assert {item.collection_id for item in items} == {"naip"}
    (method, _, body), *_ = [r for r in pc.requests if r[1] == "/search"]
    assert method == "POST"
    assert body["collections"] == ["naip"]
    assert body["bbox"] == pytest.approx(list(BBOX))

    token = json.loads((RECORDED / "sas_token_naip.json").read_text())["token"]
    hrefs = dict((item.id, href) for item, href in catalog.image_hrefs(items))
    for item_id, href in hrefs.items():
        blob, _, query = href.partition("?")
        assert blob == f"{BLOB_PREFIX}{item_id.removeprefix('md_')}.tif"
        assert query == token and query.startswith("st=") and "sv=" in query and "sig=" in query
    # One token per storage container, cached for the second item.
    assert pc.paths("GET").count("/token/naipeuwest/naip") == 1

    image = items[0].assets["image"]
    assert [b["common_name"] for b in image.extra_fields["eo:bands"]] == ["red", "green", "blue", "nir"]
    # pystac migrates the recorded proj:epsg (projection v1.0) to proj:code on read; the extension reads both.
    assert ProjectionExtension.ext(items[0]).epsg == 26918


def test_local_source_does_not_sign(pc: FakePlanetaryComputer) -> None:
    """The same API configured as the local source: identical search, hrefs untouched, no token asked."""
    catalog = StacCatalog.from_settings(Settings(stac_source="local", stac_url=pc.url, stac_collection="naip"))
    items = catalog.search(bbox=BBOX)

    assert not catalog.sign_planetary_computer
    assert {href for _, href in catalog.image_hrefs(items)} == {
        f"{BLOB_PREFIX}{item_id.removeprefix('md_')}.tif" for item_id in ITEM_IDS
    }
    assert not [p for p in pc.paths() if p.startswith("/token")]


def test_sas_token_refused_is_a_stac_error(pc: FakePlanetaryComputer) -> None:
    pc.token_status = 403
    catalog = StacCatalog.from_settings(Settings(stac_source="planetary-computer", stac_url=pc.url))
    with pytest.raises(StacError, match="SAS token") as excinfo:
        catalog.search(bbox=BBOX)
    assert "HTTP 403" in str(excinfo.value) and "PC_SDK_SAS_URL" in str(excinfo.value)
    assert pc.url not in str(excinfo.value)  # the URL is in the server log, not in what users see
