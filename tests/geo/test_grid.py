"""Tile keys and AOIs: parsing, validation, and errors a person can act on."""

from __future__ import annotations

import pytest
from shapely.geometry import Point, box, mapping

from pearl_pipelines.geo import grid
from pearl_pipelines.geo.grid import AoiError, aoi_to_lonlat, aoi_to_tile_keys, parse_tile_key, tile_geometry, tile_key

# A small square near Annapolis, MD (the demo region), away from z15 tile edges.
SQUARE = mapping(box(-76.418, 38.955, -76.402, 38.967))


def test_tile_key_round_trip() -> None:
    tile = parse_tile_key("15-9429-12527")
    assert (tile.z, tile.x, tile.y) == (15, 9429, 12527)
    assert tile_key(tile) == "15-9429-12527"
    assert tile_geometry("15-9429-12527").contains(Point(-76.405, 38.962))  # in the demo region
    assert "15-9429-12527" in aoi_to_tile_keys(SQUARE)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("15/9429/12528", "not of the form z-x-y"),
        ("abc", "not of the form z-x-y"),
        ("15-9429", "not of the form z-x-y"),
        ("15--1-3", "not of the form z-x-y"),
        ("15-40000-1", "outside zoom 15"),
        ("2-1-4", "outside zoom 2"),
    ],
)
def test_bad_tile_keys(key: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_tile_key(key)


def test_aoi_keys_cover_the_polygon_not_just_its_bbox() -> None:
    # An L-shaped AOI: the tiles in its bounding box's empty corner must not be listed.
    l_shape = {
        "type": "Polygon",
        "coordinates": [[[-76.50, 38.90], [-76.40, 38.90], [-76.40, 38.91], [-76.49, 38.91], [-76.49, 39.00],
                         [-76.50, 39.00], [-76.50, 38.90]]],
    }  # fmt: skip
    keys = aoi_to_tile_keys(l_shape, zoom=15)
    bbox_keys = aoi_to_tile_keys(mapping(box(-76.50, 38.90, -76.40, 39.00)), zoom=15)
    assert keys and set(keys) < set(bbox_keys)
    assert keys == sorted(keys)


def test_multipolygon_aoi() -> None:
    multi = {
        "type": "MultiPolygon",
        "coordinates": [SQUARE["coordinates"], mapping(box(-76.70, 38.98, -76.69, 38.99))["coordinates"]],
    }
    assert set(aoi_to_tile_keys(SQUARE)) < set(aoi_to_tile_keys(multi))


@pytest.mark.parametrize(
    ("geometry", "message"),
    [
        (  # a bow tie crosses itself
            {
                "type": "Polygon",
                "coordinates": [[[-76.4, 38.9], [-76.3, 39.0], [-76.3, 38.9], [-76.4, 39.0], [-76.4, 38.9]]],
            },
            "does not cross itself",
        ),
        ({"type": "Point", "coordinates": [-76.4, 38.9]}, "Polygon or MultiPolygon, got Point"),
        ({"type": "LineString", "coordinates": [[-76.4, 38.9], [-76.3, 39.0]]}, "got LineString"),
        ({"type": "Polygon", "coordinates": []}, "empty"),
        ({"type": "Feature", "properties": {}}, "not a GeoJSON geometry"),
        ({"coordinates": [[0, 0]]}, "not a GeoJSON geometry"),
        (  # UTM metres given without their CRS
            mapping(box(376000, 4312000, 380000, 4316000)),
            "pass the CRS",
        ),
        (mapping(box(-200, 10, -190, 11)), "not lon/lat degrees"),
        (mapping(box(10, 86, 11, 87)), "not lon/lat degrees"),  # beyond Web Mercator's latitude limit
    ],
)
def test_invalid_aois(geometry: dict[str, object], message: str) -> None:
    with pytest.raises(AoiError, match=message):
        aoi_to_tile_keys(geometry)


def test_projected_aoi_with_its_crs_is_accepted() -> None:
    geom = aoi_to_lonlat(mapping(box(376000, 4312000, 380000, 4316000)), crs="EPSG:26918")
    minx, miny, maxx, maxy = geom.bounds
    assert -76.44 < minx < maxx < -76.38 and 38.94 < miny < maxy < 38.99


def test_aoi_that_is_too_large_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grid, "MAX_TILES_PER_AOI", 4)  # the real limit (20000 tiles) takes seconds to reach
    with pytest.raises(AoiError, match="split it or zoom out"):
        aoi_to_tile_keys(mapping(box(-76.5, 38.9, -76.4, 39.0)), zoom=15)
