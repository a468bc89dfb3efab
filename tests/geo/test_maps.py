"""Regional maps: tile predictions mosaicked over a region (first valid pixel wins), clipped and blanked
outside it, written as class + confidence COGs with areas, a preview and a STAC item."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.warp import transform_geom
from shapely.geometry import box, mapping

from pearl_pipelines.classes import NODATA_CLASS, load_schema
from pearl_pipelines.geo.cog import validate_cog, write_cog
from pearl_pipelines.geo.maps import MapError, area_hectares, class_counts, region_mosaic, write_region_map
from pearl_pipelines.geo.regions import Region, RegionProperties

UTM = "EPSG:26918"
X0, Y0 = 370_000.0, 4_313_000.0
SCHEMA = load_schema("chesapeake4")


def _classes(path: Path, data: np.ndarray, col: int) -> Path:
    tags = {"schema": SCHEMA.id, "classes": ",".join(SCHEMA.names)}
    transform = from_origin(X0 + col, Y0, 1.0, 1.0)
    return write_cog(
        path, data, crs=UTM, transform=transform, nodata=NODATA_CLASS, colormap=SCHEMA.colormap(), tags=tags
    )


def _region(left: float, bottom: float, right: float, top: float) -> Region:
    geometry = transform_geom(UTM, "EPSG:4326", mapping(box(left, bottom, right, top)))
    properties = RegionProperties(name="test-region", role="custom", datetime=dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
    return Region(geometry=geometry, properties=properties)


@pytest.fixture
def tiles(tmp_path: Path) -> tuple[list[Path], list[Path], np.ndarray, np.ndarray]:
    """Two 40 x 40 class tiles side by side with one shared column; the west one has a nodata hole."""
    rng = np.random.default_rng(0)
    west, east = rng.integers(0, 4, (40, 40), dtype=np.uint8), rng.integers(0, 4, (40, 40), dtype=np.uint8)
    west[5:10, 5:10] = NODATA_CLASS
    classes = [_classes(tmp_path / "w.tif", west, 0), _classes(tmp_path / "e.tif", east, 39)]
    confidence = [
        write_cog(tmp_path / f"c{i}.tif", np.full((40, 40), 100 + i, np.uint8), crs=UTM, transform=t, nodata=0)
        for i, t in enumerate((from_origin(X0, Y0, 1, 1), from_origin(X0 + 39, Y0, 1, 1)))
    ]
    return classes, confidence, west, east


def test_region_mosaic_is_the_tiles_pixels_clipped_and_blanked_outside(tiles, tmp_path: Path) -> None:
    classes, _, west, east = tiles
    whole, transform, crs = region_mosaic(classes, _region(X0, Y0 - 40, X0 + 79, Y0), NODATA_CLASS)
    assert crs == CRS.from_string(UTM) and transform == from_origin(X0, Y0, 1, 1) and whole.shape == (40, 79)
    expected = np.concatenate([west, east[:, 1:]], axis=1)
    expected[:, 39] = np.where(west[:, 39] == NODATA_CLASS, east[:, 0], west[:, 39])  # the first tile wins
    # Lon/lat region edges are not exact in UTM: compare away from the border pixels.
    np.testing.assert_array_equal(whole[1:-1, 1:-1], expected[1:-1, 1:-1])
    assert (whole[5:10, 5:10] == NODATA_CLASS).all(), "a hole no tile fills stays nodata"

    part, transform, _ = region_mosaic(classes, _region(X0 + 20.5, Y0 - 30, X0 + 60, Y0 - 10.5), NODATA_CLASS)
    col, row = round(transform.c - X0), round(Y0 - transform.f)
    assert transform.c - X0 == col and Y0 - transform.f == row, "the crop stays on the tile grid"
    assert 19 <= col <= 21 and 9 <= row <= 11 and part.shape[1] in range(39, 43)
    inside = part[2:-2, 2:-2]
    np.testing.assert_array_equal(
        inside, expected[row + 2 : row + part.shape[0] - 2, col + 2 : col + part.shape[1] - 2]
    )


def test_pixels_outside_a_non_rectangular_region_are_nodata(tiles) -> None:
    classes = tiles[0]
    triangle = transform_geom(
        UTM, "EPSG:4326", {"type": "Polygon", "coordinates": [[(X0, Y0), (X0 + 79, Y0), (X0, Y0 - 40), (X0, Y0)]]}
    )
    region = _region(X0, Y0 - 40, X0 + 79, Y0).model_copy(update={"geometry": triangle})
    band, _, _ = region_mosaic(classes, region, NODATA_CLASS)
    assert (band[-3:, -30:] == NODATA_CLASS).all() and (band[1:4, 20:30] != NODATA_CLASS).all()


def test_write_region_map_writes_cogs_areas_preview_and_item(tiles, tmp_path: Path) -> None:
    classes, confidence, _, _ = tiles
    region = _region(X0, Y0 - 40, X0 + 79, Y0)
    built = write_region_map(
        region,
        class_paths=classes,
        confidence_paths=confidence,
        out_dir=tmp_path / "map",
        model_uri="models:/m/3",
        model_slug="m-v3",
    )
    for path in (built.classes_path, built.confidence_path):
        assert validate_cog(path)[0]
    with rasterio.open(built.classes_path) as src:
        assert src.nodata == NODATA_CLASS and src.colormap(1)[0][:3] == SCHEMA.classes[0].rgb
        assert src.tags()["pearl_model"] == "models:/m/3" and (src.width, src.height) == (built.width, built.height)
        counts = np.bincount(src.read(1).ravel(), minlength=256)
    assert built.areas == {n: round(counts[i] / 10_000, 4) for i, n in enumerate(SCHEMA.names)}
    with rasterio.open(built.confidence_path) as src:
        values = set(np.unique(src.read(1)).tolist())
    assert {100, 101} <= values <= {0, 100, 101}
    assert built.preview_path.stat().st_size > 0
    item = json.loads(built.item_path.read_text())
    assert item["id"] == "landcover-test-region-m-v3" and item["properties"]["pearl:area_ha"] == built.areas
    assert item["assets"]["landcover"]["href"] == str(built.classes_path)
    assert class_counts(built.classes_path).pixels == {n: int(counts[i]) for i, n in enumerate(SCHEMA.names)}


def test_areas_need_a_projected_crs() -> None:
    with pytest.raises(MapError, match="geographic"):
        area_hectares(np.zeros((2, 2), np.uint8), from_origin(0, 0, 1e-5, 1e-5), CRS.from_epsg(4326), ["water"])
