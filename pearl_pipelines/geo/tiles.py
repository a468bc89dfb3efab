"""Imagery tiles: the RGBN pixels under a tile key, mosaicked across STAC items, written as a COG.

The output stays in the imagery's native CRS and pixel grid (that of the newest covering item), so
pixels are copied, not resampled, wherever items share that grid (NAIP quarter-quads, our regions).
Items on another grid are warped onto it (bilinear). The mosaic itself is `mosaic.py`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform_bounds

from pearl_pipelines.geo.cog import write_rgbn_cog
from pearl_pipelines.geo.grid import tile_bounds
from pearl_pipelines.geo.mosaic import Grid, open_sources, read_mosaic
from pearl_pipelines.geo.stac import StacCatalog
from pearl_pipelines.geo.tile_paths import tile_path


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
        tags={"pearl_tile_key": tile.key, "pearl_sources": ",".join(tile.sources)},
    )


def search_tile_sources(catalog: StacCatalog, key: str, *, datetime: str | None = None) -> list[tuple[str, str]]:
    """(item id, image href) of the items the STAC API finds under a tile, in the catalog's order (newest first)."""
    items = catalog.search(bbox=tile_bounds(key), datetime=datetime)
    return [(item.id, href) for item, href in catalog.image_hrefs(items)]


def fetch_tile(catalog: StacCatalog, key: str, tiles_dir: Path, *, datetime: str | None = None) -> Path:
    """Search the STAC API for the items under a tile, mosaic them and write the tile COG."""
    tile = read_tile(key, search_tile_sources(catalog, key, datetime=datetime))
    return write_tile_cog(tile, tile_path(tiles_dir, key))
