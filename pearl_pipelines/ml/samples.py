"""Labels (points and polygons, any CRS) -> pixel samples on an embedding cache's grid.

A point is the pixel it falls in. A polygon is rasterised (pixel centres inside; all touched pixels
when it is smaller than a pixel) and, when it covers more than `max_pixels_per_polygon` pixels, a
seeded random subset is kept. Every sample keeps its label's group id, so a polygon's pixels can be
kept together in cross-validation.
"""

from __future__ import annotations

from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import rasterize
from shapely.geometry.base import BaseGeometry

from pearl_pipelines.ml.errors import RetrainError

ACCEPTED_GEOMETRIES = ("Point", "MultiPoint", "Polygon", "MultiPolygon")


@dataclass(frozen=True)
class SamplingConfig:
    max_pixels_per_polygon: int = 200
    seed: int = 0


@dataclass(frozen=True)
class PixelSamples:
    """One entry per sampled pixel: row, col on the grid, class name, and the group (label) it came from."""

    rows: np.ndarray
    cols: np.ndarray
    class_names: np.ndarray
    groups: np.ndarray
    labels_outside: int = 0  # labels that fell entirely outside the grid and were dropped

    def __len__(self) -> int:
        return len(self.rows)


def validate_labels(labels: gpd.GeoDataFrame | None) -> gpd.GeoDataFrame:
    """Check the label table and return it with a `label_id` column (default: the row index)."""
    if labels is None or len(labels) == 0:
        raise RetrainError("no labels: add at least one point or polygon with a class_name before retraining")
    if not isinstance(labels, gpd.GeoDataFrame) or "class_name" not in labels.columns:
        raise RetrainError(
            "labels must be a GeoDataFrame with columns 'geometry' and 'class_name' (and optional 'label_id')"
        )
    if labels.crs is None:
        raise RetrainError("labels have no CRS; set one (GeoJSON coordinates are EPSG:4326 lon/lat)")
    labels = labels.copy()
    if "label_id" not in labels.columns:
        labels["label_id"] = labels.index
    bad_class = labels["class_name"].isna() | (labels["class_name"].astype(str).str.strip() == "")
    if bad_class.any():
        raise RetrainError(f"labels {_ids(labels, bad_class)} have no class_name; every label needs one")
    geoms = labels.geometry
    missing = geoms.isna() | geoms.is_empty
    if missing.any():
        raise RetrainError(f"labels {_ids(labels, missing)} have no geometry (null or empty); remove or redraw them")
    wrong_type = ~geoms.geom_type.isin(ACCEPTED_GEOMETRIES)
    if wrong_type.any():
        kinds = ", ".join(sorted(set(geoms[wrong_type].geom_type)))
        raise RetrainError(
            f"labels {_ids(labels, wrong_type)} are {kinds}; accepted geometries: {', '.join(ACCEPTED_GEOMETRIES)}"
        )
    coords = geoms.get_coordinates()
    not_finite = ~np.isfinite(coords.to_numpy()).all(axis=1)
    if not_finite.any():
        bad = labels.index.isin(coords.index[not_finite])
        raise RetrainError(f"labels {_ids(labels, bad)} have NaN or infinite coordinates")
    invalid = (geoms.geom_type.str.endswith("Polygon")) & ~geoms.is_valid
    if invalid.any():
        raise RetrainError(f"polygons {_ids(labels, invalid)} are invalid (e.g. self-intersecting); redraw them")
    labels["class_name"] = labels["class_name"].astype(str).str.strip()
    return labels


def _ids(labels: pd.DataFrame, mask: pd.Series | np.ndarray) -> str:
    ids = labels.loc[np.asarray(mask), "label_id"].astype(str).tolist()
    return ", ".join(ids[:10]) + (f" (and {len(ids) - 10} more)" if len(ids) > 10 else "")


def labels_to_samples(
    labels: gpd.GeoDataFrame,
    *,
    crs: CRS,
    transform: Affine,
    shape: tuple[int, int],
    config: SamplingConfig | None = None,
    validate: bool = True,
) -> PixelSamples:
    """Sample labels onto a pixel grid (reprojected to `crs` first); raises if none lands on it.

    `validate=False` skips `validate_labels` for a caller that has just run it.
    """
    if validate:
        labels = validate_labels(labels)
    samples = sample_on_grid(labels, crs=crs, transform=transform, shape=shape, config=config)
    if not len(samples):
        x0, y0 = transform @ (0, 0)
        x1, y1 = transform @ (shape[1], shape[0])
        raise RetrainError(
            f"none of the {samples.labels_outside} labels falls inside the area with embeddings "
            f"(bounds {min(x0, x1):.1f}, {min(y0, y1):.1f}, {max(x0, x1):.1f}, {max(y0, y1):.1f} "
            f"in {CRS.from_user_input(crs).to_string()}); "
            "label inside the area under review, or predict the area the labels are in first"
        )
    return samples


def sample_on_grid(
    labels: gpd.GeoDataFrame,
    *,
    crs: CRS,
    transform: Affine,
    shape: tuple[int, int],
    config: SamplingConfig | None = None,
) -> PixelSamples:
    """The samples of validated labels that land on the grid; empty (never an error) when none does."""
    config = config or SamplingConfig()
    if CRS.from_user_input(labels.crs) != CRS.from_user_input(crs):
        labels = labels.to_crs(crs)
    if labels.geom_type.str.startswith("Multi").any():
        labels = labels.explode(index_parts=False)
    is_point = (labels.geom_type == "Point").to_numpy()
    names = labels["class_name"].to_numpy(dtype=object)
    groups = labels["label_id"].to_numpy(dtype=object)
    parts = [(*_point_pixels(labels.geometry.to_numpy()[is_point], transform), names[is_point], groups[is_point])]
    rng = np.random.default_rng(config.seed)
    for geom, name, group in zip(labels.geometry[~is_point], names[~is_point], groups[~is_point], strict=True):
        r, c = _polygon_pixels(geom, transform, shape, config.max_pixels_per_polygon, rng)
        parts.append((r, c, np.full(len(r), name, dtype=object), np.full(len(r), group, dtype=object)))
    rows, cols, names, groups = (np.concatenate(p) for p in zip(*parts, strict=True))
    keep = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
    return PixelSamples(
        rows=rows[keep],
        cols=cols[keep],
        class_names=names[keep],
        groups=groups[keep],
        labels_outside=labels["label_id"].nunique() - len(set(groups[keep].tolist())),
    )


def _point_pixels(points: np.ndarray, transform: Affine) -> tuple[np.ndarray, np.ndarray]:
    xy = shapely.get_coordinates(points)
    inv = ~transform
    cols = np.floor(inv.a * xy[:, 0] + inv.b * xy[:, 1] + inv.c).astype(np.int64)
    rows = np.floor(inv.d * xy[:, 0] + inv.e * xy[:, 1] + inv.f).astype(np.int64)
    return rows, cols


GEOS_WINDOW_PIXELS = 250_000  # polygon bounding windows up to this size are sampled by point-in-polygon


def _polygon_pixels(
    polygon: BaseGeometry, transform: Affine, shape: tuple[int, int], limit: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    inv = ~transform
    xmin, ymin, xmax, ymax = polygon.bounds
    cs, rs = zip(*(inv @ (x, y) for x in (xmin, xmax) for y in (ymin, ymax)), strict=True)
    r0, r1 = max(int(np.floor(min(rs))), 0), min(int(np.ceil(max(rs))), shape[0])
    c0, c1 = max(int(np.floor(min(cs))), 0), min(int(np.ceil(max(cs))), shape[1])
    if r1 <= r0 or c1 <= c0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    window_transform = transform @ Affine.translation(c0, r0)
    if (r1 - r0) * (c1 - c0) <= GEOS_WINDOW_PIXELS:
        # Pixels whose centre lies inside (GDAL's rasterize rule), tested with GEOS: for the small polygons
        # a mapper draws, several times faster than a rasterize call with its GDAL set-up.
        rows, cols = np.mgrid[0 : r1 - r0, 0 : c1 - c0]
        xs, ys = window_transform @ (cols.ravel() + 0.5, rows.ravel() + 0.5)
        inside = shapely.contains_xy(polygon, xs, ys)
        r, c = rows.ravel()[inside], cols.ravel()[inside]
    else:  # a large polygon: a uint8 mask, not arrays of coordinates
        r, c = np.nonzero(rasterize([polygon], out_shape=(r1 - r0, c1 - c0), transform=window_transform))
    if not len(r):  # a sliver smaller than a pixel still yields the pixels it touches
        mask = rasterize([polygon], out_shape=(r1 - r0, c1 - c0), transform=window_transform, all_touched=True)
        r, c = np.nonzero(mask)
    if len(r) > limit:
        pick = np.sort(rng.choice(len(r), size=limit, replace=False))
        r, c = r[pick], c[pick]
    return r.astype(np.int64) + r0, c.astype(np.int64) + c0
