"""The projects page in a real browser (issue 24 item 1): the list, a STAC search with thumbnails, a new project from
the local `demo` collection with a start AOI, rename, members (add by e-mail, change role, remove) and delete.

The real app under uvicorn (local mode), headless Chromium, a real STAC API (rustac over the small catalog) as the
configured default API. Every step checks what the page shows and what the API holds, and leaves a screenshot in
test-artifacts/review_app/projects/.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pearl_pipelines.labels.accounts import Accounts
from pearl_pipelines.labels.store import LabelStore
from pearl_pipelines.settings import Settings
from tests.review_app.browser import Mapper, chromium_page, running_app
from tests.review_app.conftest import ARTIFACTS, new_home

pytestmark = pytest.mark.slow
FOLDER = ARTIFACTS / "projects"


@pytest.fixture(scope="module")
def server(
    review_assets: Path, tmp_path_factory: pytest.TempPathFactory, stac_server: Any
) -> Iterator[tuple[str, Settings]]:
    settings = new_home(tmp_path_factory, review_assets)
    with running_app(settings) as url:
        yield url, settings


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    shutil.rmtree(FOLDER, ignore_errors=True)
    with chromium_page() as page:
        yield page


def _row(page: Any, project_id: int) -> Any:
    return page.locator(f"[data-testid=project-row][data-id='{project_id}']")


def _click_lonlat(page: Any, lon: float, lat: float) -> None:
    """A click on the new-project dialog's small map at lon/lat."""
    point = page.evaluate("([x, y]) => window.__pearlCreateMap.project([x, y])", [lon, lat])
    box = page.get_by_test_id("create-map").bounding_box()
    page.mouse.click(box["x"] + point["x"], box["y"] + point["y"])


def test_projects_page_create_rename_members_delete(page: Any, server: tuple[str, Settings]) -> None:
    url, settings = server
    m = Mapper(page, url, settings, folder=FOLDER)

    # 1. The list: the demo project with its imagery, classes, labels, activity and the caller's role.
    page.goto(url)
    demo = _row(page, 1)
    demo.wait_for()
    assert "local · demo" in demo.inner_text()
    assert demo.get_by_test_id("project-classes").inner_text() == "9"
    assert demo.get_by_test_id("project-role").inner_text() == "owner"
    m.shot("projects-list")

    # 2. New project: a STAC search of the map's view shows thumbnails rendered by the server.
    page.get_by_test_id("new-project").click()
    dialog = page.get_by_test_id("create-dialog")
    dialog.get_by_test_id("local-collection").filter(has_text="demo").first.wait_for()
    page.wait_for_function("() => window.__pearlCreateMap && window.__pearlCreateMap.loaded()")
    dialog.get_by_test_id("tab-stac").click()
    dialog.get_by_test_id("stac-collection").fill("demo")
    dialog.get_by_test_id("stac-search").click()
    dialog.get_by_test_id("stac-item").first.wait_for(timeout=30000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=stac-item] img')]"
        ".every((i) => i.complete && i.naturalWidth > 0)",
        timeout=30000,
    )
    width = page.evaluate("() => document.querySelector('[data-testid=stac-item] img[src]').naturalWidth")
    assert 0 < width <= 256
    m.shot("stac-search-thumbnails")

    # 3. ... made of the local `demo` collection with the chesapeake9 starter, and a start AOI drawn on the map.
    dialog.get_by_test_id("tab-local").click()
    dialog.locator("[data-testid=local-collection][data-id=demo]").click()
    starter = dialog.locator("[data-testid=starter][data-name=pearl-starter-chesapeake9]")
    starter.click()
    assert "holdout F1" in starter.get_by_test_id("starter-f1").inner_text()
    dialog.get_by_test_id("new-project-name").fill("Shoreline copy")
    west, south, east, north = httpx.get(f"{url}/api/imagery/local", timeout=10).json()[0]["bbox"]
    lon, lat = (west + east) / 2, (south + north) / 2
    dialog.get_by_test_id("draw-aoi").click()
    _click_lonlat(page, lon - 0.002, lat - 0.0015)
    _click_lonlat(page, lon + 0.002, lat + 0.0015)
    dialog.get_by_test_id("clear-aoi").wait_for()
    m.shot("create-dialog")
    dialog.get_by_test_id("create-project").click()
    page.wait_for_url("**/?project=2", timeout=120000)
    page.get_by_test_id("project-name").filter(has_text="Shoreline copy").wait_for()
    made = httpx.get(f"{url}/api/projects/2", timeout=10).json()
    assert made["imagery_source"] == {"source": "local", "collection": "demo"}
    assert made["class_schema_id"] == "chesapeake9" and len(made["aois"]) == 1
    aoi_west, aoi_south, aoi_east, aoi_north = _bounds(made["aois"][0]["geometry"])
    assert aoi_west < lon < aoi_east and aoi_south < lat < aoi_north
    m.wait_idle()
    m.shot("new-project-map")

    # 4. Back to the list (the map page's top bar), and rename the new project.
    page.get_by_test_id("projects-link").click()
    _row(page, 2).wait_for()
    _row(page, 2).get_by_test_id("project-rename").click()
    page.get_by_test_id("rename-input").fill("Shoreline 2024")
    page.get_by_test_id("rename-input").press("Enter")
    _row(page, 2).get_by_test_id("project-open").filter(has_text="Shoreline 2024").wait_for()
    assert httpx.get(f"{url}/api/projects/2", timeout=10).json()["name"] == "Shoreline 2024"
    assert _row(page, 2).get_by_test_id("project-labels").inner_text() == "0"
    m.shot("renamed")

    # 5. Members: add by e-mail (a user who signed in once), change the role, remove.
    accounts = Accounts(LabelStore(settings.resolved_label_store_url), settings.auth_secret)
    ana = accounts.user("oidc:https://idp.example.org#ana", "Ana", "ana@example.org")
    _row(page, 2).get_by_test_id("project-members").click()
    members = page.get_by_test_id("members-dialog")
    members.get_by_test_id("member-row").first.wait_for()
    members.get_by_test_id("member-who").fill("nobody@example.org")
    members.get_by_test_id("member-add").click()
    members.get_by_test_id("members-error").filter(has_text="sign in once").wait_for()
    members.get_by_test_id("member-who").fill("ana@example.org")
    members.get_by_test_id("member-role").select_option("mapper")
    members.get_by_test_id("member-add").click()
    ana_row = members.locator("[data-testid=member-row][data-name=Ana]")
    ana_row.wait_for()
    assert "ana@example.org" in ana_row.inner_text()
    assert _roles(url, 2)["Ana"] == "mapper"
    m.shot("members")
    ana_row.get_by_test_id("member-role-select").select_option("viewer")
    _wait(lambda: _roles(url, 2).get("Ana") == "viewer")
    ana_row = members.locator("[data-testid=member-row][data-name=Ana]")
    ana_row.get_by_test_id("member-remove").click()
    ana_row.wait_for(state="detached")
    assert "Ana" not in _roles(url, 2)
    assert accounts.role(ana, 2) is None
    members.locator("[data-close]").click()

    # 6. Delete: the name must be typed; then the project is gone from the list and the API.
    _row(page, 2).get_by_test_id("project-delete").click()
    delete = page.get_by_test_id("delete-dialog")
    assert delete.get_by_test_id("delete-confirm-button").is_disabled()
    delete.get_by_test_id("delete-confirm").fill("Shoreline 2024")
    m.shot("delete-confirm")
    delete.get_by_test_id("delete-confirm-button").click()
    _row(page, 2).wait_for(state="detached")
    assert httpx.get(f"{url}/api/projects/2", timeout=10).status_code == 404
    assert [p["id"] for p in httpx.get(f"{url}/api/projects", timeout=10).json()] == [1]
    # An old link to it lands on the list, which says so.
    page.goto(f"{url}/?project=2")
    page.get_by_test_id("toast-error").filter(has_text="not one of your projects").wait_for()
    _row(page, 1).wait_for()
    m.shot("deleted")
    assert not page.errors, page.errors


def _bounds(geometry: dict[str, Any]) -> tuple[float, float, float, float]:
    ring = geometry["coordinates"][0]
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    return min(xs), min(ys), max(xs), max(ys)


def _roles(url: str, project_id: int) -> dict[str, str]:
    return {m["name"]: m["role"] for m in httpx.get(f"{url}/api/projects/{project_id}/members", timeout=10).json()}


def _wait(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.1)
