"""The label-to-map loop as one API for every caller (the review app's jobs, the Dagster Pipes worker):
embed an area, re-predict it from its cache, retrain a head on a label set, evaluate a version.

Class policy, the same in every step: class i is pixel value i in every map, schemas only grow (classes are
appended or renamed, never removed or reordered), and labels carry class names. So a version is always used on
the project's schema through `conform` (classes added since it was fit get a row that is never predicted), a
label's class is its index in that schema, and predictions and labels are compared by index, never by name
(a renamed class is still the same class).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
from rasterio.warp import transform as transform_xy
from rasterio.windows import Window

from pearl_pipelines.classes import ClassSchema
from pearl_pipelines.ml import inference
from pearl_pipelines.ml.base_model import BaseModel
from pearl_pipelines.ml.embeddings import EmbeddingCache, apply_head, sample_embeddings
from pearl_pipelines.ml.errors import RetrainError
from pearl_pipelines.ml.heads import pad_classes
from pearl_pipelines.ml.metrics import MetricsReport, compute_metrics
from pearl_pipelines.ml.models import LandcoverModel
from pearl_pipelines.ml.outputs import PredictionResult
from pearl_pipelines.ml.replay import ReplaySet
from pearl_pipelines.ml.retrain import UNLEARNED_BIAS, RetrainOptions, make_strategy, retrain
from pearl_pipelines.ml.samples import sample_on_grid, validate_labels
from pearl_pipelines.ml.strategies import DEFAULT_STRATEGY
from pearl_pipelines.ml.versions import ModelVersion

Progress = Callable[[int, int], None]
Cache = EmbeddingCache | Path  # an open cache, or the folder of one
HOLDOUT_METHOD = "holdout:labels (never trained on)"
BLOCK_PIXELS = 512  # the side of the block of a large AOI a live retrain re-predicts (and shows) first
BLOCK_MAX_SHARE = 0.5  # no such block when it would hold this share of the AOI's cache or more


def open_cache(cache: Cache) -> EmbeddingCache:
    return cache if isinstance(cache, EmbeddingCache) else EmbeddingCache.open(cache)


# -- versions on a project's schema -------------------------------------------------------------------------------
def conform(version: ModelVersion, schema: ClassSchema) -> ModelVersion:
    """The version's head on the project's schema: classes added since get a row that is never predicted,
    renamed classes keep their index (schemas only grow; class i is pixel value i everywhere)."""
    if len(schema) < len(version.schema):
        raise RetrainError(
            f"the project has {len(schema)} classes, fewer than model {version.id} ({len(version.schema)})"
        )
    weight, bias, extra = pad_classes(version.weight, version.bias, version.head_extra, len(schema), UNLEARNED_BIAS)
    return dataclasses.replace(version, schema=schema, weight=weight, bias=bias, head_extra=extra)


def version_model(version: ModelVersion, base: BaseModel) -> LandcoverModel:
    """A full model (backbone + this head) for a forward pass; the base model for a spatial head, which applies
    to cached embeddings only (`repredict` after the forward pass)."""
    return base.model if version.needs_xy else version.to_model(base.model)


# -- embed and predict --------------------------------------------------------------------------------------------
def predict_aoi(
    model: LandcoverModel,
    imagery: str | Path,
    aoi_lonlat: Any,
    out_dir: Path,
    embeddings_dir: Path,
    *,
    progress: Progress | None = None,
    model_id: str | None = None,
) -> PredictionResult:
    """Full forward pass over the AOI: classes + confidence COGs, and the AOI's embedding cache. Windows are fitted
    to the AOI (`inference.aoi_windows`): an AOI is mapped on its own, and its first block (ml/preview.py) is cut
    from the same windows."""
    return inference.predict(
        model,
        imagery,
        out_dir,
        aoi=aoi_lonlat,
        aoi_crs="EPSG:4326",
        embeddings_dir=embeddings_dir,
        model_id=model_id,
        progress=progress,
        fit_windows=True,
    )


def repredict(
    cache: Cache, version: ModelVersion, schema: ClassSchema, out_dir: Path, window: Window | None = None
) -> PredictionResult:
    """Head-only re-prediction from cached embeddings (no backbone), of the whole cache or of a `window` of it
    (`EmbeddingCache.window`, `lonlat_window`): the live-retrain path and the worker's per-tile path."""
    head = conform(version, schema)
    opened = open_cache(cache)
    if window is not None:
        opened = opened.window(window)
    return apply_head(opened, head.weight, head.bias, schema, out_dir, extra=head.head_extra)


def view_block(
    cache: Cache,
    view: Sequence[float] | None,
    *,
    centre: Sequence[float] | None = None,
    size: int = BLOCK_PIXELS,
    max_share: float = BLOCK_MAX_SHARE,
) -> Window | None:
    """The `size` x `size` px window of the cache to re-predict first (`repredict(window=...)`): centred on the
    centre of `view` (lon/lat west, south, east, north: what the mapper sees) when that lies in the cache's extent,
    else on `centre` (lon/lat: the AOI's centre; default the cache's), and moved inside the cache. None when the
    window would hold `max_share` of the cache or more (a small AOI: re-predicting it whole costs about the same).

    The head is per pixel, so the window's pixels are those of the whole cache's re-prediction."""
    opened = open_cache(cache)
    height, width = opened.shape
    h, w = min(size, height), min(size, width)
    if h * w >= max_share * height * width:
        return None

    def pixel(lon: float, lat: float) -> tuple[float, float]:
        xs, ys = transform_xy("EPSG:4326", opened.crs, [lon], [lat])
        col, row = ~opened.transform @ (xs[0], ys[0])
        return row, col

    at: tuple[float, float] | None = None
    if view is not None:
        west, south, east, north = view
        row, col = pixel((west + east) / 2, (south + north) / 2)
        at = (row, col) if 0 <= row < height and 0 <= col < width else None
    if at is None:
        at = pixel(centre[0], centre[1]) if centre is not None else (height / 2, width / 2)
    r0 = min(max(round(at[0] - h / 2), 0), height - h)
    c0 = min(max(round(at[1] - w / 2), 0), width - w)
    return Window(c0, r0, w, h)


# -- retrain ------------------------------------------------------------------------------------------------------
def retrain_version(
    parent: ModelVersion,
    schema: ClassSchema,
    caches: Sequence[Cache],
    labels: gpd.GeoDataFrame,
    replay: ReplaySet | None,
    *,
    evaluate: bool,
    strategy: str = DEFAULT_STRATEGY,
    replay_scale: float | None = None,
    seed: int = 0,
) -> ModelVersion:
    """A child version for the project's schema from all labels over the caches (+ the replay set).

    `evaluate=False` with a `replay_scale` is the live path (one fit); `evaluate=True` adds grouped
    cross-validation metrics, and without a `replay_scale` the share of replay is chosen by that CV.
    """
    options = RetrainOptions(evaluate=evaluate, replay_scale=replay_scale, seed=seed)
    opened = [open_cache(c) for c in caches]
    child = retrain(
        conform(parent, schema), opened, labels, replay=replay, strategy=make_strategy(strategy), options=options
    )
    child.new_classes = schema.names[len(parent.schema) :]  # new to the parent (conform added them)
    return child


# -- evaluate -----------------------------------------------------------------------------------------------------
def holdout_mask(labels: gpd.GeoDataFrame, fraction: float, min_labels: int = 10) -> np.ndarray:
    """Labels held out from every retrain: a stable hash of the label id, so a label is held out for the
    candidate *and* for every earlier version (none of them trained on it) and the comparison is fair."""
    if fraction <= 0 or len(labels) < min_labels:
        return np.zeros(len(labels), dtype=bool)
    ids = labels["label_id"].astype(str)
    buckets = np.array([int(hashlib.sha256(i.encode()).hexdigest()[:8], 16) % 1000 for i in ids])
    return buckets < fraction * 1000


def evaluate(
    version: ModelVersion,
    schema: ClassSchema,
    caches: Sequence[Cache],
    labels: gpd.GeoDataFrame,
    *,
    method: str = HOLDOUT_METHOD,
) -> MetricsReport | None:
    """Metrics of a version on labelled pixels of the caches (labels it was not fit on), on `schema`: the review
    app's metrics panel and the champion gate both score with this. None when no label lands on a cache.

    Classes match by index (module docstring): the head is conformed to `schema`, a label's class is its index
    there; a label of a class `schema` lacks is an error, not a silent miss.
    """
    if not len(labels):
        return None
    labels = validate_labels(labels)
    unknown = sorted(set(labels["class_name"]) - set(schema.names))
    if unknown:
        raise RetrainError(f"label class(es) {', '.join(map(repr, unknown))} not in schema {schema.id!r}")
    head = conform(version, schema)
    predicted, truth = [], []
    for cache in map(open_cache, caches):
        samples = sample_on_grid(labels, crs=cache.crs, transform=cache.transform, shape=cache.shape)
        if not len(samples):
            continue
        x = sample_embeddings(cache, samples.rows, samples.cols)
        predicted.append(np.argmax(head.logits(x, cache.xy(samples.rows, samples.cols)), axis=1))
        truth += [schema.index(n) for n in samples.class_names]
    if not predicted:
        return None
    return compute_metrics(np.array(truth), np.concatenate(predicted), schema.names, method=method)
