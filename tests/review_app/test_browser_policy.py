"""What another web page, a rebinding DNS name or a log reader can get from the app (audit items 3, 9, 10, 12).

- Local mode signs loopback callers in; a page on another site must still not drive it: writes with a foreign
  Origin or a non-JSON content type, and any request under a foreign Host name, are refused before a route runs.
- A refused websocket closes with 4401/4403/4404 after the handshake (a real server and a real websocket client:
  Starlette's TestClient cannot tell a close code from an HTTP 403 handshake).
- No log line of a real server, on any logger, holds a token, however the query spells its name.
- /docs is served from this origin; tiles at absurd zooms are a quiet 404; 4-band imagery renders as PNG.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import morecantile
import pytest
import websockets
from fastapi.testclient import TestClient

from pearl_pipelines.settings import Settings
from review_app.log_redaction import install, redact
from tests.conftest import free_port
from tests.review_app.conftest import new_home
from tests.review_app.idp import AUDIENCE, Issuer
from tests.review_app.servers import log_path, ready_project, uvicorn

EVIL = "https://evil.example"
SERVER_LOGS: dict[str, Path] = {}
FORM = {"content-type": "application/x-www-form-urlencoded"}


def _labels(client: TestClient) -> list[dict[str, Any]]:
    return client.get("/api/projects/1/labels").json()["features"]


@pytest.fixture(scope="module")
def labelled(client: TestClient, aoi: dict[str, Any]) -> list[dict[str, Any]]:
    (west, south), (east, north) = aoi["geometry"]["coordinates"][0][0], aoi["geometry"]["coordinates"][0][2]
    point = {"type": "Point", "coordinates": [(west + east) / 2, (south + north) / 2]}
    created = client.post("/api/projects/1/labels", json={"class_name": "water", "geometry": point})
    assert created.status_code == 201, created.text
    return _labels(client)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/projects/1/labels/undo"),
        ("POST", "/api/projects/1/retrain"),
        ("POST", "/api/projects/1/aois/1/inference"),
        ("POST", "/api/projects/1/models/0/restore"),
        ("PUT", "/api/projects/1/strategy"),
    ],
)
def test_cross_site_form_posts_are_refused(
    client: TestClient, labelled: list[dict[str, Any]], method: str, path: str
) -> None:
    """The audit's reproduction: a form on evil.example posting (urlencoded, empty body) undid a label."""
    foreign = client.request(method, path, headers={"origin": EVIL, **FORM}, content=b"")
    assert foreign.status_code == 403 and "cross-origin" in foreign.json()["detail"]
    # The same form without an Origin (an old browser, a privacy proxy): a form is not JSON.
    form = client.request(method, path, headers=FORM, content=b"")
    assert form.status_code == 415 and "application/json" in form.json()["detail"]
    plain = client.request(method, path, headers={"origin": EVIL, "content-type": "text/plain"}, content=b"{}")
    assert plain.status_code == 403
    # A page cannot hide its origin behind a fetch without a body either.
    assert client.request(method, path, headers={"origin": EVIL, "sec-fetch-site": "cross-site"}).status_code == 403
    assert _labels(client) == labelled  # nothing was undone


def test_the_apps_own_page_and_scripts_still_write(client: TestClient, labelled: list[dict[str, Any]]) -> None:
    same = client.post("/api/projects/1/labels/undo", headers={"origin": "http://testserver"})
    assert same.status_code == 200, same.text  # the page: same origin, JSON or no body
    assert len(_labels(client)) == len(labelled) - 1
    redo = client.post("/api/projects/1/labels", json={"class_name": "water", "geometry": labelled[0]["geometry"]})
    assert redo.status_code == 201  # a script: no Origin, a JSON body


def test_foreign_host_names_get_nothing(client: TestClient) -> None:
    """DNS rebinding: rebind.attacker.example resolves to 127.0.0.1; the browser sends its name as Host."""
    for path in ("/api/projects/1", "/", "/api/projects/1/labels"):
        response = client.get(path, headers={"host": "rebind.attacker.example"})
        assert response.status_code == 403 and "host" in response.json()["detail"]
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000"):
        assert client.get("/api/projects/1", headers={"host": host}).status_code == 200, host


def test_websocket_from_a_foreign_page_is_refused(client: TestClient) -> None:
    from starlette.websockets import WebSocketDisconnect

    with pytest.raises(WebSocketDisconnect), client.websocket_connect("/api/projects/1/ws", headers={"origin": EVIL}):
        pass
    with client.websocket_connect("/api/projects/1/ws", headers={"origin": "http://testserver"}) as ws:
        assert ws.receive_json()["type"] == "hello"


def test_configured_hosts_and_cors_origins_are_served(settings: Settings) -> None:
    from review_app.main import create_app

    configured = settings.model_copy(
        update={"allowed_hosts": ["pearl.example.org"], "cors_origins": ["https://maps.example.org"]}
    )
    with TestClient(create_app(configured), base_url="http://pearl.example.org") as client:
        assert client.get("/api/projects").status_code == 401  # past the host check (local mode: loopback only)
        allowed = client.post("/api/projects/1/labels/undo", headers={"origin": "https://maps.example.org"})
        assert allowed.status_code == 401
        assert client.get("/api/projects", headers={"host": "other.example.org"}).status_code == 403
        foreign = client.post("/api/projects/1/labels/undo", headers={"origin": EVIL})
        assert foreign.status_code == 403


# -- websocket close codes and logs, on a real server ----------------------------------------------------------
@pytest.fixture(scope="module")
def oidc_server(review_assets: Path, tmp_path_factory: pytest.TempPathFactory, issuer: Issuer) -> Iterator[str]:
    """The app in oidc mode under uvicorn; its log (every logger, as uvicorn writes it) is `SERVER_LOGS[url]`."""
    settings = new_home(tmp_path_factory, review_assets)
    port = free_port()
    env = {
        "PEARL_AUTH_MODE": "oidc",
        "PEARL_OIDC_ISSUER": issuer.url,
        "PEARL_OIDC_AUDIENCE": AUDIENCE,
        "PEARL_AUTH_SECRET": secrets.token_urlsafe(48),
        "PEARL_REVIEW_HOST": "127.0.0.1",
        "PEARL_WRITE_RATE_LIMIT": "1000/second",
    }
    with uvicorn(settings, port, env=env) as process:
        url = f"http://127.0.0.1:{port}"
        SERVER_LOGS[url] = log_path(settings, port)
        ready_project(url, ready=False, process=process, log=SERVER_LOGS[url])
        yield url


def _close_code(url: str, path: str, headers: dict[str, str] | None = None) -> int:
    async def connect() -> int:
        async with websockets.connect(url.replace("http", "ws") + path, additional_headers=headers) as ws:
            try:
                await asyncio.wait_for(ws.recv(), timeout=10)
            except websockets.ConnectionClosed as closed:
                assert closed.rcvd is not None
                return closed.rcvd.code
        raise AssertionError("the socket was not closed")

    return asyncio.run(connect())


def test_websocket_refusals_are_close_codes_the_page_understands(oidc_server: str, issuer: Issuer) -> None:
    """ws.ts renews the token on 4401 and stops retrying on 4403/4404; an HTTP 403 handshake told it neither."""
    assert _close_code(oidc_server, "/api/projects/1/ws") == 4401  # no token
    stranger = issuer.token("stranger-ws")
    assert _close_code(oidc_server, f"/api/projects/1/ws?access_token={stranger}") == 4404  # not a member
    assert _close_code(oidc_server, f"/api/projects/987654/ws?access_token={stranger}") == 4404  # unknown


def test_no_log_line_holds_a_token(oidc_server: str, issuer: Issuer) -> None:
    """Tokens in tile and websocket URLs, spelled every way the server accepts, and in headers: none in the log."""
    tokens = [issuer.token(f"log-{i}") for i in range(4)]
    spellings = ["access_token", "access%5Ftoken", "access%5ftoken", "%61ccess_token"]
    for token, name in zip(tokens, spellings, strict=True):
        with contextlib.suppress(websockets.InvalidStatus):  # how it is refused is another test's business
            _close_code(oidc_server, f"/api/projects/987654/ws?{name}={token}")
        httpx.get(f"{oidc_server}/tiles/imagery/1/tiles/WebMercatorQuad/15/1/1.png?{name}={token}", timeout=30)
    httpx.get(f"{oidc_server}/api/projects/987654", headers={"authorization": f"Bearer {tokens[0]}"}, timeout=30)
    issued = httpx.post(
        f"{oidc_server}/api/tokens",
        json={"name": "log test", "days": 1},
        headers={"authorization": f"Bearer {tokens[1]}"},
        timeout=30,
    )
    assert issued.status_code == 201, issued.text
    personal = issued.json()["token"]
    httpx.get(f"{oidc_server}/tiles/imagery/1/info?access_token={personal}", timeout=30)
    # The server's log, every logger (uvicorn.error holds the websocket handshakes, uvicorn.access the rest).
    logs = SERVER_LOGS[oidc_server].read_text()
    assert "WebSocket /api/projects/987654/ws" in logs  # the handshake lines are there...
    assert "/tiles/imagery/1/" in logs
    for secret in [*tokens, personal, personal.removeprefix("pearl_")]:
        assert secret not in logs and secret[-20:] not in logs  # ...without the token


def test_every_logger_in_this_process_redacts(caplog: pytest.LogCaptureFixture) -> None:
    install()
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJl"
    with caplog.at_level(logging.INFO):
        logging.getLogger("uvicorn.error").info(
            '%s - "WebSocket %s" [accepted]', "127.0.0.1:1", f"/ws?access_token={token}"
        )
        logging.getLogger("some.library").warning("fetching /tiles/x?access%%5Ftoken=%s", "opaque-secret-value")
        try:
            raise ValueError(f"bad token {token}")
        except ValueError:
            logging.getLogger("x").exception("failed")
    text = caplog.text + "".join(r.exc_text or "" for r in caplog.records)
    assert token not in text and "opaque-secret-value" not in text
    assert "access_token=***" in text and "access%5Ftoken=***" in text
    assert redact("z=15&x=1") == "z=15&x=1"  # nothing else changes


# -- small items -------------------------------------------------------------------------------------------------
def test_docs_are_served_from_this_origin(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    assert "http" not in page.text.replace('charset="utf-8"', "")  # no CDN
    assert "<script>" not in page.text  # the CSP allows no inline script
    for asset in ("/static/swagger/swagger-ui-bundle.js", "/static/swagger/swagger-ui.css", "/static/swagger/docs.js"):
        assert client.get(asset).status_code == 200, asset
    assert client.get("/redoc").status_code == 404


def test_absurd_zoom_is_a_quiet_404(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        for z in (69019540, 25, 2**63):
            response = client.get(f"/tiles/imagery/1/tiles/WebMercatorQuad/{z}/1/1.png?bidx=1&bidx=2&bidx=3")
            assert response.status_code == 404, (z, response.text)
    assert "Traceback" not in caplog.text and not any(r.exc_info for r in caplog.records)


def test_four_band_imagery_renders_as_png(client: TestClient, project: dict[str, Any]) -> None:
    west, south, east, north = project["imagery"]["bounds"]
    t = morecantile.tms.get("WebMercatorQuad").tile((west + east) / 2, (south + north) / 2, 16)
    response = client.get(f"/tiles/imagery/1/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png")
    assert response.status_code == 200 and response.content[:4] == b"\x89PNG"
