"""Projects' imagery sources through the real API (security audit: SSRF, disk exhaustion).

STAC APIs are the operator's (PEARL_STAC_APIS), chosen by id: a URL in a request, or an id nobody configured, is a
422 and no request leaves the server; projects of before that stored a URL get an error state, never a fetch. A
configured API's redirect off its host is not followed, its error bodies reach no response, and asset hrefs that are
not http(s) URLs are not opened. Projects of one imagery source share one mosaic file.

Every listener here is a real HTTP server on 127.0.0.1 that records each request it gets.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import morecantile
import pytest
from fastapi.testclient import TestClient

from pearl_pipelines.classes import load_schema
from pearl_pipelines.labels.store import LabelStore
from pearl_pipelines.settings import Settings
from review_app.imagery import ImageryError, resolve_source, shared_mosaic, source_digest
from tests.recording_http import Listener, failing, listening, redirect_to, stac_api
from tests.review_app.conftest import center, new_home, wait_ready

BBOX = [-76.50, 38.95, -76.49, 38.96]
SECRET = "SECRET-0b2f9e7c-do-not-echo"


@pytest.fixture(scope="module")
def elsewhere() -> Iterator[Listener]:
    """A host no request may reach: not a configured API, and where the redirects below point."""
    with listening() as listener:
        yield listener


@pytest.fixture(scope="module")
def apis(elsewhere: Listener) -> Iterator[dict[str, Listener]]:
    hrefs = ["/etc/passwd", "file:///etc/passwd", f"/vsicurl/{elsewhere.url}/x.tif"]
    with (
        listening(redirect_to(elsewhere.url)) as redirecting,
        listening(failing(500, f'{{"detail": "{SECRET} at /srv/stac/db"}}'.encode())) as broken,
        listening(stac_api(hrefs, BBOX)) as bad_hrefs,
    ):
        yield {"redirecting": redirecting, "broken": broken, "bad-hrefs": bad_hrefs}


@pytest.fixture(scope="module")
def settings(review_assets: Path, tmp_path_factory: pytest.TempPathFactory, apis: dict[str, Listener]) -> Settings:
    home = new_home(tmp_path_factory, review_assets)
    return home.model_copy(update={"stac_apis": {name: listener.url for name, listener in apis.items()}})


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    from review_app.main import create_app

    with TestClient(create_app(settings)) as test_client:
        wait_ready(test_client)
        yield test_client


@pytest.fixture(scope="module")
def store(settings: Settings) -> LabelStore:
    return LabelStore(settings.resolved_label_store_url)


def _stac(name: str, **imagery: Any) -> dict[str, Any]:
    return {"name": name, "imagery": {"source": "stac", "collections": ["naip"], "bbox": BBOX, **imagery}}


def _settled(client: TestClient, project_id: int, timeout: float = 60.0) -> dict[str, Any]:
    """The project's imagery once its background job is over (neither missing nor building)."""
    deadline = time.monotonic() + timeout
    while (imagery := client.get(f"/api/projects/{project_id}").json()["imagery"])["state"] in ("missing", "building"):
        assert time.monotonic() < deadline, imagery
        time.sleep(0.1)
    _jobs_idle(client)
    return imagery  # type: ignore[no-any-return]


def _jobs_idle(client: TestClient, timeout: float = 60.0) -> None:
    runner = client.app.state.services.runner  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while any(j.state in ("queued", "running") for j in list(runner._jobs.values())):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _every_response_about(client: TestClient, project_id: int) -> str:
    """Everything the API says about a project: the project, the list, and each of its jobs."""
    runner = client.app.state.services.runner  # type: ignore[attr-defined]
    texts = [client.get(f"/api/projects/{project_id}").text, client.get("/api/projects").text]
    texts += [client.get(f"/api/jobs/{j.id}").text for j in list(runner._jobs.values()) if j.project_id == project_id]
    return "\n".join(texts)


def test_a_url_or_an_api_nobody_configured_is_422_and_nothing_is_fetched(
    client: TestClient, elsewhere: Listener
) -> None:
    before = len(client.get("/api/projects").json())
    response = client.post("/api/projects", json=_stac("by url", url=f"{elsewhere.url}/"))
    assert response.status_code == 422, response.text
    assert "api" in response.json()["detail"]
    response = client.post("/api/projects", json=_stac("unknown id", api="nope"))
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "'nope'" in detail and all(name in detail for name in ("default", "redirecting", "broken", "bad-hrefs"))
    for bad in ("", "../x", "http://127.0.0.1:1/", "a" * 65):
        assert client.post("/api/projects", json=_stac("bad id", api=bad)).status_code == 422
    _jobs_idle(client)
    time.sleep(0.5)
    assert len(client.get("/api/projects").json()) == before
    assert elsewhere.requests == []


def test_a_stored_url_is_an_error_state_never_a_fetch(
    client: TestClient, store: LabelStore, settings: Settings, elsewhere: Listener, apis: dict[str, Listener]
) -> None:
    """Projects made before API ids stored a URL: one that is no configured API's is never fetched."""
    schema = load_schema("chesapeake9", settings.assets_dir)
    imagery = {"source": "stac", "url": f"{elsewhere.url}/", "collections": ["naip"], "bbox": BBOX}
    row = store.create_project("legacy url", imagery, schema, "models:/pearl-starter-chesapeake9@starter")
    state = _settled(client, row.id)
    assert state["state"] == "error" and "no longer configured" in state["message"]
    assert elsewhere.url not in state["message"] and str(elsewhere.port) not in state["message"]
    assert elsewhere.requests == []
    # A stored URL that is a configured API's is that API.
    legacy = {**imagery, "url": apis["broken"].url + "/"}
    assert resolve_source(legacy, settings)["api"] == "broken"
    assert resolve_source({**imagery, "url": None}, settings)["api"] == "default"


def test_a_redirect_off_the_list_is_not_followed(
    client: TestClient, elsewhere: Listener, apis: dict[str, Listener]
) -> None:
    created = client.post("/api/projects", json=_stac("redirected", api="redirecting"))
    assert created.status_code == 201, created.text
    state = _settled(client, created.json()["id"])
    assert apis["redirecting"].requests, "the configured API was asked"
    assert elsewhere.requests == []
    assert state["state"] == "error" and "'redirecting'" in state["message"]
    said = _every_response_about(client, created.json()["id"])
    for leak in (elsewhere.url, f":{elsewhere.port}", apis["redirecting"].url, "moved to"):
        assert leak not in said


def test_an_error_body_of_the_api_reaches_no_response(client: TestClient, apis: dict[str, Listener]) -> None:
    created = client.post("/api/projects", json=_stac("broken api", api="broken"))
    assert created.status_code == 201, created.text
    state = _settled(client, created.json()["id"])
    assert apis["broken"].requests
    assert state["state"] == "error" and "'broken'" in state["message"] and "HTTP 500" in state["message"]
    said = _every_response_about(client, created.json()["id"])
    assert SECRET not in said and "/srv/stac" not in said and apis["broken"].url not in said


def test_asset_hrefs_that_are_not_urls_are_not_opened(
    client: TestClient, elsewhere: Listener, apis: dict[str, Listener]
) -> None:
    created = client.post("/api/projects", json=_stac("bad hrefs", api="bad-hrefs"))
    assert created.status_code == 201, created.text
    state = _settled(client, created.json()["id"])
    assert ("POST", "/search") in apis["bad-hrefs"].requests
    assert state["state"] == "error" and "not opened" in state["message"]
    said = _every_response_about(client, created.json()["id"])
    assert "/etc/passwd" not in said and "/vsicurl" not in said
    assert elsewhere.requests == []


def _mosaics(settings: Settings) -> list[Path]:
    return sorted(p for p in (settings.home_abs / "review").rglob("*.tif") if "aois" not in p.parts)


def test_projects_of_one_source_share_one_mosaic(client: TestClient, settings: Settings) -> None:
    states = client.app.state.services.states  # type: ignore[attr-defined]
    first = states.imagery_path(1)
    assert first.is_file()
    built = first.stat()
    created = client.post(
        "/api/projects", json={"name": "demo again", "imagery": {"source": "local", "collection": "demo"}}
    )
    assert created.status_code == 201, created.text
    project_id = created.json()["id"]
    state = _settled(client, project_id)
    assert state["state"] == "ready", state
    assert state["bounds"] == client.get("/api/projects/1").json()["imagery"]["bounds"]

    second = states.imagery_path(project_id)
    assert second == first and second.stat().st_ino == built.st_ino
    assert second.stat().st_mtime_ns == built.st_mtime_ns, "the second project's job wrote no second copy"
    assert _mosaics(settings) == [first]

    tms = morecantile.tms.get("WebMercatorQuad")
    tile = tms.tile(*center(client.get("/api/projects/1").json()), 15)
    tiles = [
        client.get(f"/tiles/imagery/{pid}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png?bidx=1&bidx=2&bidx=3")
        for pid in (1, project_id)
    ]
    assert [t.status_code for t in tiles] == [200, 200], [t.text[:200] for t in tiles]
    assert tiles[0].content == tiles[1].content and tiles[0].content.startswith(b"\x89PNG")


def test_sources_differ_in_their_digest_only_where_they_differ(settings: Settings) -> None:
    stac = {"source": "stac", "api": "default", "collections": ["b", "a"], "bbox": BBOX, "datetime": None}
    same = resolve_source({**stac, "collections": ["a", "b", "a"]}, settings)
    assert source_digest(resolve_source(stac, settings)) == source_digest(same)
    for other in ({"bbox": [*BBOX[:3], 38.97]}, {"api": "broken"}, {"datetime": "2021"}, {"collections": ["a"]}):
        assert source_digest(resolve_source({**stac, **other}, settings)) != source_digest(same)
    local = resolve_source({"collection": "demo"}, settings)
    assert local == {"source": "local", "collection": "demo"}
    assert source_digest(local) != source_digest(resolve_source({"collection": "train-a"}, settings))
    with pytest.raises(ImageryError, match="unknown STAC API"):
        resolve_source({**stac, "api": "nope"}, settings)


def test_concurrent_builds_of_one_mosaic_build_it_once(tmp_path: Path) -> None:
    dst = tmp_path / "imagery" / "abc" / "mosaic.tif"
    calls: list[Path] = []
    results: list[bool] = []

    def build(tmp: Path) -> None:
        calls.append(tmp)
        time.sleep(0.3)  # long enough for every other thread to be waiting
        tmp.write_bytes(b"mosaic")

    threads = [threading.Thread(target=lambda: results.append(shared_mosaic(dst, build))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and sorted(results) == [False, False, False, True]
    assert dst.read_bytes() == b"mosaic" and not calls[0].exists()
    assert sorted(p.name for p in dst.parent.iterdir()) == [".lock", "mosaic.tif"]
