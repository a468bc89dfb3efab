"""Compare two versions as maps in Chromium, as a mapper would: predict an AOI, label, retrain (a second version),
open "Compare maps", drag the swipe divider, switch to the change view, read the from -> to table, exit.
Screenshots: test-artifacts/review_app/compare/."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pearl_pipelines.settings import Settings
from tests.review_app.browser import Mapper, chromium_page, running_app
from tests.review_app.conftest import ARTIFACTS, new_home
from tests.review_app.data import class_places

pytestmark = pytest.mark.slow
FOLDER = ARTIFACTS / "compare"


@pytest.fixture(scope="module")
def server(review_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Settings]]:
    settings = new_home(tmp_path_factory, review_assets)
    with running_app(settings) as url:
        yield url, settings


@pytest.fixture(scope="module")
def page(server: tuple[str, Settings]) -> Iterator[Any]:
    shutil.rmtree(FOLDER, ignore_errors=True)
    with chromium_page() as page:
        yield page


def _compare_idle(page: Any) -> None:
    page.wait_for_function(
        "() => { const m = window.__pearlCompare?.maps(); return !!m && !!m.a && m.a.loaded() && m.a.areTilesLoaded()"
        " && m.b.loaded() && m.b.areTilesLoaded(); }",
        timeout=30000,
    )


def test_compare_two_versions_swipe_and_change(page: Any, server: tuple[str, Settings]) -> None:
    url, settings = server
    m = Mapper(page, url, settings, folder=FOLDER)
    tiles: list[tuple[str, int]] = []
    page.on("response", lambda r: tiles.append((r.url, r.status)) if "/tiles/compare/" in r.url else None)
    page.goto(f"{url}/?project=1")
    page.get_by_test_id("project-name").filter(has_text="Demo").wait_for()
    page.locator("[data-testid=ws-status][data-connected=true]").wait_for()
    m.wait_idle()

    # A predicted AOI, labels of two classes, and a retrain: model v1 beside the starter (v0).
    west, south, east, north = m.api("/api/projects/1")["imagery"]["bounds"]
    lon, lat, d = (west + east) / 2, (south + north) / 2, 0.0018
    page.keyboard.press("a")
    m.draw_polygon([(lon - d, lat - d), (lon + d, lat - d), (lon + d, lat + d), (lon - d, lat + d), (lon - d, lat - d)])
    m.wait_for("window.__pearl.predictionVersion(1) === 1")
    bounds = (lon - d, lat - d, lon + d, lat + d)
    page.keyboard.press("p")
    for key, name in (("1", "water"), ("3", "tree_canopy")):
        page.keyboard.press(key)
        for place in class_places(settings, bounds, name, n=3):
            m.click(*place[0])
            page.wait_for_timeout(150)
    page.locator("[data-testid=count-tree_canopy]").filter(has_text="3").wait_for()
    page.get_by_test_id("retrain").click()
    page.get_by_test_id("model-status").filter(has_text="model v1").wait_for(timeout=60000)
    m.wait_for("window.__pearl.predictionVersion(1) >= 2")
    page.get_by_test_id("checkpoints").locator("[data-testid=checkpoint-1]").wait_for()
    m.wait_idle()
    m.shot("retrained")

    # Compare maps: A = v0 (its map is made by a compare job), B = v1 (the AOI's current map).
    page.get_by_test_id("compare-maps").click()
    page.get_by_test_id("compare-mode").wait_for()
    assert page.get_by_test_id("compare-a").input_value() == "0"
    assert page.get_by_test_id("compare-b").input_value() == "1"
    m.wait_for("document.querySelector('#compare')?.dataset.ready === 'true'", timeout=90000)
    _compare_idle(page)
    assert any("/tiles/compare/1/maps/1/0/tiles/" in u and s == 200 for u, s in tiles), tiles[:4]
    assert any("/tiles/compare/1/maps/1/1/tiles/" in u and s == 200 for u, s in tiles), tiles[:4]
    m.shot("compare-swipe-middle")

    # Drag the divider to a quarter of the width: B's map is clipped there.
    divider = page.get_by_test_id("compare-divider").bounding_box()
    area = page.locator("#compare .cmp-maps").bounding_box()
    page.mouse.move(divider["x"] + divider["width"] / 2, area["y"] + area["height"] / 3)
    page.mouse.down()
    page.mouse.move(area["x"] + area["width"] * 0.25, area["y"] + area["height"] / 3, steps=8)
    page.mouse.up()
    split = float(page.locator("#compare .cmp-maps").get_attribute("data-split"))
    assert split == pytest.approx(0.25, abs=0.02)
    clip = page.evaluate("() => document.querySelector('#compare .cmp-map-b').style.clipPath")
    assert clip.startswith("inset(0px 0px 0px ") and clip.endswith("px)"), clip
    assert (
        abs(float(clip.removeprefix("inset(0px 0px 0px ").removesuffix("px)")) - area["width"] * 0.25)
        <= 0.02 * area["width"]
    )
    m.shot("compare-swipe-dragged")

    # The change view: the change layer's tiles, and the table the API gives.
    page.get_by_test_id("compare-mode-change").click()
    page.wait_for_function("() => document.querySelector('#compare')?.dataset.mode === 'change'")
    _compare_idle(page)
    assert any("/tiles/compare/1/changes/1/0/1/1/tiles/" in u and s == 200 for u, s in tiles)
    out = m.api("/api/projects/1/compare?aoi=1&a=0&b=1")
    rows = page.get_by_test_id("change-row")
    assert rows.count() == len(out["rows"]) > 0
    first = rows.first.inner_text()
    assert f"{out['rows'][0]['hectares']:.2f}" in first
    unchanged = page.get_by_test_id("unchanged-total").inner_text()
    assert f"{out['unchanged_hectares']:.2f}" in unchanged
    assert f"{out['changed_hectares']:.2f}" in page.get_by_test_id("changed-total").inner_text()
    m.shot("compare-change")

    # Exit: back to the mapping page.
    page.get_by_test_id("compare-exit").click()
    page.get_by_test_id("compare-mode").wait_for(state="detached")
    assert not page.errors, page.errors
