"""Imagery tiles: the RGBN pixels under a tile key, mosaicked across STAC items, written as a COG.

The output stays in the imagery's native CRS and pixel grid (that of the newest covering item), so
pixels are copied, not resampled, wherever items share that grid (NAIP quarter-quads, our regions).
Items on another grid are warped onto it (bilinear). The mosaic itself is `mosaic.py`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform_bounds

from pearl_pipelines.geo.cog import gdal_tag_key, write_rgbn_cog
from pearl_pipelines.geo.grid import tile_bounds
from pearl_pipelines.geo.mosaic import Grid, open_sources, read_mosaic
from pearl_pipelines.geo.stac import StacCatalog
from pearl_pipelines.layout import tile_path

FETCH_THREADS = 4  # GDAL releases the GIL while reading and compressing
Sources = Sequence[tuple[str, str]]  # (item id, href), newest first
SOURCES_TAG = gdal_tag_key("pearl:sources")  # the item ids a tile COG was cut from


class NoImageryError(LookupError):
    """No STAC item covers the requested tile."""


@dataclass
class TileImagery:
    key: str
    data: np.ndarray  # uint8 (4, H, W), RGBN
    valid: np.ndarray  # bool (H, W): covered by at least one item
    crs: CRS
    transform: Affine
    sources: list[str]  # ids of the items under the tile, newest first (items hidden under a newer one left out)


def read_tile(key: str, sources: Sequence[tuple[str, str]]) -> TileImagery:
    """Mosaic the tile from (item_id, href) sources, newest first: earlier sources win where they overlap."""
    if not sources:
        raise NoImageryError(f"no imagery covers tile {key}")
    items = open_sources(sources)
    for item in items:
        if item.count < 4:
            raise ValueError(f"item {item.id} has {item.count} bands; RGBN imagery (4 bands) is required")
    newest = items[0]
    bounds = transform_bounds("EPSG:4326", newest.crs, *tile_bounds(key), densify_pts=21)
    mosaic = read_mosaic(items, Grid.covering(bounds, newest.crs, newest.transform), bands=4)
    if not mosaic.valid.any():
        raise NoImageryError(f"the items found for tile {key} hold no valid pixels inside it")
    return TileImagery(
        key=key,
        data=mosaic.data,
        valid=mosaic.valid,
        crs=mosaic.grid.crs,
        transform=mosaic.grid.transform,
        sources=mosaic.sources,
    )


def write_tile_cog(tile: TileImagery, path: Path) -> Path:
    """Write tile imagery as an RGBN COG (band 4 is NIR, not alpha); uncovered pixels are masked."""
    return write_rgbn_cog(
        path,
        tile.data,
        tile.valid,
        crs=tile.crs,
        transform=tile.transform,
        tags={gdal_tag_key("pearl:tile_key"): tile.key, SOURCES_TAG: ",".join(tile.sources)},
    )


def search_tile_sources(catalog: StacCatalog, key: str, *, datetime: str | None = None) -> list[tuple[str, str]]:
    """(item id, image href) of the items the STAC API finds under a tile, in the catalog's order (newest first)."""
    items = catalog.search(bbox=tile_bounds(key), datetime=datetime)
    return [(item.id, href) for item, href in catalog.image_hrefs(items)]


def fetch_tile(catalog: StacCatalog, key: str, tiles_dir: Path, *, datetime: str | None = None) -> Path:
    """Search the STAC API for the items under a tile, mosaic them and write the tile COG."""
    tile = read_tile(key, search_tile_sources(catalog, key, datetime=datetime))
    return write_tile_cog(tile, tile_path(tiles_dir, key))


def tile_needs_fetch(path: Path, sources: Sources) -> bool:
    """Missing, or the newest covering item is not among the items the tile was cut from (new imagery)."""
    if not path.is_file():
        return True
    with rasterio.open(path) as src:
        used = set((src.tags().get(SOURCES_TAG) or "").split(","))
    return bool(sources) and sources[0][0] not in used


@dataclass(frozen=True)
class CutTile:
    """A tile COG just written, and what it was cut from."""

    key: str
    path: Path
    sources: list[str]
    valid_fraction: float
    width: int
    height: int
    seconds: float


def cut_tiles(
    keys: Sequence[str],
    sources_for: Callable[[str], Sources],
    path_for: Callable[[str], Path],
    *,
    force: bool = False,
) -> Iterator[tuple[str, CutTile | None]]:
    """Cut the tiles that need it (in threads), in key order: (key, CutTile) per tile written, (key, None) per
    tile no imagery covers (an AOI may reach past the imagery); tiles that are up to date are skipped."""

    def one(key: str) -> tuple[str, bool, CutTile | None]:
        """(key, whether the tile needed cutting, the tile written or None without imagery)."""
        sources, path = sources_for(key), path_for(key)
        if not force and not tile_needs_fetch(path, sources):
            return key, False, None
        started = time.perf_counter()
        try:
            tile = read_tile(key, sources)
        except NoImageryError:
            return key, True, None
        write_tile_cog(tile, path)
        height, width = tile.valid.shape
        seconds = time.perf_counter() - started
        return key, True, CutTile(key, path, tile.sources, float(tile.valid.mean()), width, height, seconds)

    with ThreadPoolExecutor(FETCH_THREADS) as pool:
        for key, needed, cut in pool.map(one, keys):
            if needed:
                yield key, cut
