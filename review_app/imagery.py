"""A project's imagery: its STAC items mosaicked once into one RGBN COG that the tile routes and inference read.

One COG per project keeps tile reads as cheap as plain titiler on a single file (one open, one
window read per tile) and gives inference a single raster in the imagery's native CRS and grid.
Items on another grid are warped onto the grid of the newest item; overlaps go to the newest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from pearl_pipelines.geo.catalog import load_collection_items
from pearl_pipelines.geo.cog import RGBN_DESCRIPTIONS, write_cog
from pearl_pipelines.geo.stac import IMAGE_ASSET, StacCatalog
from pearl_pipelines.settings import Settings

MAX_MOSAIC_PIXELS = 64_000_000  # 64 km^2 at 1 m: the live-mapping scale; regional maps belong to Dagster jobs
Progress = Callable[[int, int], None]


class ImageryError(RuntimeError):
    """The project's imagery cannot be found or mosaicked; the message says what to do."""


def imagery_sources(imagery: dict[str, Any], settings: Settings) -> list[tuple[str, str]]:
    """(item id, image href) of the project's items, newest first."""
    if imagery.get("source", "local") == "local":
        collection = str(imagery.get("collection", ""))
        try:
            items = load_collection_items(settings.catalog_dir, collection)
        except KeyError as exc:
            raise ImageryError(
                f"{exc.args[0]}. Generate it with `pearl generate --regions {collection}` (or `make demo`)"
            ) from None
        if not items:
            raise ImageryError(f"local collection {collection!r} has no items")
        items.sort(key=lambda it: it.datetime.isoformat() if it.datetime else "", reverse=True)
        hrefs = []
        for item in items:
            asset = item.assets.get(IMAGE_ASSET)
            if asset is None:
                raise ImageryError(f"item {item.id} has no {IMAGE_ASSET!r} asset")
            hrefs.append((item.id, asset.get_absolute_href() or asset.href))
        return hrefs
    catalog = StacCatalog(
        url=imagery.get("url") or settings.resolved_stac_url,
        collections=imagery.get("collections"),
        sign_planetary_computer=settings.stac_source == "planetary-computer",
    )
    items = catalog.search(bbox=imagery["bbox"], datetime=imagery.get("datetime"))
    if not items:
        raise ImageryError(f"the STAC search at {catalog.url} found no items in {imagery['bbox']}")
    return [(item.id, href) for item, href in catalog.image_hrefs(items)]


def _snap(bounds: Sequence[float], grid: Affine) -> tuple[float, float, float, float, int, int]:
    res_x, res_y = grid.a, -grid.e
    left = grid.c + math.floor((bounds[0] - grid.c) / res_x) * res_x
    right = grid.c + math.ceil((bounds[2] - grid.c) / res_x) * res_x
    top = grid.f - math.floor((grid.f - bounds[3]) / res_y) * res_y
    bottom = grid.f - math.ceil((grid.f - bounds[1]) / res_y) * res_y
    return left, bottom, right, top, round((right - left) / res_x), round((top - bottom) / res_y)


def build_mosaic(
    sources: Sequence[tuple[str, str]],
    dst: Path,
    *,
    clip_lonlat: Sequence[float] | None = None,
    progress: Progress | None = None,
) -> Path:
    """Mosaic RGBN sources (newest first) into one masked COG on the newest source's grid."""
    with rasterio.open(sources[0][1]) as ref:
        crs, grid = ref.crs, ref.transform
    extents = []
    for _, href in sources:
        with rasterio.open(href) as src:
            extents.append(transform_bounds(src.crs, crs, *src.bounds, densify_pts=21))
    west, south = min(e[0] for e in extents), min(e[1] for e in extents)
    east, north = max(e[2] for e in extents), max(e[3] for e in extents)
    if clip_lonlat is not None:
        cw, cs, ce, cn = transform_bounds("EPSG:4326", crs, *clip_lonlat, densify_pts=21)
        west, south, east, north = max(west, cw), max(south, cs), min(east, ce), min(north, cn)
        if east <= west or north <= south:
            raise ImageryError("the items found do not overlap the requested bbox")
    left, _, _, top, width, height = _snap((west, south, east, north), grid)
    if width * height > MAX_MOSAIC_PIXELS:
        raise ImageryError(
            f"the imagery covers {width * height / 1e6:.0f} Mpx; the review app mosaics at most "
            f"{MAX_MOSAIC_PIXELS / 1e6:.0f} Mpx: choose a smaller bbox"
        )
    transform = Affine(grid.a, 0.0, left, 0.0, grid.e, top)
    data = np.zeros((4, height, width), dtype=np.uint8)
    valid = np.zeros((height, width), dtype=bool)
    for n, (item_id, href) in enumerate(sources):
        with rasterio.open(href) as src:
            if src.count < 4:
                raise ImageryError(f"item {item_id} has {src.count} bands; RGBN imagery (4 bands) is required")
            pixels, mask, (r0, r1, c0, c1) = _read_onto(src, crs, transform, height, width)
        take = mask & ~valid[r0:r1, c0:c1]
        data[:, r0:r1, c0:c1][:, take] = pixels[:, take]
        valid[r0:r1, c0:c1] |= take
        if progress:
            progress(n + 1, len(sources))
    if not valid.any():
        raise ImageryError("the items hold no valid pixels")
    return write_cog(
        dst,
        data,
        crs=crs,
        transform=transform,
        descriptions=RGBN_DESCRIPTIONS,
        mask=None if valid.all() else valid,
        overview_resampling="average",
        tags={"pearl:sources": ",".join(s[0] for s in sources)[:4000]},
    )


def _read_onto(
    src: rasterio.DatasetReader, crs: Any, transform: Affine, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """RGBN pixels + validity of `src` on the mosaic grid, and the (row0, row1, col0, col1) they cover.

    No boundless reads: rasterio implements them with an in-memory VRT, and the VRT driver is off here.
    """
    col = (src.transform.c - transform.c) / transform.a
    row = (src.transform.f - transform.f) / transform.e
    same_grid = (
        src.crs == crs
        and src.transform.a == transform.a
        and src.transform.e == transform.e
        and abs(col - round(col)) < 1e-6
        and abs(row - round(row)) < 1e-6
    )
    if same_grid:  # copy pixels, no resampling
        col_off, row_off = round(col), round(row)
        r0, c0 = max(0, row_off), max(0, col_off)
        r1, c1 = min(height, row_off + src.height), min(width, col_off + src.width)
        if r1 <= r0 or c1 <= c0:
            return np.zeros((4, 0, 0), np.uint8), np.zeros((0, 0), bool), (0, 0, 0, 0)
        window = Window(c0 - col_off, r0 - row_off, c1 - c0, r1 - r0)
        return src.read([1, 2, 3, 4], window=window), src.dataset_mask(window=window) > 0, (r0, r1, c0, c1)
    # Another grid: warp onto the mosaic grid; the warp's alpha band says which pixels it filled.
    with WarpedVRT(
        src, crs=crs, transform=transform, width=width, height=height, resampling=Resampling.bilinear, add_alpha=True
    ) as vrt:
        pixels = vrt.read()
    return pixels[:4], pixels[-1] > 0, (0, height, 0, width)


def lonlat_bounds(path: Path) -> tuple[float, float, float, float]:
    with rasterio.open(path) as src:
        return tuple(transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21))  # type: ignore[return-value]
