"""Upload an AOI file in Chromium, as a mapper would: a GeoPackage holding an L-shaped field in a UTM CRS goes in
through the AOI section's "Upload AOI"; the AOI appears, is predicted by itself, and its map covers the L only:
the exported COG is nodata in the L's empty corner and mapped inside, and a map tile there is transparent. A file
of points gets an error toast that says why. Screenshots: test-artifacts/review_app/aoi_upload/."""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import geopandas as gpd
import httpx
import morecantile
import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.features import geometry_mask
from rasterio.warp import transform_geom
from shapely.geometry import Point, Polygon

from pearl_pipelines.classes import NODATA_CLASS
from pearl_pipelines.settings import Settings
from tests.review_app.browser import Mapper, chromium_page, running_app
from tests.review_app.conftest import ARTIFACTS, new_home

pytestmark = pytest.mark.slow
FOLDER = ARTIFACTS / "aoi_upload"
TILE_ZOOM = 17


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


def _download_cog(page: Any, tmp: Path) -> tuple[np.ndarray, Any, Any]:
    """Click the Export section's "Map (COG)" and read the file the browser saved."""
    with page.expect_download() as download:
        page.get_by_test_id("export-cog").click()
    path = tmp / download.value.suggested_filename
    download.value.save_as(path)
    with rasterio.open(path) as src:
        return src.read(1), src.crs, src.transform


def _alpha_at(url: str, tiles: str, lon: float, lat: float) -> int:
    """The alpha of the prediction tile's pixel at lon/lat (zoom TILE_ZOOM), fetched like the map fetches it."""
    tms = morecantile.tms.get("WebMercatorQuad")
    tile = tms.tile(lon, lat, TILE_ZOOM)
    response = httpx.get(url + tiles.format(z=tile.z, x=tile.x, y=tile.y), timeout=30)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content)).convert("RGBA")
    west, south, east, north = tms.bounds(tile)
    col = int((lon - west) / (east - west) * image.width)
    row = int((north - lat) / (north - south) * image.height)
    return int(np.asarray(image)[row, col, 3])


def test_upload_a_geopackage_and_see_it_predicted_inside_the_polygon_only(
    page: Any, server: tuple[str, Settings], tmp_path: Path
) -> None:
    url, settings = server
    m = Mapper(page, url, settings, folder=FOLDER)
    page.goto(f"{url}/?project=1")
    page.get_by_test_id("project-name").filter(has_text="Demo").wait_for()
    page.locator("[data-testid=ws-status][data-connected=true]").wait_for()
    m.wait_idle()

    # An L-shaped field (400 m arms, 150 m wide) at the middle of the imagery, in its UTM zone, as a GeoPackage.
    west, south, east, north = m.api("/api/projects/1")["imagery"]["bounds"]
    middle = gpd.GeoSeries([Point((west + east) / 2, (south + north) / 2)], crs="EPSG:4326")
    utm = middle.estimate_utm_crs()
    centre = middle.to_crs(utm).iloc[0]
    x, y = centre.x - 200, centre.y - 200
    ell = Polygon([(x, y), (x + 400, y), (x + 400, y + 150), (x + 150, y + 150), (x + 150, y + 400), (x, y + 400)])
    gpkg = tmp_path / "north_field.gpkg"
    gpd.GeoDataFrame({"name": ["North field"]}, geometry=[ell], crs=utm).to_file(gpkg, engine="pyogrio")
    page.get_by_test_id("aoi-upload").scroll_into_view_if_needed()  # the AOI section, at the foot of the left panel
    m.shot("before-upload")

    page.get_by_test_id("aoi-upload-grouping").select_option("per_feature")
    page.get_by_test_id("aoi-upload-file").set_input_files(str(gpkg))
    page.get_by_test_id("aoi-list").filter(has_text="North field").wait_for()
    (aoi,) = [a for a in m.api("/api/projects/1/aois") if a["name"] == "North field"]
    m.wait_for(f"window.__pearl.predictionVersion({aoi['id']}) >= 1", timeout=120000)
    deadline = time.monotonic() + 120
    while (layer := m.api(f"/api/projects/1/aois/{aoi['id']}")["prediction"]) is None or layer["partial"]:
        assert time.monotonic() < deadline, "the whole AOI was not predicted in time"
        time.sleep(0.5)
    m.wait_for(f"window.__pearl.predictionVersion({aoi['id']}) === {layer['version']}")
    m.wait_idle()
    page.get_by_test_id("aoi-upload").scroll_into_view_if_needed()
    m.shot("uploaded-l-predicted")

    # The exported map: nodata in the L's empty corner (inside its bounding box), mapped inside the L.
    classes, crs, transform = _download_cog(page, tmp_path)
    assert crs.is_projected
    outside = geometry_mask([transform_geom("EPSG:4326", crs, aoi["geometry"])], classes.shape, transform)
    assert outside.sum() > 0.5 * (~outside).sum()  # the empty corner is in the file ...
    assert (classes[outside] == NODATA_CLASS).all()  # ... as nodata
    assert (classes[~outside] != NODATA_CLASS).mean() > 0.99

    # A tile of the map: transparent in the empty corner, opaque inside the L.
    corner = gpd.GeoSeries([Point(x + 300, y + 300), Point(x + 75, y + 75)], crs=utm).to_crs("EPSG:4326")
    tiles = httpx.get(url + layer["tilejson"]["classes"], timeout=10).json()["tiles"][0]
    tiles = tiles.removeprefix(url)
    assert _alpha_at(url, tiles, corner.iloc[0].x, corner.iloc[0].y) == 0
    assert _alpha_at(url, tiles, corner.iloc[1].x, corner.iloc[1].y) == 255

    # A file of points: refused with a toast that says why, and no AOI is added.
    points = tmp_path / "wells.geojson"
    gpd.GeoDataFrame(geometry=[Point(x, y), Point(x + 9, y)], crs=utm).to_file(points, engine="pyogrio")
    count = len(m.api("/api/projects/1/aois"))
    page.get_by_test_id("aoi-upload-file").set_input_files(str(points))
    toast = page.get_by_test_id("toast-error").filter(has_text="AOIs are polygons")
    toast.wait_for()
    assert "Point" in toast.inner_text()
    m.shot("points-refused")
    assert len(m.api("/api/projects/1/aois")) == count
    assert not page.errors, page.errors
