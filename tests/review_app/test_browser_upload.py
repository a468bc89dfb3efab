"""Your own imagery from the browser (issue 24 item 2), in Chromium as a mapper would: on the projects page, start a
new project, upload a 4-band GeoTIFF (EPSG:3857) in chunks over a connection that drops once, map its bands (its
fourth band says "alpha", so the page asks), see the preview, ingest it, create the project and see the imagery on
the map. Screenshots: test-artifacts/review_app/upload/."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds

from pearl_pipelines.settings import Settings
from tests.review_app.browser import Mapper, chromium_page, running_app
from tests.review_app.conftest import ARTIFACTS
from tests.review_app.test_uploads import home_of_its_own

pytestmark = pytest.mark.slow
FOLDER = ARTIFACTS / "upload"
RED, BLUE, NIR = (200, 40, 40), (40, 60, 200), 120
SIZE, PIXEL = 512, 2.0  # 1 km on a side
ORIGIN = (-8519000.0, 4711000.0)  # EPSG:3857, near Annapolis
CHUNK = 256 << 10  # PEARL_MAX_BODY_BYTES of the test's app: the largest chunk


def drone_scene(path: Path) -> tuple[float, float, float, float]:
    """A 4-band uint8 GeoTIFF written the way many tools write RGBN: band 4 flagged as alpha (it is NIR). Left half
    red, right half blue. Returns its lon/lat bounds."""
    data = np.empty((4, SIZE, SIZE), dtype=np.uint8)
    for band in range(3):
        data[band, :, : SIZE // 2] = RED[band]
        data[band, :, SIZE // 2 :] = BLUE[band]
    data[3] = NIR
    transform = from_origin(*ORIGIN, PIXEL, PIXEL)
    profile = {"driver": "GTiff", "width": SIZE, "height": SIZE, "count": 4, "dtype": "uint8", "crs": "EPSG:3857"}
    with rasterio.open(path, "w", transform=transform, photometric="RGB", alpha="YES", **profile) as dst:
        dst.write(data)
    with rasterio.open(path) as written:
        assert written.colorinterp[3] == ColorInterp.alpha
    west, north = ORIGIN
    return transform_bounds("EPSG:3857", "EPSG:4326", west, north - SIZE * PIXEL, west + SIZE * PIXEL, north)


def one_band(path: Path) -> Path:
    profile = {"driver": "GTiff", "width": 64, "height": 64, "count": 1, "dtype": "uint8", "crs": "EPSG:3857"}
    with rasterio.open(path, "w", transform=from_origin(*ORIGIN, PIXEL, PIXEL), **profile) as dst:
        dst.write(np.full((1, 64, 64), 90, dtype=np.uint8))
    return path


# The preview PNG's pixels a quarter in from its west and east edges, halfway down (RGBA).
PREVIEW_PIXELS = """img => {
  const c = document.createElement("canvas");
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext("2d"); g.drawImage(img, 0, 0);
  const y = Math.floor(c.height / 2);
  return [Math.floor(c.width / 4), Math.floor(3 * c.width / 4)].map(x => Array.from(g.getImageData(x, y, 1, 1).data));
}"""


@pytest.fixture(scope="module")
def server(review_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Settings]]:
    # Small bodies: the file goes up in several chunks, so the progress bar and the resume have something to do.
    settings = home_of_its_own(tmp_path_factory, review_assets)  # uploads do not change the session's catalog
    with running_app(settings, wait_ready=False, env={"PEARL_MAX_BODY_BYTES": str(CHUNK)}) as url:
        yield url, settings


@pytest.fixture(scope="module")
def page(server: tuple[str, Settings]) -> Iterator[Any]:
    shutil.rmtree(FOLDER, ignore_errors=True)
    with chromium_page() as page:
        yield page


def _colour_at(page: Any, x: float, y: float) -> tuple[int, int, int]:
    shot = Image.open(io.BytesIO(page.screenshot(clip={"x": x - 2, "y": y - 2, "width": 5, "height": 5})))
    return tuple(int(v) for v in np.asarray(shot.convert("RGB")).reshape(-1, 3).mean(axis=0))  # type: ignore[return-value]


def test_create_a_project_from_an_uploaded_geotiff(page: Any, server: tuple[str, Settings], tmp_path: Path) -> None:
    url, settings = server
    m = Mapper(page, url, settings, folder=FOLDER)
    scene = tmp_path / "drone_scene.tif"
    west, south, east, north = drone_scene(scene)

    # The connection drops once, in the middle of the file: the page asks the server what arrived and resumes.
    puts: list[str] = []

    def flaky(route: Any) -> None:
        if route.request.method == "PUT":
            puts.append(route.request.headers.get("content-range", ""))
            if len(puts) == 2:
                return route.abort("connectionreset")
        return route.continue_()

    page.goto(url)
    page.get_by_test_id("new-project").click()
    page.get_by_test_id("new-project-name").fill("My drone scene")
    page.get_by_test_id("tab-upload").click()

    # A bad file first: refused with a message that names the problem and what is accepted.
    page.get_by_test_id("upload-input").set_input_files(str(one_band(tmp_path / "panchromatic.tif")))
    refused = page.get_by_test_id("upload-error")
    refused.wait_for(timeout=60000)
    assert "has 1 band(s)" in refused.inner_text() and "accepted: GeoTIFF files" in refused.inner_text()
    m.shot("bad-file-refused")

    page.route("**/api/uploads/*", flaky)
    page.get_by_test_id("upload-input").set_input_files(str(scene))
    page.get_by_test_id("band-red").wait_for(timeout=60000)
    m.shot("bands-to-choose")

    # Band 4 says "alpha": the page asks which band is which; the preview follows the choice.
    assert "alpha" in page.get_by_test_id("upload-file").inner_text()
    assert page.get_by_test_id("upload-ingest").is_disabled()
    for role, band in (("red", "1"), ("green", "2"), ("blue", "3"), ("nir", "4")):
        page.get_by_test_id(f"band-{role}").select_option(band)
    page.wait_for_function(
        "() => { const img = document.querySelector('[data-testid=upload-preview]');"
        " return img?.dataset.bands === '1,2,3' && img.complete && img.naturalWidth > 0; }"
    )  # the preview of the chosen bands (the default one, or one of an earlier choice, may be shown before)
    left, right = page.get_by_test_id("upload-preview").evaluate(PREVIEW_PIXELS)
    assert left[0] > 200 > 60 > left[2] and right[2] > 200 > 60 > right[0], (left, right)  # red west, blue east
    assert page.get_by_test_id("upload-progress").evaluate("p => p.value") == 1
    page.get_by_test_id("upload-name").fill("Drone scene")
    m.shot("preview-and-bands")
    size = scene.stat().st_size
    assert len(puts) == -(-size // CHUNK) + 1  # every chunk once, the dropped one twice
    assert puts[1] == puts[2] == f"bytes {CHUNK}-{2 * CHUNK - 1}/{size}"

    # Ingest: the new collection is the dialog's imagery, selected.
    page.get_by_test_id("upload-ingest").click()
    page.wait_for_function(
        "() => document.querySelector('[data-testid=ingest-status]')?.dataset.collection", timeout=120000
    )
    collection = page.get_by_test_id("ingest-status").get_attribute("data-collection")
    assert collection is not None and collection.startswith("upload-") and collection.endswith("-drone-scene")
    page.locator(f"[data-testid=local-collection][data-id='{collection}'].on").wait_for(timeout=30000)
    m.shot("ingested")
    with rasterio.open(settings.catalog_dir / collection / "drone_scene" / "image.tif") as cog:
        assert [int(cog.read(k)[10, 10]) for k in (1, 2, 3, 4)] == [*RED, NIR]  # NIR kept, not taken for alpha

    # Create the project: the map opens on it and draws the uploaded imagery.
    tiles: list[tuple[str, int]] = []
    page.on("response", lambda r: tiles.append((r.url, r.status)) if "/tiles/imagery/" in r.url else None)
    page.get_by_test_id("create-project").click()
    page.wait_for_url("**/?project=*", timeout=30000)
    project_id = int(page.url.rsplit("=", 1)[1])
    m.wait_for("window.__pearl?.map && window.__pearl.map.getSource('imagery')", timeout=120000)
    m.wait_idle()
    page.evaluate("(b) => window.__pearl.map.fitBounds(b, {duration: 0, padding: 40})", [west, south, east, north])
    m.wait_idle()
    m.shot("project-map")
    mine = [s for u, s in tiles if f"/tiles/imagery/{project_id}/" in u]
    assert mine and all(s == 200 for s in mine), tiles[:5]
    lat = (south + north) / 2
    left = _colour_at(page, *m.screen(west + (east - west) * 0.25, lat))
    right = _colour_at(page, *m.screen(west + (east - west) * 0.75, lat))
    assert left[0] > left[2] + 60 and right[2] > right[0] + 60, (left, right)  # red west half, blue east half
    assert not page.errors, page.errors
