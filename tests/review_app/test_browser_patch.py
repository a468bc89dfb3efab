"""Patch the map by hand in Chromium, as a mapper would: predict an AOI, pick a class, take the Patch tool (H), draw a
polygon, see the map change, download the map (COG) from the Export section and find the patch's class inside the
polygon; copy the patch into labels; remove it and see the model's map back. Screenshots:
test-artifacts/review_app/patch/."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.features import geometry_mask
from rasterio.warp import transform_geom

from pearl_pipelines.settings import Settings
from tests.review_app.browser import Mapper, chromium_page, running_app
from tests.review_app.conftest import ARTIFACTS, new_home

pytestmark = pytest.mark.slow
FOLDER = ARTIFACTS / "patch"
FILL_CLASS = "structures"


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


def _ring(lon: float, lat: float, d: float) -> list[tuple[float, float]]:
    return [(lon - d, lat - d), (lon + d, lat - d), (lon + d, lat + d), (lon - d, lat + d), (lon - d, lat - d)]


def _download_cog(page: Any, tmp: Path) -> tuple[np.ndarray, Any, Any]:
    """Click the Export section's "Map (COG)" and read the file the browser saved."""
    with page.expect_download() as download:
        page.get_by_test_id("export-cog").click()
    path = tmp / download.value.suggested_filename
    download.value.save_as(path)
    with rasterio.open(path) as src:
        return src.read(1), src.crs, src.transform


def test_patch_a_polygon_and_find_it_in_the_exported_map(
    page: Any, server: tuple[str, Settings], tmp_path: Path
) -> None:
    url, settings = server
    m = Mapper(page, url, settings, folder=FOLDER)
    page.goto(f"{url}/?project=1")
    page.get_by_test_id("project-name").filter(has_text="Demo").wait_for()
    page.locator("[data-testid=ws-status][data-connected=true]").wait_for()
    m.wait_idle()

    west, south, east, north = m.api("/api/projects/1")["imagery"]["bounds"]
    lon, lat = (west + east) / 2, (south + north) / 2
    page.keyboard.press("a")
    m.draw_polygon(_ring(lon, lat, 0.0018))
    m.wait_for("window.__pearl.predictionVersion(1) === 1")
    m.wait_idle()
    m.shot("aoi-predicted")
    before, crs, transform = _download_cog(page, tmp_path)

    # Fill with the selected class: pick it (key 7), take the Patch tool (H), draw the polygon.
    classes = [c["name"] for c in m.api("/api/projects/1")["classes"]]
    index = classes.index(FILL_CLASS)
    page.keyboard.press(str(index + 1))
    page.keyboard.press("h")
    page.get_by_test_id("tool-patch").and_(page.locator(".active")).wait_for()
    assert page.get_by_test_id("patch-mode-fill").is_checked()
    patch_ring = _ring(lon + 0.0006, lat - 0.0004, 0.0005)
    for corner_lon, corner_lat in patch_ring[:-1]:
        m.click(corner_lon, corner_lat)
        page.wait_for_timeout(80)
    m.shot("patch-drawn")
    page.keyboard.press("Enter")
    m.wait_for("window.__pearl.predictionVersion(1) === 2")
    page.get_by_test_id("patch-list").locator("[data-testid^=patch-remove-]").first.wait_for()
    m.wait_idle()
    m.shot("patch-applied")

    # The exported map has the patch's class at every pixel inside the polygon as drawn (the clicked corners), and
    # nothing else changed.
    (patch,) = m.api("/api/projects/1/patches")
    assert patch["kind"] == "fill" and patch["class_name"] == FILL_CLASS and patch["aoi_ids"] == [1]
    after, _, _ = _download_cog(page, tmp_path)
    drawn = transform_geom("EPSG:4326", crs, patch["geometry"])
    inside = ~geometry_mask([drawn], out_shape=after.shape, transform=transform)
    inside &= before != 255
    assert inside.sum() > 200
    assert (after[inside] == index).all()
    assert (after[~inside] == before[~inside]).all()
    assert (before[inside] != index).sum() > 50  # the model had not mapped it so

    # Patches are not labels until asked: "Use as labels" copies it into labels of its class.
    assert page.get_by_test_id(f"count-{FILL_CLASS}").inner_text() == "0"
    page.get_by_test_id(f"patch-labels-{patch['id']}").click()
    page.get_by_test_id(f"count-{FILL_CLASS}").filter(has_text="1").wait_for()
    m.shot("patch-as-labels")

    # Remove it: the model's own map is back (a new layer version, no model run).
    page.get_by_test_id(f"patch-remove-{patch['id']}").click()
    m.wait_for("window.__pearl.predictionVersion(1) === 3")
    m.wait_idle()
    m.shot("patch-removed")
    restored, _, _ = _download_cog(page, tmp_path)
    assert (restored == before).all()
    assert m.api("/api/projects/1/patches") == []
    assert not page.errors, page.errors
