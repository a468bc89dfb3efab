"""Active learning, "label here next": the pixels of a cached area where one more label would help the head most.

Uncertainty is scored from the cached embeddings on a regular grid (every `stride` pixels, in chunks, so a
1 km^2 area costs a few matrix products), then points are picked greedily, most uncertain first, never closer
than `spacing_px` to one another or to an existing label: ten clicks on one ambiguous field teach the model
less than ten clicks on ten different ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform as warp_transform

from pearl_pipelines.classes import ClassSchema
from pearl_pipelines.ml.embeddings import EmbeddingCache, pixel_centres, sample_embeddings
from pearl_pipelines.ml.errors import SuggestionError

METHODS = ("margin", "entropy")
MAX_SUGGESTIONS = 500
CHUNK_PIXELS = 65_536  # candidate pixels scored per call of the head: bounded memory whatever the area

# (N, C) float32 embeddings -> (N, K) logits; with `needs_xy`, called as logits(x, xy) with (N, 2) map coordinates.
Logits = Callable[..., np.ndarray]


@dataclass(frozen=True)
class Suggestions:
    """Suggested pixels, best first: row/col on the cache's grid, uncertainty score in [0, 1], predicted class."""

    rows: np.ndarray
    cols: np.ndarray
    score: np.ndarray
    predicted: np.ndarray
    crs: CRS
    transform: Affine
    spacing_px: float
    method: str

    def __len__(self) -> int:
        return len(self.rows)

    def xy(self) -> np.ndarray:
        """(N, 2) map coordinates (the cache's CRS) of the pixel centres."""
        return pixel_centres(self.transform, self.rows, self.cols)

    def lonlat(self) -> np.ndarray:
        """(N, 2) lon/lat (EPSG:4326) of the pixel centres."""
        xy = self.xy()
        if not len(xy):
            return xy
        lon, lat = warp_transform(self.crs, "EPSG:4326", xy[:, 0].tolist(), xy[:, 1].tolist())
        return np.stack([lon, lat], axis=-1)

    def to_geojson(self, classes: ClassSchema | Sequence[str]) -> dict[str, Any]:
        """A GeoJSON FeatureCollection of lon/lat Points; properties rank (1 = most useful), score,
        predicted_class (name), row, col."""
        names = classes.names if isinstance(classes, ClassSchema) else list(classes)
        features = [
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [float(lon), float(lat)]},
                "properties": {
                    "rank": i + 1,
                    "score": float(self.score[i]),
                    "predicted_class": names[int(self.predicted[i])],
                    "row": int(self.rows[i]),
                    "col": int(self.cols[i]),
                },
            }
            for i, (lon, lat) in enumerate(self.lonlat())
        ]
        return {"type": "FeatureCollection", "features": features}


def uncertainty(logits: np.ndarray, method: str) -> np.ndarray:
    """(N,) uncertainty in [0, 1] of (N, K) logits: 1 - (p1 - p2) for "margin", entropy / log K for "entropy"."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)  # stable softmax: exp of values <= 0 only
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    k = p.shape[1]
    if k < 2:
        return np.zeros(len(p))
    if method == "margin":
        top2 = np.partition(p, k - 2, axis=1)[:, -2:]
        return 1.0 - (top2[:, 1] - top2[:, 0])
    # Unlearned classes (bias -1e4) have p == 0 and add nothing; the clip only keeps log() finite.
    return -(p * np.log(np.clip(p, 1e-300, None))).sum(axis=1) / math.log(k)


def _check_options(n: int, method: str, stride: int, spacing_px: float | None) -> None:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or not 1 <= n <= MAX_SUGGESTIONS:
        raise SuggestionError(f"n={n!r}: ask for 1 to {MAX_SUGGESTIONS} suggested points")
    if method not in METHODS:
        raise SuggestionError(f"unknown uncertainty method {method!r}; accepted: {', '.join(METHODS)}")
    if isinstance(stride, bool) or not isinstance(stride, int | np.integer) or stride < 1:
        raise SuggestionError(f"stride={stride!r}: the candidate grid step must be a whole number of pixels >= 1")
    if spacing_px is not None and not (math.isfinite(spacing_px) and spacing_px >= 0):
        raise SuggestionError(f"spacing_px={spacing_px!r}: the minimum distance must be >= 0 pixels (or None)")


class _CandidateGrid:
    """Cell (i, j) is pixel (rows[i], cols[j]); `priority` ranks the live candidates (-1: not one, or taken)."""

    def __init__(self, height: int, width: int, stride: int) -> None:
        self.rows = np.arange(stride // 2, height, stride)
        self.cols = np.arange(stride // 2, width, stride)
        self.score = np.full((len(self.rows), len(self.cols)), np.nan)
        self.predicted = np.zeros(self.score.shape, np.int64)

    def rank(self, seed: int) -> None:
        flat = self.score.ravel()
        live = np.flatnonzero(np.isfinite(flat))
        jitter = np.random.default_rng(seed).random(live.size)  # ties in a seeded order, not top-left first
        order = live[np.lexsort((jitter, -flat[live]))]
        priority = np.full(flat.size, -1, np.int64)
        priority[order] = np.arange(order.size, 0, -1)
        self.priority = priority.reshape(self.score.shape)

    def suppress(self, row: float, col: float, radius: float) -> None:
        """Drop the candidates closer than `radius` pixels to pixel (row, col) (which may lie off the grid)."""
        if radius <= 0:
            return
        i0, i1 = np.searchsorted(self.rows, [row - radius, row + radius], side="left")
        j0, j1 = np.searchsorted(self.cols, [col - radius, col + radius], side="left")
        if i1 <= i0 or j1 <= j0:
            return
        dr = (self.rows[i0:i1, None] - row).astype(np.float64)
        dc = (self.cols[None, j0:j1] - col).astype(np.float64)
        self.priority[i0:i1, j0:j1][dr**2 + dc**2 < radius**2] = -1

    def take_best(self) -> tuple[int, int] | None:
        k = int(np.argmax(self.priority))
        i, j = divmod(k, self.priority.shape[1])
        if self.priority[i, j] < 0:
            return None
        self.priority[i, j] = -1
        return i, j


def suggest_clicks(
    cache: EmbeddingCache,
    logits: Logits,
    n: int = 20,
    *,
    spacing_px: float | None = None,
    stride: int = 4,
    method: str = "margin",
    exclude: tuple[np.ndarray, np.ndarray] | None = None,
    seed: int = 0,
    needs_xy: bool = False,
    chunk_pixels: int = CHUNK_PIXELS,
) -> Suggestions:
    """Up to `n` valid pixels of the cached area where the head is least sure, spread out in space.

    `logits`: (N, C) float32 embeddings -> (N, K) logits, e.g. `lambda x: x @ version.weight.T + version.bias`;
    with `needs_xy` (a spatial head) it is called as `logits(x, xy)`, xy the pixels' map coordinates.
    `spacing_px`: minimum distance between suggestions and from `exclude` pixels (rows, cols: the existing labels);
    default sqrt(valid area / n) / 2, so that n points can spread over the area. Fewer than `n` come back when
    the area cannot hold them.
    """
    _check_options(n, method, stride, spacing_px)
    height, width = cache.shape
    valid_pixels = int(np.count_nonzero(cache.valid))
    if spacing_px is None:
        spacing_px = max(1.0, math.sqrt(valid_pixels / n) / 2)
    grid = _CandidateGrid(height, width, int(stride))
    if valid_pixels:
        _score(cache, logits, grid, method=method, needs_xy=needs_xy, chunk_pixels=chunk_pixels)
    grid.rank(seed)
    if exclude is not None:
        for row, col in zip(*(np.asarray(a, np.float64).ravel() for a in exclude), strict=True):
            grid.suppress(row, col, spacing_px)
    picked: list[tuple[int, int]] = []
    while len(picked) < n and (best := grid.take_best()) is not None:
        picked.append(best)
        grid.suppress(grid.rows[best[0]], grid.cols[best[1]], spacing_px)
    ii = np.array([p[0] for p in picked], np.int64)
    jj = np.array([p[1] for p in picked], np.int64)
    return Suggestions(
        rows=grid.rows[ii],
        cols=grid.cols[jj],
        score=grid.score[ii, jj],
        predicted=grid.predicted[ii, jj],
        crs=cache.crs,
        transform=cache.transform,
        spacing_px=float(spacing_px),
        method=method,
    )


def _score(
    cache: EmbeddingCache, logits: Logits, grid: _CandidateGrid, *, method: str, needs_xy: bool, chunk_pixels: int
) -> None:
    """Fill grid.score / grid.predicted for the valid cells, a band of grid rows at a time."""
    band = max(1, chunk_pixels // max(1, len(grid.cols)))
    for i0 in range(0, len(grid.rows), band):
        rows = grid.rows[i0 : i0 + band]
        inside = np.asarray(cache.valid[rows][:, grid.cols]) > 0
        gi, gj = np.nonzero(inside)
        if not gi.size:
            continue
        r, c = rows[gi], grid.cols[gj]
        x = sample_embeddings(cache, r, c)
        out = np.asarray(logits(x, cache.xy(r, c)) if needs_xy else logits(x))
        if out.ndim != 2 or out.shape[0] != len(x):
            raise SuggestionError(f"the head returned logits of shape {out.shape} for {len(x)} pixels; expected (N, K)")
        score = uncertainty(out, method)
        score[~np.isfinite(out).all(axis=1)] = np.nan  # a broken pixel is never a suggestion
        grid.score[i0 + gi, gj] = score
        grid.predicted[i0 + gi, gj] = np.argmax(np.nan_to_num(out, nan=-np.inf), axis=1)
