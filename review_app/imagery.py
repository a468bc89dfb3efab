"""A project's imagery: its STAC items mosaicked once into one RGBN COG that the tile routes and inference read.

One COG per project keeps tile reads as cheap as plain titiler on a single file (one open, one
window read per tile) and gives inference a single raster in the imagery's native CRS and grid.
Items on another grid are warped onto the grid of the newest item; overlaps go to the newest
(the mosaic is `pearl_pipelines.geo.mosaic`'s).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import rasterio
from rasterio.warp import transform_bounds

from pearl_pipelines.geo.catalog import load_collection_items
from pearl_pipelines.geo.cog import write_rgbn_cog
from pearl_pipelines.geo.mosaic import Grid, open_sources, read_mosaic, union_bounds
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


def build_mosaic(
    sources: Sequence[tuple[str, str]],
    dst: Path,
    *,
    clip_lonlat: Sequence[float] | None = None,
    progress: Progress | None = None,
) -> Path:
    """Mosaic RGBN sources (newest first) into one masked COG on the newest source's grid."""
    items = open_sources(sources)
    for item in items:
        if item.count < 4:
            raise ImageryError(f"item {item.id} has {item.count} bands; RGBN imagery (4 bands) is required")
    crs, grid = items[0].crs, items[0].transform
    west, south, east, north = union_bounds(items, crs)
    if clip_lonlat is not None:
        cw, cs, ce, cn = transform_bounds("EPSG:4326", crs, *clip_lonlat, densify_pts=21)
        west, south, east, north = max(west, cw), max(south, cs), min(east, ce), min(north, cn)
        if east <= west or north <= south:
            raise ImageryError("the items found do not overlap the requested bbox")
    mosaic_grid = Grid.covering((west, south, east, north), crs, grid)
    width, height = mosaic_grid.width, mosaic_grid.height
    if width * height > MAX_MOSAIC_PIXELS:
        raise ImageryError(
            f"the imagery covers {width * height / 1e6:.0f} Mpx; the review app mosaics at most "
            f"{MAX_MOSAIC_PIXELS / 1e6:.0f} Mpx: choose a smaller bbox"
        )
    mosaic = read_mosaic(items, mosaic_grid, bands=4, progress=progress)
    if not mosaic.valid.any():
        raise ImageryError("the items hold no valid pixels")
    return write_rgbn_cog(
        dst,
        mosaic.data,
        mosaic.valid,
        crs=crs,
        transform=mosaic_grid.transform,
        tags={"pearl:sources": ",".join(s[0] for s in sources)[:4000]},
    )


def lonlat_bounds(path: Path) -> tuple[float, float, float, float]:
    with rasterio.open(path) as src:
        return tuple(transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21))  # type: ignore[return-value]
