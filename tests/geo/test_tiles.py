"""Imagery tiles: AOI -> tile keys, mosaicking items from the STAC API on their native grid, tile COGs."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds, transform_geom
from shapely.geometry import mapping, shape
from shapely.ops import unary_union

from pearl_pipelines.geo.cog import RGBN_DESCRIPTIONS, validate_cog, write_cog
from pearl_pipelines.geo.grid import aoi_to_tile_keys, tile_geometry
from pearl_pipelines.geo.imagery_index import index_frame, tile_sources
from pearl_pipelines.geo.stac import StacCatalog
from pearl_pipelines.geo.stac_server import StacServer
from pearl_pipelines.geo.tiles import (
    NoImageryError,
    TileImagery,
    cut_tiles,
    read_tile,
    search_tile_sources,
    write_tile_cog,
)
from pearl_pipelines.layout import tile_path
from tests.conftest import SmallCatalog

UTM = "EPSG:26918"


@pytest.fixture(scope="module")
def catalog(stac_server: StacServer) -> StacCatalog:
    return StacCatalog.from_settings(collections=["demo"])


@pytest.fixture(scope="module")
def demo_items(small_catalog: SmallCatalog) -> list[pystac.Item]:
    path = small_catalog.catalog_dir / "demo" / "collection.json"
    return list(pystac.Collection.from_file(str(path)).get_items())


@pytest.fixture(scope="module")
def edge_key(demo_items: list[pystac.Item]) -> str:
    """A tile over at least two items that also sticks out of the region (its mask must show the edge)."""
    footprint = unary_union([shape(item.geometry) for item in demo_items])
    for key in aoi_to_tile_keys(footprint):
        geometry = tile_geometry(key)
        covering = [item for item in demo_items if shape(item.geometry).intersection(geometry).area > 0]
        if len(covering) >= 2 and not geometry.within(footprint):
            return key
    raise AssertionError("no tile of the small demo region straddles an item edge and the region edge")


@pytest.fixture(scope="module")
def edge_tile(catalog: StacCatalog, edge_key: str) -> TileImagery:
    items = catalog.search(intersects=mapping(tile_geometry(edge_key)))
    return read_tile(edge_key, [(item.id, href) for item, href in catalog.image_hrefs(items)])


def test_aoi_in_lonlat_and_utm_give_the_same_keys() -> None:
    lonlat = {
        "type": "Polygon",
        "coordinates": [[[-76.425, 38.951], [-76.392, 38.953], [-76.389, 38.975], [-76.41, 38.982], [-76.425, 38.951]]],
    }
    utm = transform_geom("EPSG:4326", UTM, lonlat)
    assert max(abs(c) for c in np.ravel(utm["coordinates"])) > 1e5, "really in metres"
    keys = aoi_to_tile_keys(lonlat)
    assert len(keys) >= 4
    assert aoi_to_tile_keys(utm, crs=UTM) == keys
    assert aoi_to_tile_keys(shape(utm), crs="epsg:26918") == keys  # shapely input, lower-case CRS


def test_read_tile_mosaics_items_exactly(edge_tile: TileImagery, demo_items: list[pystac.Item]) -> None:
    """The tile equals the items' own pixels placed at whole-pixel offsets: no resampling, no seams."""
    tile = edge_tile
    assert tile.crs.to_epsg() == 26918 and tile.transform.a == 1.0 and tile.transform.e == -1.0
    assert len(tile.sources) >= 2
    height, width = tile.valid.shape
    expected = np.zeros_like(tile.data)
    expected_valid = np.zeros_like(tile.valid)
    left, top = tile.transform.c, tile.transform.f
    for item in demo_items:
        with rasterio.open(item.assets["image"].href) as src:
            col, row = src.transform.c - left, top - src.transform.f
            assert col == round(col) and row == round(row), "items and tile share one pixel grid"
            col, row = round(col), round(row)
            r0, r1 = max(row, 0), min(row + src.height, height)
            c0, c1 = max(col, 0), min(col + src.width, width)
            if r0 >= r1 or c0 >= c1:
                continue
            assert item.id in tile.sources
            window = ((r0 - row, r1 - row), (c0 - col, c1 - col))
            expected[:, r0:r1, c0:c1] = src.read(window=window)
            expected_valid[r0:r1, c0:c1] = src.dataset_mask(window=window) > 0
    np.testing.assert_array_equal(tile.valid, expected_valid)
    np.testing.assert_array_equal(tile.data, expected)
    assert 0 < tile.valid.mean() < 1, "the tile covers part of the region and part of the outside"
    assert not tile.data[:, ~tile.valid].any()


def test_tile_cog_is_valid_rgbn_with_the_region_edge_masked(edge_tile: TileImagery, tmp_path: Path) -> None:
    path = write_tile_cog(edge_tile, tmp_path / f"{edge_tile.key}.tif")
    valid, errors, _ = validate_cog(path)
    assert valid, errors
    with rasterio.open(path) as src:
        assert src.descriptions == RGBN_DESCRIPTIONS
        assert src.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined)
        assert src.crs == edge_tile.crs and src.transform == edge_tile.transform
        np.testing.assert_array_equal(src.dataset_mask() > 0, edge_tile.valid)
        np.testing.assert_array_equal(src.read()[:, edge_tile.valid], edge_tile.data[:, edge_tile.valid])
        assert src.tags()["pearl_tile_key"] == edge_tile.key
        assert set(src.tags()["pearl_sources"].split(",")) == set(edge_tile.sources)


def test_tile_fully_inside_the_region_has_no_mask(
    catalog: StacCatalog, demo_items: list[pystac.Item], tmp_path: Path
) -> None:
    # The small demo region is ~1.2 km wide and z15 tiles ~0.95 km: a tile is never inside. Cut at z17 instead.
    footprint = unary_union([shape(item.geometry) for item in demo_items])
    key = next(k for k in aoi_to_tile_keys(footprint, zoom=17) if tile_geometry(k).within(footprint.buffer(-1e-4)))
    items = catalog.search(intersects=mapping(tile_geometry(key)))
    tile = read_tile(key, [(item.id, href) for item, href in catalog.image_hrefs(items)])
    assert tile.valid.all()
    with rasterio.open(write_tile_cog(tile, tmp_path / "inner.tif")) as src:
        assert (src.dataset_mask() == 255).all()


def test_no_imagery(edge_key: str, small_catalog: SmallCatalog) -> None:
    with pytest.raises(NoImageryError, match=edge_key):
        read_tile(edge_key, [])
    train_item = next(
        pystac.Collection.from_file(str(small_catalog.catalog_dir / "train-a" / "collection.json")).get_items()
    )
    with pytest.raises(NoImageryError, match="no valid pixels"):
        read_tile(edge_key, [(train_item.id, train_item.assets["image"].href)])  # 25 km away


def test_earlier_sources_win_and_other_grids_are_warped(edge_key: str, tmp_path: Path) -> None:
    """Overlapping items: the first (newest) source wins; an item on a coarser grid is warped onto the first's."""
    left, bottom, right, top = transform_bounds("EPSG:4326", UTM, *tile_geometry(edge_key).bounds)
    x0, y0 = float(np.floor(left)) - 10, float(np.ceil(top)) + 10
    size = int(max(right - left, top - bottom)) + 20
    full = np.full((4, size, size), 50, dtype=np.uint8)
    older = write_cog(tmp_path / "older.tif", full, crs=UTM, transform=from_origin(x0, y0, 1.0, 1.0))
    half_mask = np.zeros((size, size), dtype=bool)
    half_mask[:, : size // 2] = True
    newer = write_cog(
        tmp_path / "newer.tif", full + 100, crs=UTM, transform=from_origin(x0, y0, 1.0, 1.0), mask=half_mask
    )
    coarse = write_cog(tmp_path / "coarse.tif", full[:, ::2, ::2] + 10, crs=UTM, transform=from_origin(x0, y0, 2, 2))

    tile = read_tile(edge_key, [("newer", str(newer)), ("older", str(older))])
    assert tile.valid.all() and tile.sources == ["newer", "older"]
    assert set(np.unique(tile.data)) == {50, 150}
    assert (tile.data[:, :, 0] == 150).all() and (tile.data[:, :, -1] == 50).all()

    warped = read_tile(edge_key, [("newer", str(newer)), ("coarse", str(coarse))])
    assert warped.transform.a == 1.0, "the first item's grid is kept"
    assert warped.valid.all() and set(np.unique(warped.data)) <= {60, 150}

    # A warped item covering part of the tile: the part it does not cover stays invalid (not black "valid").
    west_half = write_cog(
        tmp_path / "west.tif", full[:, ::2, : size // 4] + 10, crs=UTM, transform=from_origin(x0, y0, 2, 2)
    )
    strip = write_cog(tmp_path / "strip.tif", full[:, :, :30], crs=UTM, transform=from_origin(x0, y0, 1.0, 1.0))
    partial = read_tile(edge_key, [("strip", str(strip)), ("west", str(west_half))])
    edge = round(x0 + 2 * (size // 4) - partial.transform.c)  # tile column where the west half ends
    assert partial.valid[:, : edge - 1].all() and not partial.valid[:, edge + 1 :].any()
    assert set(np.unique(partial.data[:, partial.valid])) <= {50, 60}


def test_cut_tiles_writes_each_tile_once_and_reports_tiles_without_imagery(
    catalog: StacCatalog, edge_key: str, tmp_path: Path
) -> None:
    far_key = "15-0-0"  # no demo item anywhere near
    keys = [edge_key, far_key]
    cut = dict(cut_tiles(keys, partial(search_tile_sources, catalog), lambda k: tile_path(tmp_path, k)))
    assert list(cut) == keys and cut[far_key] is None
    written = cut[edge_key]
    assert written is not None and written.path == tile_path(tmp_path, edge_key) and written.path.is_file()
    assert 0 < written.valid_fraction < 1 and len(written.sources) >= 2
    with rasterio.open(written.path) as src:
        assert (src.width, src.height) == (written.width, written.height)
    # Without sources and with the COG on disk, a tile is up to date: nothing is cut again.
    assert list(cut_tiles([edge_key], lambda k: [], lambda k: tile_path(tmp_path, k))) == []
    # Nor with the same items; a newer item on top re-cuts it.
    same = partial(search_tile_sources, catalog)
    assert list(cut_tiles([edge_key], same, lambda k: tile_path(tmp_path, k))) == []
    newer = [("newer-item", href) for _, href in same(edge_key)[:1]] + same(edge_key)
    recut = dict(cut_tiles([edge_key], lambda k: newer, lambda k: tile_path(tmp_path, k)))
    assert recut[edge_key] is not None and "newer-item" in recut[edge_key].sources


def test_index_tile_sources_are_the_items_under_the_tile_newest_first(
    catalog: StacCatalog, demo_items: list[pystac.Item], edge_key: str
) -> None:
    index = index_frame(demo_items)
    sources = tile_sources(index, edge_key)
    under = {i.id for i in demo_items if shape(i.geometry).intersects(tile_geometry(edge_key))}
    assert {item_id for item_id, _ in sources} == under
    dates = index.set_index("id").loc[[item_id for item_id, _ in sources], "datetime"].tolist()
    assert dates == sorted(dates, reverse=True)
    assert {s[0] for s in search_tile_sources(catalog, edge_key)} == under
