"""The projects page's API (issue 24 item 1): the list with its figures, rename, delete, members by e-mail, and what a
new project can be made of (local collections, a configured STAC API's items with thumbnails, starter models).

Real app (TestClient), real label store, a real STAC API (rustac over the small catalog) and a real OpenID Connect
issuer for the members' e-mails.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from fastapi.testclient import TestClient
from sqlalchemy import event

from pearl_pipelines.labels.project_admin import ProjectDeletionRow
from pearl_pipelines.settings import Settings
from tests.review_app.conftest import center, new_home, oidc, square, wait_ready
from tests.review_app.idp import Issuer

DEMO = {"source": "local", "collection": "demo"}
STARTER9 = "models:/pearl-starter-chesapeake9@starter"


def _create(client: TestClient, name: str) -> dict[str, Any]:
    body = {"name": name, "imagery": DEMO, "class_schema": "chesapeake9", "base_model": STARTER9}
    response = client.post("/api/projects", json=body)
    assert response.status_code == 201, response.text
    return response.json()


@contextlib.contextmanager
def queries(client: TestClient) -> Iterator[list[str]]:
    """The SQL statements the label store runs for requests inside the block (not those of the app's background
    threads, all named pearl-*: jobs and their heartbeat, which share the engine since jobs are rows)."""
    engine = client.app.state.services.store.engine  # type: ignore[attr-defined]
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if not threading.current_thread().name.startswith("pearl-"):
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", count)


def test_the_list_shows_imagery_classes_labels_activity_and_role(client: TestClient, project: dict[str, Any]) -> None:
    lon, lat = center(project)
    before = {p["id"]: p for p in client.get("/api/projects").json()}[1]
    assert before["imagery_source"] == DEMO and before["class_schema_id"] == "chesapeake9"
    assert before["class_count"] == 9 and before["role"] == "owner"
    aoi = client.post("/api/projects/1/aois", json={"geometry": square(lon, lat, 0.002)}).json()
    for dx in (0.0, 0.0005):
        point = {"type": "Point", "coordinates": [lon + dx, lat]}
        added = client.post(
            "/api/projects/1/labels", json={"class_name": "water", "geometry": point, "aoi_id": aoi["id"]}
        )
        assert added.status_code == 201, added.text
    after = {p["id"]: p for p in client.get("/api/projects").json()}[1]
    assert after["label_count"] == before["label_count"] + 2
    assert after["last_activity"] > before["last_activity"]


def test_the_list_costs_the_same_queries_for_one_project_or_many(client: TestClient) -> None:
    with queries(client) as one:
        assert client.get("/api/projects").status_code == 200
    for n in range(3):
        _create(client, f"query count {n}")
    with queries(client) as many:
        listed = client.get("/api/projects").json()
    assert len(listed) >= 4
    assert len(many) == len(one), (one, many)  # no query per project


def test_rename_refuses_taken_and_blank_names(client: TestClient) -> None:
    made = _create(client, "to rename")
    renamed = client.patch(f"/api/projects/{made['id']}", json={"name": "renamed project"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "renamed project"
    taken = client.patch(f"/api/projects/{made['id']}", json={"name": client.get("/api/projects/1").json()["name"]})
    assert taken.status_code == 422 and "already exists" in taken.json()["detail"]
    assert client.patch(f"/api/projects/{made['id']}", json={"name": "   "}).status_code == 422
    assert client.patch(f"/api/projects/{made['id']}", json={"name": "a\nb"}).status_code == 422
    names = {p["id"]: p["name"] for p in client.get("/api/projects").json()}
    assert names[made["id"]] == "renamed project"


def test_delete_needs_the_name_then_the_project_is_gone_everywhere(client: TestClient, project: dict[str, Any]) -> None:
    made = _create(client, "short lived")
    pid = made["id"]
    lon, lat = center(project)
    wait_ready(client, pid)
    assert client.post(f"/api/projects/{pid}/aois", json={"geometry": square(lon, lat, 0.001)}).status_code == 201
    assert client.get(f"/api/projects/{pid}/labels").status_code == 200  # remembered by the guard's cache
    unconfirmed = client.delete(f"/api/projects/{pid}")
    assert unconfirmed.status_code == 422 and "confirm" in unconfirmed.json()["detail"]
    assert client.delete(f"/api/projects/{pid}", params={"confirm": "short"}).status_code == 422
    assert client.get(f"/api/projects/{pid}").status_code == 200  # nothing happened
    settings = client.app.state.services.settings  # type: ignore[attr-defined]
    folder = client.app.state.services.states.paths(pid).root  # type: ignore[attr-defined]
    assert folder.is_dir()
    gone = client.delete(f"/api/projects/{pid}", params={"confirm": "short lived"})
    assert gone.status_code == 200 and gone.json()["name"] == "short lived"
    assert not folder.exists()  # moved aside, not erased: restorable by an operator
    assert [p.name.split("-")[0] for p in (settings.home_abs / "review" / "deleted").iterdir()] == [str(pid)]
    unknown = {"detail": f"no project with id {pid}"}
    for path in (f"/api/projects/{pid}", f"/api/projects/{pid}/labels", f"/api/projects/{pid}/aois"):
        response = client.get(path)
        assert (response.status_code, response.json()) == (404, unknown), path
    assert client.get(f"/tiles/imagery/{pid}/tiles/WebMercatorQuad/15/9000/12000.png").status_code == 404
    assert client.delete(f"/api/projects/{pid}", params={"confirm": "short lived"}).status_code == 404
    assert pid not in {p["id"] for p in client.get("/api/projects").json()}
    # The name is free again, and the id is never given out again.
    again = _create(client, "short lived")
    assert again["id"] > pid
    with client.app.state.services.store.session() as s:  # type: ignore[attr-defined]
        tomb = s.get(ProjectDeletionRow, pid)
        assert tomb is not None and tomb.name == "short lived"
    # The deletion is audited under the deleted project (its trail is kept).
    rows = client.app.state.services.accounts.audit_trail(pid)  # type: ignore[attr-defined]
    assert [r.action for r, _ in rows][:1] == ["project.delete"]


def test_local_collections_and_starters_are_listed_without_mlflow(client: TestClient) -> None:
    collections = {c["id"]: c for c in client.get("/api/imagery/local").json()}
    assert collections["demo"]["item_count"] == 16 and len(collections["demo"]["bbox"]) == 4
    starters = {s["class_schema_id"]: s for s in client.get("/api/starters").json()}
    assert set(starters) == {"chesapeake9", "chesapeake4"}
    nine = starters["chesapeake9"]
    assert nine["base_model"] == STARTER9 and nine["available"] and nine["source"] == "local"
    assert len(nine["class_titles"]) == 9
    four = starters["chesapeake4"]  # not stored on this server: the shipped weights' measured F1
    assert four["source"] == "shipped" and not four["available"]
    assert four["holdout_f1"] is not None and 0.5 < four["holdout_f1"] <= 1.0
    assert [a["id"] for a in client.get("/api/imagery/stac").json()] == ["default"]


@pytest.fixture(scope="module")
def stac_client(
    review_assets: Path, tmp_path_factory: pytest.TempPathFactory, stac_server: Any
) -> Iterator[TestClient]:
    """An app whose default STAC API is rustac over the small catalog."""
    from review_app.main import create_app

    with TestClient(create_app(new_home(tmp_path_factory, review_assets))) as test_client:
        yield test_client


def test_stac_search_finds_items_in_the_view_with_thumbnails(stac_client: TestClient) -> None:
    local = {c["id"]: c for c in stac_client.get("/api/imagery/local").json()}["demo"]
    west, south, east, north = local["bbox"]
    view = f"{west},{south},{(west + east) / 2},{(south + north) / 2}"
    found = stac_client.get("/api/imagery/stac/default/search", params={"collections": "demo", "bbox": view})
    assert found.status_code == 200, found.text
    items = found.json()["items"]
    assert 1 <= len(items) <= 12 and all(i["collection"] == "demo" for i in items)
    thumb = stac_client.get(items[0]["thumbnail"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    with rasterio.open(io.BytesIO(thumb.content)) as png:
        pixels = png.read()
    assert max(png.width, png.height) <= 256 and pixels.shape[0] == 4  # RGBA
    assert np.std(pixels[:3].astype(float)) > 5  # imagery, not a blank square
    # The search box and the ids are checked; unknown items and APIs are 404s, nothing is fetched for them.
    far = stac_client.get("/api/imagery/stac/default/search", params={"collections": "demo", "bbox": "0,0,10,10"})
    assert far.status_code == 422 and "zoom in" in far.json()["detail"]
    bad = stac_client.get("/api/imagery/stac/default/search", params={"collections": "demo", "bbox": "1,2,3"})
    assert bad.status_code == 422 and "west,south,east,north" in bad.json()["detail"]
    assert stac_client.get("/api/imagery/stac/default/items/demo/nope/thumbnail.png").status_code == 404
    nope = stac_client.get("/api/imagery/stac/elsewhere/search", params={"collections": "demo", "bbox": view})
    assert nope.status_code == 404 and "configured" in nope.json()["detail"]
    url = stac_client.get("/api/imagery/stac/http:%2F%2Fevil/search", params={"collections": "demo", "bbox": view})
    assert url.status_code in (404, 422)
    # What the dialog sends for a search it found items with: a project mosaicked from that API's items.
    imagery = {"source": "stac", "api": "default", "collections": ["demo"], "bbox": [float(v) for v in view.split(",")]}
    body = {"name": "from a STAC search", "imagery": imagery, "class_schema": "chesapeake9", "base_model": STARTER9}
    made = stac_client.post("/api/projects", json=body)
    assert made.status_code == 201, made.text
    ready = wait_ready(stac_client, made.json()["id"], timeout=120)
    assert ready["imagery"]["state"] == "ready" and ready["imagery"]["tilejson"]["true_color"]


@pytest.fixture(scope="module")
def oidc_client(review_assets: Path, tmp_path_factory: pytest.TempPathFactory, issuer: Issuer) -> Iterator[TestClient]:
    from review_app.main import create_app

    settings: Settings = oidc(new_home(tmp_path_factory, review_assets), issuer)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_members_by_email_change_role_and_remove(oidc_client: TestClient, issuer: Issuer) -> None:
    owner = {"authorization": f"Bearer {issuer.token('olga', email='Olga@Example.org')}"}
    ana = {"authorization": f"Bearer {issuer.token('ana', email='ana@example.org')}"}
    made = oidc_client.post(
        "/api/projects",
        json={"name": "team map", "imagery": DEMO, "class_schema": "chesapeake9", "base_model": STARTER9},
        headers=owner,
    )
    assert made.status_code == 201, made.text
    pid = made.json()["id"]
    members = f"/api/projects/{pid}/members"
    not_yet = oidc_client.put(members, json={"email": "ana@example.org", "role": "mapper"}, headers=owner)
    assert not_yet.status_code == 422 and "sign in once" in not_yet.json()["detail"]
    assert oidc_client.get("/api/me", headers=ana).status_code == 200  # ana signs in once
    assert oidc_client.get("/api/projects", headers=ana).json() == []
    added = oidc_client.put(members, json={"email": "ANA@example.org ", "role": "mapper"}, headers=owner)
    assert added.status_code == 200, added.text
    by_name = {m["name"]: m for m in added.json()}
    assert by_name["ana"]["role"] == "mapper" and by_name["ana"]["email"] == "ana@example.org"
    assert by_name["olga"]["email"] == "olga@example.org" and by_name["olga"]["role"] == "owner"
    listed = oidc_client.get("/api/projects", headers=ana).json()
    assert [(p["id"], p["role"]) for p in listed] == [(pid, "mapper")]
    # A mapper may not manage members, rename or delete.
    assert (
        oidc_client.put(members, json={"email": "olga@example.org", "role": "viewer"}, headers=ana).status_code == 403
    )
    assert oidc_client.patch(f"/api/projects/{pid}", json={"name": "mine"}, headers=ana).status_code == 403
    assert oidc_client.delete(f"/api/projects/{pid}", params={"confirm": "team map"}, headers=ana).status_code == 403
    both = oidc_client.put(members, json={"role": "viewer"}, headers=owner)
    assert both.status_code == 422 and "exactly one" in both.json()["detail"]
    demoted = oidc_client.put(members, json={"subject": issuer.subject("ana"), "role": "viewer"}, headers=owner)
    assert {m["name"]: m["role"] for m in demoted.json()}["ana"] == "viewer"
    removed = oidc_client.delete(f"{members}/{by_name['ana']['id']}", headers=owner)
    assert [m["name"] for m in removed.json()] == ["olga"]
    assert oidc_client.get(f"/api/projects/{pid}", headers=ana).status_code == 404
    # Deleted (once its imagery job is done: a running job makes it wait, 409): gone for its owner too.
    wait_ready(oidc_client, pid, headers=owner)
    assert oidc_client.delete(f"/api/projects/{pid}", params={"confirm": "team map"}, headers=owner).status_code == 200
    assert oidc_client.get(f"/api/projects/{pid}", headers=owner).status_code == 404
    assert pid not in [p["id"] for p in oidc_client.get("/api/projects", headers=owner).json()]


def test_local_collections_hide_other_users_uploads(tmp_path: Path) -> None:
    from review_app.services.imagery_choices import local_collections

    settings = Settings(home=tmp_path)
    for name in ("demo", "upload-7-mine", "upload-8-theirs"):
        folder = settings.catalog_dir / name
        folder.mkdir(parents=True)
        doc = {"type": "Collection", "id": name, "description": "", "links": [{"rel": "item", "href": "x.json"}]}
        (folder / "collection.json").write_text(json.dumps(doc))
    assert [c.id for c in local_collections(settings, 7)] == ["demo", "upload-7-mine"]
    assert [c.id for c in local_collections(settings, 8)] == ["demo", "upload-8-theirs"]
