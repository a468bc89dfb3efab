"""Synthetic regions: building a region file's synthetic grid into the local catalog, and clicking on their
reference labels.

Each synthetic region becomes one STAC collection of 1 km items: an RGBN image COG plus reference-label COGs,
which are reference data only and never read at inference. `reference_points` is what a careful mapper clicks,
for tests and benchmarks of the labelling loop.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pystac
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform
from shapely.geometry import Point
from shapely.geometry.base import BaseGeometry
from tqdm import tqdm

from pearl_pipelines.classes import NODATA_CLASS, load_schema
from pearl_pipelines.geo.catalog import AssetFile, item_from_raster, load_collection_items, save_collection
from pearl_pipelines.geo.cog import RGBN_DESCRIPTIONS, write_cog
from pearl_pipelines.geo.regions import Region, RegionFileError, label_asset_key
from pearl_pipelines.synthetic.scene import SHIFTED, generate_scene


def build_region(
    region: Region,
    catalog_dir: Path,
    *,
    scale: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
    show_progress: bool = False,
) -> pystac.Collection:
    """Generate a synthetic region and write it as a STAC collection of COG items.

    `scale` < 1 shrinks the region (tests use small regions with the same layout and seed).
    """
    grid = region.properties.synthetic
    if grid is None:
        raise RegionFileError(f"region {region.name!r} is not synthetic; bring its imagery with `pearl ingest`")
    width, height = int(grid.width_m * scale), int(grid.height_m * scale)
    item_size = max(1, min(int(grid.item_size_m * scale), width, height))
    scene = generate_scene(height, width, seed=grid.seed, shift=SHIFTED if grid.shift == "shifted" else None)
    schema9 = load_schema("chesapeake9")
    labels = {"chesapeake9": scene.labels, "chesapeake4": load_schema("chesapeake4").remap_from(schema9)[scene.labels]}
    crs = CRS.from_epsg(grid.epsg)
    collection_dir = Path(catalog_dir).resolve() / region.name
    windows = [(r, c) for r in range(0, height, item_size) for c in range(0, width, item_size)]
    items = []
    for n, (row, col) in enumerate(tqdm(windows, desc=f"region {region.name}", unit="item", disable=not show_progress)):
        x0 = grid.origin[0] + col
        y0 = grid.origin[1] - row
        item_id = f"{region.name}_{int(x0)}_{int(y0)}"
        transform = from_origin(x0, y0, 1.0, 1.0)
        item_dir = collection_dir / item_id
        window = np.s_[row : row + item_size, col : col + item_size]
        image_path = write_cog(
            item_dir / "image.tif",
            np.ascontiguousarray(scene.image[(slice(None), *window)]),
            crs=crs,
            transform=transform,
            descriptions=RGBN_DESCRIPTIONS,
            overview_resampling="average",
        )
        extra = {}
        for schema_id, raster in labels.items():
            schema = load_schema(schema_id)
            path = write_cog(
                item_dir / f"{label_asset_key(schema_id)}.tif",
                np.ascontiguousarray(raster[window]),
                crs=crs,
                transform=transform,
                nodata=NODATA_CLASS,
                colormap=schema.colormap(),
                descriptions=[f"{schema_id} class"],
                tags={"class_schema": schema_id},
                overview_resampling="mode",
            )
            extra[label_asset_key(schema_id)] = AssetFile(
                path, ("labels", "reference"), f"Reference labels ({schema.title})"
            )
        items.append(
            item_from_raster(
                item_id,
                image_path,
                datetime=region.properties.datetime,
                extra_assets=extra,
                properties={"pearl:region": region.name, "pearl:role": region.properties.role, "gsd": 1.0},
            )
        )
        if progress:
            progress(n + 1, len(windows))
    return save_collection(
        catalog_dir,
        region.name,
        f"Synthetic NAIP-like imagery, region {region.name} ({region.properties.role}); seed {grid.seed}",
        items,
        title=region.properties.title,
    )


def reference_points(
    catalog_dir: Path, collection: str, aoi: BaseGeometry, n: int, *, seed: int = 0, schema_id: str = "chesapeake9"
) -> list[tuple[str, Point]]:
    """n random points inside `aoi` (lon/lat), each with the class of the collection's reference labels
    under it: what a careful mapper clicks. For tests and benchmarks of the labelling loop."""
    names = load_schema(schema_id).names
    items = load_collection_items(catalog_dir, collection)
    rng = np.random.default_rng(seed)
    minx, miny, maxx, maxy = aoi.bounds
    points: list[tuple[str, Point]] = []
    while len(points) < n:
        point = Point(float(rng.uniform(minx, maxx)), float(rng.uniform(miny, maxy)))
        if not aoi.contains(point):
            continue
        for item in items:
            with rasterio.open(item.assets[label_asset_key(schema_id)].href) as src:
                (x,), (y,) = warp_transform("EPSG:4326", src.crs, [point.x], [point.y])
                left, bottom, right, top = src.bounds
                if left <= x < right and bottom <= y < top:
                    value = int(next(src.sample([(x, y)]))[0])
                    if value < len(names):
                        points.append((names[value], point))
                    break
    return points
