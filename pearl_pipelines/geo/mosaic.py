"""The one imagery mosaic: GDAL's raster tile index driver (GTI) over the sources, newest on top.

Every mosaic in the project goes through here: an imagery tile cut from STAC items, a review-app
project's imagery, the worker's view across tile edges and a region's map from tile predictions.
GTI is GDAL's own mosaic (the successor of VRT mosaics), so nothing here composites pixels by hand:
- it is lazy: a mosaic of a whole region is read window by window, never loaded whole;
- it composites through each source's mask or nodata, so a masked pixel of a newer item shows the
  older item beneath, and uncovered pixels are masked in the mosaic;
- sources on the mosaic's pixel grid are copied pixel for pixel; others are resampled onto it;
- the index is an ordinary GeoPackage written by geopandas, with the mosaic's grid and z-order as
  layer metadata, so `rasterio.open(index)` (and any GDAL reader) opens it as one raster.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from affine import Affine
from rasterio import windows
from rasterio.coords import BoundingBox
from rasterio.crs import CRS
from rasterio.enums import MaskFlags
from rasterio.transform import array_bounds
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from shapely.geometry import box

GTI_SUFFIX = ".gti.gpkg"  # GDAL recognises a tile index by this suffix: no driver name needed to open it
PRIORITY_FIELD = "priority"  # GTI draws higher values on top
STRIP_ROWS = 1024  # rows read per step when a mosaic is read into memory (progress granularity)
Progress = Callable[[int, int], None]
# GDAL's HTTP reads of remote sources (/vsicurl/, e.g. signed NAIP blobs). The hrefs were checked before
# (pearl_pipelines.geo.stac.checked_href); these keep GDAL itself to the files it was given: no directory listings
# beside a URL, GeoTIFFs only (extension checked without the query string), no ~/.netrc credentials, bounded waits.
# GDAL (libcurl) still follows HTTP redirects wherever they point: it has no option to stop that.
REMOTE_READ_OPTIONS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff",
    "GDAL_HTTP_NETRC": "NO",
    "GDAL_HTTP_CONNECTTIMEOUT": "10",
    "GDAL_HTTP_TIMEOUT": "120",
}


class MosaicError(ValueError):
    """Sources that cannot be mosaicked as asked; the message says which and why."""


@dataclass(frozen=True)
class Grid:
    """A north-up pixel grid: the CRS, origin, pixel size and shape of a mosaic."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @classmethod
    def covering(cls, bounds: Sequence[float], crs: CRS, like: Affine) -> Grid:
        """The smallest grid with `like`'s pixel size and pixel phase that covers `bounds` (in `crs`).

        Snapping to `like` keeps the pixels of a source on that grid where they are: copied, not resampled.
        (Done on coordinates: rasterio.windows rounds offsets to nearest and clips negative ones, not outward.)
        """
        res_x, res_y = like.a, -like.e
        left = like.c + math.floor((bounds[0] - like.c) / res_x) * res_x
        right = like.c + math.ceil((bounds[2] - like.c) / res_x) * res_x
        top = like.f - math.floor((like.f - bounds[3]) / res_y) * res_y
        bottom = like.f - math.ceil((like.f - bounds[1]) / res_y) * res_y
        transform = Affine(like.a, 0.0, left, 0.0, like.e, top)
        return cls(crs, transform, round((right - left) / res_x), round((top - bottom) / res_y))

    @classmethod
    def of_window(cls, grid: Grid, window: Window) -> Grid:
        """The part of `grid` under a (whole-pixel) window of it."""
        return cls(grid.crs, windows.transform(window, grid.transform), int(window.width), int(window.height))

    @property
    def bounds(self) -> BoundingBox:
        return BoundingBox(*array_bounds(self.height, self.width, self.transform))


@dataclass(frozen=True)
class Source:
    """A raster a mosaic draws from, as opened once: where GDAL finds it and what it covers."""

    id: str
    location: str  # the name GDAL opens it by (/vsicurl/... for a URL), absolute
    crs: CRS
    transform: Affine
    bounds: BoundingBox
    count: int
    opaque: bool  # no mask and no nodata: every pixel is valid

    def bounds_in(self, crs: CRS) -> tuple[float, float, float, float]:
        if self.crs == crs:
            return tuple(self.bounds)  # type: ignore[return-value]
        return transform_bounds(self.crs, crs, *self.bounds, densify_pts=21)  # type: ignore[no-any-return]


def open_sources(sources: Sequence[tuple[str, str | Path]]) -> list[Source]:
    """Describe (id, href) sources, in the order given (newest first), opening each once."""
    described = []
    for source_id, href in sources:
        with rasterio.Env(**REMOTE_READ_OPTIONS), rasterio.open(href) as src:
            location = src.files[0] if src.files else src.name
            if not location.startswith("/vsi") and "://" not in location:
                location = str(Path(location).resolve())  # GTI would resolve a relative name against the index
            opaque = all(MaskFlags.all_valid in flags for flags in src.mask_flag_enums)
            described.append(Source(source_id, location, src.crs, src.transform, src.bounds, src.count, opaque))
    return described


def union_bounds(sources: Sequence[Source], crs: CRS) -> tuple[float, float, float, float]:
    """Bounds (in `crs`) of everything the sources cover."""
    extents = [s.bounds_in(crs) for s in sources]
    return (
        min(e[0] for e in extents),
        min(e[1] for e in extents),
        max(e[2] for e in extents),
        max(e[3] for e in extents),
    )


def sources_under(sources: Sequence[Source], grid: Grid) -> list[Source]:
    """The sources (newest first) that overlap the grid, down to the first that covers all of it with every
    pixel valid: the ones below that are hidden and need not be read."""
    area = box(*grid.bounds)
    under = []
    for source in sources:
        footprint = box(*source.bounds_in(grid.crs))
        if footprint.intersection(area).area == 0:  # apart, or touching along an edge only
            continue
        under.append(source)
        if source.opaque and source.crs == grid.crs and footprint.contains(area):
            break
    return under


def write_index(
    sources: Sequence[Source],
    grid: Grid,
    dst: Path,
    *,
    bands: int | None = None,
    resampling: str = "bilinear",
) -> Path:
    """A GTI mosaic of `sources` (the first on top) on `grid`, written to `dst` (a `*.gti.gpkg` path).

    `bands`: expose only the first bands of the sources (e.g. 4 for RGBN items that carry more).
    `resampling`: for sources off the grid; use "nearest" for class rasters.
    """
    dst = Path(dst)
    if not dst.name.endswith(GTI_SUFFIX):
        raise MosaicError(f"a mosaic index must be named *{GTI_SUFFIX} (GDAL recognises it by that), got {dst.name}")
    if not sources:
        raise MosaicError("no sources to mosaic")
    t = grid.transform
    metadata = {
        "SORT_FIELD": PRIORITY_FIELD,
        "GEOTRANSFORM": ",".join(repr(float(v)) for v in (t.c, t.a, t.b, t.f, t.d, t.e)),
        "XSIZE": str(grid.width),
        "YSIZE": str(grid.height),
        "RESAMPLING": resampling.upper(),
        # A mask band even when every source is opaque: pixels no source covers must read as invalid.
        "MASK_BAND": "YES",
    }
    if bands is not None:
        metadata["BAND_COUNT"] = str(bands)
    frame = gpd.GeoDataFrame(
        {
            "location": [s.location for s in sources],
            PRIORITY_FIELD: list(range(len(sources), 0, -1)),
        },
        geometry=[box(*s.bounds_in(grid.crs)) for s in sources],
        crs=grid.crs.to_wkt(),
    )
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    frame.to_file(dst, driver="GPKG", layer="tiles", layer_metadata=metadata)
    return dst


@dataclass
class Mosaic:
    """Pixels of a mosaic read into memory."""

    data: np.ndarray  # (bands, H, W); 0 where no source has a valid pixel
    valid: np.ndarray  # bool (H, W): a source has a valid pixel there
    grid: Grid
    sources: list[str]  # ids of the sources under the grid, newest first (hidden ones left out)


def read_mosaic(
    sources: Sequence[Source],
    grid: Grid,
    *,
    bands: int,
    dtype: str = "uint8",
    resampling: str = "bilinear",
    progress: Progress | None = None,
) -> Mosaic:
    """Read the mosaic of `sources` (newest first) on `grid` into memory, in strips of rows.

    `resampling` applies to sources off the grid only ("nearest" for class rasters).
    """
    under = sources_under(sources, grid)
    data = np.zeros((bands, grid.height, grid.width), dtype=dtype)
    valid = np.zeros((grid.height, grid.width), dtype=bool)
    strips = windows.subdivide(Window(0, 0, grid.width, grid.height), STRIP_ROWS, grid.width)
    if under:
        with tempfile.TemporaryDirectory(prefix="pearl-mosaic-") as tmp:
            index = write_index(under, grid, Path(tmp) / f"mosaic{GTI_SUFFIX}", bands=bands, resampling=resampling)
            with rasterio.Env(**REMOTE_READ_OPTIONS), rasterio.open(index) as mosaic:
                for done, window in enumerate(strips, start=1):
                    rows, cols = window.toslices()
                    data[:, rows, cols] = mosaic.read(window=window)
                    valid[rows, cols] = mosaic.dataset_mask(window=window) > 0
                    if progress:
                        progress(done, len(strips))
    elif progress:
        progress(len(strips), len(strips))
    return Mosaic(data, valid, grid, [s.id for s in under])


def one_grid_mosaic(paths: Sequence[Path], dst: Path, *, resampling: str = "bilinear") -> Path:
    """A lazy mosaic (GTI index at `dst`) of rasters that share one CRS and pixel size, e.g. the imagery
    tiles of an area, on the first one's grid. Where they overlap (tiles share an edge pixel), the later
    path is drawn on top, as in a GDAL VRT mosaic.

    Lets inference see across tile edges, so tiles predicted one by one show no seams.
    """
    if not paths:
        raise MosaicError("no tiles to mosaic")
    sources = open_sources([(str(p), p) for p in paths])
    first = sources[0]
    others = [
        s.id
        for s in sources
        if s.crs != first.crs or (s.transform.a, s.transform.e) != (first.transform.a, first.transform.e)
    ]
    if others:
        raise MosaicError(f"tiles {', '.join(others[:3])} are not on the grid of {first.id}; mosaic per CRS")
    grid = Grid.covering(union_bounds(sources, first.crs), first.crs, first.transform)
    return write_index(sources[::-1], grid, dst, resampling=resampling)
