"""An AOI's map covers its polygon, not the polygon's bounding box: every pixel whose centre lies outside the AOI is
nodata in the class COG (255) and in the confidence COG (0).

The engine already writes them so (ml/inference.py masks each block with the AOI; re-predictions keep the
embedding cache's `valid` mask), so this check costs one read and one rasterize per file and rewrites nothing.
It is the one guarantee at the place the review app publishes every AOI map (review_app/tasks.py
`_finish_map`), whatever wrote the files: a remote worker, an older cache, a block cut from a larger window.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.features import geometry_mask
from rasterio.io import MemoryFile
from rasterio.warp import transform_geom

from pearl_pipelines.classes import NODATA_CLASS
from pearl_pipelines.geo.cog import cog_from_dataset
from pearl_pipelines.layout import CLASSES_FILE, CONFIDENCE_FILE

# As ml.outputs.CONFIDENCE_NODATA (not imported: that module pulls in torch).
CONFIDENCE_NODATA = 0
MAP_FILES = ((CLASSES_FILE, NODATA_CLASS), (CONFIDENCE_FILE, CONFIDENCE_NODATA))


def outside_mask(geometry: Mapping[str, Any], geometry_crs: Any, dataset: Any) -> np.ndarray:
    """(H, W) bool, True where the pixel's centre is outside `geometry` (GeoJSON in `geometry_crs`), in the
    raster's CRS and grid (the same pixel-centre rule as the engine's mask)."""
    footprint = transform_geom(geometry_crs, dataset.crs, dict(geometry))
    return geometry_mask([footprint], out_shape=(dataset.height, dataset.width), transform=dataset.transform)


def _rewrite(path: Path, band: np.ndarray) -> None:
    """Replace band 1 of the COG at `path`, keeping its profile, colour table, tags and descriptions."""
    with rasterio.open(path) as src, MemoryFile() as memfile:
        rasterio.shutil.copy(src, memfile.name, driver="GTiff", TILED="YES")
        with rasterio.open(memfile.name, "r+") as mem:
            mem.write(band, 1)
        with rasterio.open(memfile.name) as filled:
            cog_from_dataset(filled, path, deflate_level=1)


def mask_outside(geometry: Mapping[str, Any], prediction_dir: Path, *, geometry_crs: Any = "EPSG:4326") -> int:
    """Set to nodata the pixels of the class and confidence COGs in `prediction_dir` whose centre lies outside the
    AOI `geometry` (a GeoJSON Polygon/MultiPolygon in `geometry_crs`); returns how many class pixels were blanked
    (0 when the engine had masked them already: then nothing is rewritten)."""
    blanked = 0
    outside: np.ndarray | None = None
    grid: tuple[Any, ...] | None = None
    for name, nodata in MAP_FILES:
        path = Path(prediction_dir) / name
        if not path.is_file():
            continue
        with rasterio.open(path) as src:
            band = src.read(1)
            if outside is None or grid != (src.crs, src.transform, src.shape):  # both files share one grid
                outside, grid = outside_mask(geometry, geometry_crs, src), (src.crs, src.transform, src.shape)
            stray = outside & (band != nodata)
        if not stray.any():
            continue
        if name == CLASSES_FILE:
            blanked = int(stray.sum())
        band[stray] = nodata
        _rewrite(path, band)
    return blanked
