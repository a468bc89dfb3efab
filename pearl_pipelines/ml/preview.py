"""The first block of a new AOI: the grid window nearest the mapper's view, predicted before the rest of the AOI.

A new AOI should show something within seconds, not after its whole forward pass. The first block is the part of
the AOI that one window of the global grid (`tiling.py`) covers on its own: the window's *core*, where its blend
weight is one and no neighbour's is above zero ([j*S + margin + fade, (j+1)*S + margin) on each axis, about
window - 2*margin pixels square). So it costs exactly one window (a cropped one for a finite-receptive-field
backbone), and since the windows sit on the same global grid as the full pass's, its pixels are those of the full
pass: one window's output times a weight of one, added to zeros.

The window is the one whose core is nearest to the view's centre when that centre is inside the AOI, else the AOI's
centre. When the AOI is smaller than two cores, or the block holds half of it or more, there is no first block
(`None`): the whole AOI takes about as long as the block, and predicting the block first would only repeat work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import rasterio
import torch
from rasterio.warp import transform as transform_xy
from shapely.geometry import Point, Polygon
from shapely.geometry.base import BaseGeometry

from pearl_pipelines.ml.inference import AOI_MAX_WINDOW, Progress, aoi_region, aoi_windows, predict
from pearl_pipelines.ml.models import LandcoverModel
from pearl_pipelines.ml.outputs import PredictionResult
from pearl_pipelines.ml.tiling import Tiling, grid_anchor

MAX_SHARE = 0.5  # no first block when it would hold this share of the AOI's area or more
MIN_CORES = 2.0  # ... or when the whole AOI is smaller than this many window cores
LONLAT = "EPSG:4326"


def core_range(pixel: float, anchor: int, tiling: Tiling) -> tuple[int, int]:
    """Local pixel range [lo, hi) of the window core nearest to local pixel coordinate `pixel` on one axis."""
    s, m, f = tiling.stride, tiling.margin, tiling.fade
    j = round((pixel + anchor - (m + f + (s - f) / 2)) / s)  # the core whose middle is nearest
    return j * s + m + f - anchor, (j + 1) * s + m - anchor


def _centre(geom: BaseGeometry, view: Sequence[float] | None, crs: Any) -> Point:
    """The view's centre in `crs` when it lies in the AOI `geom` (in `crs`), else the AOI's centre."""
    if view is not None:
        west, south, east, north = view
        xs, ys = transform_xy(LONLAT, crs, [(west + east) / 2], [(south + north) / 2])
        point = Point(xs[0], ys[0])
        if geom.contains(point):
            return point
    return inner_centre(geom)


def inner_centre(geom: BaseGeometry) -> Point:
    """A polygon's centre: its centroid, or a point inside it when the centroid is not (a C- or L-shaped AOI)."""
    centroid = geom.centroid
    return centroid if geom.contains(centroid) else geom.representative_point()


def first_block(
    dataset: Any,
    aoi: BaseGeometry | Mapping[str, Any],
    *,
    tiling: Tiling,
    anchor: tuple[int, int] | None = None,
    aoi_crs: Any = None,
    view: Sequence[float] | None = None,
    max_share: float = MAX_SHARE,
    min_cores: float = MIN_CORES,
) -> BaseGeometry | None:
    """The part of `aoi` (in `aoi_crs`, default the raster's) to predict first, in the raster's CRS; None when
    the AOI is smaller than `min_cores` window cores or that part would be `max_share` of it or more (a small
    AOI: predict it whole). `view`: lon/lat (west, south, east, north) of what the mapper sees."""
    _, geom = aoi_region(dataset, aoi, aoi_crs)
    assert geom is not None
    pixel_area = abs(dataset.transform.determinant)
    if geom.area / pixel_area < min_cores * (tiling.stride - tiling.fade) ** 2:
        return None
    point = _centre(geom, view, dataset.crs)
    col, row = ~dataset.transform @ (point.x, point.y)
    anchor_row, anchor_col = grid_anchor(dataset.transform) if anchor is None else anchor
    r0, r1 = core_range(row, anchor_row, tiling)
    c0, c1 = core_range(col, anchor_col, tiling)
    # A quarter pixel inside the core's edges: `aoi_region` rounds the bounds out to exactly the core's pixels (no
    # extra row or column that would take a neighbouring window), and every pixel centre of the core is inside.
    corners = [(c0 + 0.25, r0 + 0.25), (c1 - 0.25, r0 + 0.25), (c1 - 0.25, r1 - 0.25), (c0 + 0.25, r1 - 0.25)]
    block = Polygon([dataset.transform @ corner for corner in corners])
    part = geom.intersection(block)
    if part.geom_type == "GeometryCollection":  # a touching edge or point beside the polygonal part
        polygons = [g for g in part.geoms if g.geom_type in ("Polygon", "MultiPolygon")]
        part = polygons[0] if len(polygons) == 1 else part
    if part.is_empty or part.geom_type not in ("Polygon", "MultiPolygon") or part.area >= max_share * geom.area:
        return None
    return part


def predict_first_block(
    model: LandcoverModel,
    imagery: str | Path,
    aoi: BaseGeometry | Mapping[str, Any],
    out_dir: Path,
    *,
    aoi_crs: Any = None,
    view: Sequence[float] | None = None,
    tiling: Tiling | None = None,
    max_window: int = AOI_MAX_WINDOW,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
) -> PredictionResult | None:
    """Classes + confidence COGs of the AOI's first block in `out_dir` (no embeddings: the full pass caches
    them); None, writing nothing, when the AOI is small enough to predict whole at once."""
    with rasterio.open(imagery) as dataset:
        # The windows the full pass fits to the whole AOI (`predict(fit_windows=True)`, as ml/loop.predict_aoi runs it).
        tiling, anchor = aoi_windows(model, dataset, aoi, aoi_crs, tiling=tiling, max_window=max_window)
        part = first_block(dataset, aoi, tiling=tiling, anchor=anchor, aoi_crs=aoi_crs, view=view)
        if part is None:
            return None
        return predict(
            model, dataset, out_dir, aoi=part, tiling=tiling, anchor=anchor, device=device, progress=progress
        )
