"""Change between two class maps: which pixels changed class (from -> to), their areas, and a change raster.

The two maps may come from different imagery (another date, another grid, another CRS): B is resampled (nearest,
class values are labels, never averaged) onto A's pixel grid over the overlap of the two. A pixel that is nodata in
either map (outside an AOI polygon, beyond the imagery) is "no data", never a change. Class i is the same class in
both maps (a project's schema only grows: pearl_pipelines.ml.loop).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.features import geometry_mask
from rasterio.warp import reproject, transform_bounds, transform_geom
from rasterio.windows import Window, from_bounds

from pearl_pipelines.classes import NODATA_CLASS
from pearl_pipelines.geo.cog import write_cog
from pearl_pipelines.geo.maps import MapError

N_VALUES = 256  # uint8 class maps: every value, nodata included, indexes the pair counts


class NoOverlap(MapError):
    """The two maps share no pixel (the message gives both extents)."""


@dataclass(frozen=True)
class ChangeRow:
    """Pixels that were class `source` in A and are class `target` in B."""

    source: int
    target: int
    pixels: int
    hectares: float


@dataclass(frozen=True)
class MapChange:
    """Pair counts over the overlap (pixels valid in both maps) and the change raster on A's grid."""

    pairs: np.ndarray  # (256, 256) int64: pairs[a, b] = pixels of class a in A and class b in B
    change: np.ndarray  # (h, w) uint8: B's class where it differs from A's, NODATA_CLASS elsewhere
    crs: CRS
    transform: Affine
    pixel_m2: float

    def hectares(self, pixels: int) -> float:
        return pixels * self.pixel_m2 / 10_000

    @property
    def unchanged_pixels(self) -> int:
        return int(np.trace(self.pairs))

    @property
    def compared_pixels(self) -> int:
        return int(self.pairs.sum())

    def rows(self) -> list[ChangeRow]:
        """The changed (from, to) pairs, largest area first (ties by class indices)."""
        changed = self.pairs.copy()
        np.fill_diagonal(changed, 0)
        sources, targets = np.nonzero(changed)
        rows = [
            ChangeRow(int(s), int(t), int(changed[s, t]), self.hectares(int(changed[s, t])))
            for s, t in zip(sources, targets, strict=True)
        ]
        return sorted(rows, key=lambda r: (-r.pixels, r.source, r.target))


def _overlap_window(a: Any, b: Any) -> Window:
    """A's pixels (a window of A, whole pixels) inside B's extent."""
    west, south, east, north = transform_bounds(b.crs, a.crs, *b.bounds, densify_pts=21)
    aw, as_, ae, an = a.bounds
    left, bottom, right, top = max(west, aw), max(south, as_), min(east, ae), min(north, an)
    if left >= right or bottom >= top:
        raise NoOverlap(
            f"the two maps do not overlap: A covers {tuple(round(v, 1) for v in a.bounds)} and B covers "
            f"{tuple(round(v, 1) for v in (west, south, east, north))} (in {a.crs}); pick maps of the same place"
        )
    window = from_bounds(left, bottom, right, top, transform=a.transform)
    window = window.round_offsets(op="floor").round_lengths(op="ceil")
    window = window.intersection(Window(0, 0, a.width, a.height))
    if window.width < 1 or window.height < 1:
        raise NoOverlap("the two maps overlap by less than one pixel; pick maps of the same place")
    return window


def compare_maps(
    a_path: Path,
    b_path: Path,
    *,
    within: Sequence[Mapping[str, Any]] = (),
    within_crs: str = "EPSG:4326",
    b_classes: np.ndarray | None = None,
) -> MapChange:
    """The change from map A to map B over their overlap, on A's grid.

    `within`: geometries (GeoJSON, in `within_crs`) the comparison is limited to, all of them (e.g. the two AOIs'
    polygons: only their intersection is compared). `b_classes`: a (256,) lookup table from B's class values to A's
    (maps of two projects whose schemas order the classes differently). NoOverlap when nothing is left to compare."""
    with rasterio.open(a_path) as a, rasterio.open(b_path) as b:
        if a.crs is None or b.crs is None:
            raise MapError("a class map without a CRS cannot be compared")
        if a.crs.is_geographic:
            raise MapError(f"map A's CRS {a.crs} is geographic; areas need a projected CRS (e.g. UTM)")
        window = _overlap_window(a, b)
        transform = a.window_transform(window)
        height, width = int(window.height), int(window.width)
        a_data = a.read(1, window=window)
        a_nodata = a.nodata if a.nodata is not None else NODATA_CLASS
        b_data = np.full((height, width), NODATA_CLASS, dtype=np.uint8)
        reproject(
            source=rasterio.band(b, 1),
            destination=b_data,
            src_nodata=b.nodata if b.nodata is not None else NODATA_CLASS,
            dst_transform=transform,
            dst_crs=a.crs,
            dst_nodata=NODATA_CLASS,
            resampling=Resampling.nearest,
        )
        crs = a.crs
    if b_classes is not None:
        b_data = np.where(b_data == NODATA_CLASS, NODATA_CLASS, b_classes[b_data]).astype(np.uint8)
    valid = (a_data != a_nodata) & (a_data != NODATA_CLASS) & (b_data != NODATA_CLASS)
    for geometry in within:
        footprint = transform_geom(within_crs, crs, geometry)
        valid &= ~geometry_mask([footprint], out_shape=(height, width), transform=transform)
    if not valid.any():
        raise NoOverlap("the two maps share no mapped pixel (their overlap is nodata in one of them)")
    pair_index = a_data[valid].astype(np.int64) * N_VALUES + b_data[valid]
    pairs = np.bincount(pair_index, minlength=N_VALUES * N_VALUES).reshape(N_VALUES, N_VALUES)
    change = np.where(valid & (a_data != b_data), b_data, NODATA_CLASS).astype(np.uint8)
    return MapChange(pairs=pairs, change=change, crs=crs, transform=transform, pixel_m2=abs(transform.a * transform.e))


def write_change_cog(
    path: Path, change: MapChange, colormap: Mapping[int, tuple[int, int, int, int]], tags: Mapping[str, str]
) -> Path:
    """The change raster as a COG: B's class where it changed (coloured by the new class), nodata elsewhere."""
    return write_cog(
        path,
        change.change,
        crs=change.crs,
        transform=change.transform,
        nodata=NODATA_CLASS,
        colormap={**dict(colormap), NODATA_CLASS: (0, 0, 0, 0)},
        tags=dict(tags),
    )
