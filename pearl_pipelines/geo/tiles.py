"""Imagery tiles: the RGBN pixels under a tile key, mosaicked across STAC items, written as a COG.

The output stays in the imagery's native CRS and pixel grid (that of the newest covering item), so
pixels are copied, not resampled, wherever items share that grid (NAIP quarter-quads, our regions).
Items on another grid are warped onto it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from pearl_pipelines.geo.cog import RGBN_DESCRIPTIONS, write_cog
from pearl_pipelines.geo.grid import tile_bounds
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
    sources: list[str]  # item ids that contributed pixels


def _snap_bounds(bounds: Sequence[float], grid: Affine) -> tuple[float, float, float, float, int, int]:
    """Expand bounds outward to whole pixels of `grid`; return snapped bounds and the pixel size."""
    res_x, res_y = grid.a, -grid.e
    left = grid.c + math.floor((bounds[0] - grid.c) / res_x) * res_x
    right = grid.c + math.ceil((bounds[2] - grid.c) / res_x) * res_x
    top = grid.f - math.floor((grid.f - bounds[3]) / res_y) * res_y
    bottom = grid.f - math.ceil((grid.f - bounds[1]) / res_y) * res_y
    return left, bottom, right, top, round((right - left) / res_x), round((top - bottom) / res_y)


def _on_grid(src: DatasetReader, crs: CRS, grid: Affine) -> bool:
    """Same CRS, pixel size and pixel phase: the source's pixels can be copied without resampling."""
    if src.crs != crs or src.transform.a != grid.a or src.transform.e != grid.e:
        return False
    col, row = (src.transform.c - grid.c) / grid.a, (src.transform.f - grid.f) / grid.e
    return abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6


def _read_on_grid(
    src: DatasetReader, crs: CRS, transform: Affine, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """RGBN pixels and validity of `src` on the tile grid: a windowed copy when aligned, else a bilinear warp."""
    if _on_grid(src, crs, transform):
        window = Window(
            round((transform.c - src.transform.c) / transform.a),
            round((transform.f - src.transform.f) / transform.e),
            width,
            height,
        )
        pixels = src.read([1, 2, 3, 4], window=window, boundless=True, fill_value=0)
        return pixels, src.dataset_mask(window=window, boundless=True) > 0
    # WarpedVRT refuses boundless reads and its dataset_mask ignores the warp's alpha band (rasterio 1.4):
    # warp straight onto the tile grid and read validity from an explicit alpha band.
    with WarpedVRT(
        src, crs=crs, transform=transform, width=width, height=height, resampling=Resampling.bilinear, add_alpha=True
    ) as vrt:
        return vrt.read([1, 2, 3, 4]), vrt.read(vrt.count) > 0


def read_tile(key: str, sources: Sequence[tuple[str, str]]) -> TileImagery:
    """Mosaic the tile from (item_id, href) sources, newest first: earlier sources win where they overlap."""
    if not sources:
        raise NoImageryError(f"no imagery covers tile {key}")
    lonlat_bounds = tile_bounds(key)
    with rasterio.open(sources[0][1]) as ref:
        crs, grid = ref.crs, ref.transform
    left, _, _, top, width, height = _snap_bounds(
        transform_bounds("EPSG:4326", crs, *lonlat_bounds, densify_pts=21), grid
    )
    transform = Affine(grid.a, 0.0, left, 0.0, grid.e, top)
    data = np.zeros((4, height, width), dtype=np.uint8)
    valid = np.zeros((height, width), dtype=bool)
    used: list[str] = []
    for item_id, href in sources:
        with rasterio.open(href) as src:
            if src.count < 4:
                raise ValueError(f"item {item_id} has {src.count} bands; RGBN imagery (4 bands) is required")
            pixels, mask = _read_on_grid(src, crs, transform, width, height)
        take = mask & ~valid
        if take.any():
            data[:, take] = pixels[:, take]
            valid |= take
            used.append(item_id)
        if valid.all():
            break
    if not used:
        raise NoImageryError(f"the items found for tile {key} hold no valid pixels inside it")
    return TileImagery(key=key, data=data, valid=valid, crs=crs, transform=transform, sources=used)


def write_tile_cog(tile: TileImagery, path: Path) -> Path:
    """Write tile imagery as an RGBN COG (band 4 is NIR, not alpha); uncovered pixels are masked."""
    return write_cog(
        path,
        tile.data,
        crs=tile.crs,
        transform=tile.transform,
        descriptions=RGBN_DESCRIPTIONS,
        mask=None if tile.valid.all() else tile.valid,
        overview_resampling="average",
        tags={"pearl_tile_key": tile.key, "pearl_sources": ",".join(tile.sources)},
    )


def fetch_tile(catalog: StacCatalog, key: str, tiles_dir: Path, *, datetime: str | None = None) -> Path:
    """Search the STAC API for the items under a tile, mosaic them and write the tile COG."""
    items = catalog.search(bbox=tile_bounds(key), datetime=datetime)
    tile = read_tile(key, [(item.id, href) for item, href in catalog.image_hrefs(items)])
    return write_tile_cog(tile, tile_path(tiles_dir, key))
