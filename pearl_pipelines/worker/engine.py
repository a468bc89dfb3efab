"""Glue between the worker tasks and the ML engine (`pearl_pipelines.ml`): model loading, cache views, metrics.

Nothing here trains or predicts by itself; it calls the engine. Functions marked `ENGINE-ADAPTER` stand in
for an engine entry point with a different shape than the worker needs; see each docstring.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
from rasterio import windows
from rasterio.crs import CRS
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from pearl_pipelines.ml.embeddings import EmbeddingCache, EmbeddingMeta, sample_embeddings
from pearl_pipelines.ml.metrics import MetricsReport, compute_metrics
from pearl_pipelines.ml.models import LandcoverModel, load_model
from pearl_pipelines.ml.registry import MODEL_FILE, ModelRegistry
from pearl_pipelines.ml.samples import labels_to_samples
from pearl_pipelines.ml.tracking import TAG_VERSION
from pearl_pipelines.ml.versions import ModelVersion

INFERENCE_EXPERIMENT = "pearl-inference"
READY_FILE = ".complete"


# -- models from the MLflow registry ---------------------------------------------------------------------
def model_dir(cache_root: Path, name: str, version: str | int) -> Path:
    return Path(cache_root) / name / f"v{version}"


def load_registered(tracking_uri: str, name: str, version: str | int, cache_root: Path) -> LandcoverModel:
    """A registered version (its `model/model.pt`), downloaded once into `cache_root` and reused after."""
    local = model_dir(cache_root, name, version)
    if not (local / READY_FILE).is_file():
        downloaded = ModelRegistry(tracking_uri).download(name, version, local)
        found = next(downloaded.rglob(MODEL_FILE), None)
        if found is None:
            raise FileNotFoundError(f"models:/{name}/{version} has no {MODEL_FILE} in its artifacts")
        (local / READY_FILE).write_text(str(found.relative_to(local)))
    return load_model(local / (local / READY_FILE).read_text())


def find_replay(tracking_uri: str, name: str, version: str | int, cache_root: Path) -> Any:
    """The replay set a starter version logged next to its model.pt (None for versions without one)."""
    from pearl_pipelines.ml.replay import ReplaySet

    load_registered(tracking_uri, name, version, cache_root)  # downloads the version folder once
    local = model_dir(cache_root, name, version)
    found = next(local.rglob("replay.npz"), None)
    return ReplaySet.load(found) if found is not None else None


def head_arrays(model: LandcoverModel) -> tuple[np.ndarray, np.ndarray]:
    """(K, C) weight and (K,) bias of the model's 1x1 head as float32 arrays."""
    head = model.head
    k = head.out_channels
    bias = head.bias.detach().numpy() if head.bias is not None else np.zeros(k, np.float32)
    return head.weight.detach().reshape(k, -1).numpy(), bias


def version_of(model: LandcoverModel, tracking_uri: str, name: str, version: str | int) -> ModelVersion:
    """The model's head as a ModelVersion, with the lineage id the registry recorded (pearl.version_id tag)."""
    registered = ModelRegistry(tracking_uri).client.get_model_version(name, str(version))
    version_id = registered.tags.get(TAG_VERSION)
    if version_id is None and registered.run_id:
        run = ModelRegistry(tracking_uri).client.get_run(registered.run_id)
        version_id = run.data.tags.get(TAG_VERSION)
    return ModelVersion.from_model(model, version_id=version_id or f"{name}-v{version}")


# -- embedding caches ------------------------------------------------------------------------------------
def cache_window(
    cache: EmbeddingCache, lonlat_geometry: BaseGeometry | Mapping[str, Any]
) -> tuple[int, int, int, int] | None:
    """(row0, col0, height, width) of the cache pixels under a lon/lat geometry's bounds; None if outside.

    Every pixel the bounds touch is included (offsets floored, far edges ceiled), then cropped to the cache.
    """
    geometry = lonlat_geometry if isinstance(lonlat_geometry, BaseGeometry) else shape(lonlat_geometry)
    bounds = transform_bounds("EPSG:4326", cache.crs, *geometry.bounds, densify_pts=21)
    rows, cols = windows.from_bounds(*bounds, transform=cache.transform).toslices()
    window = Window.from_slices(rows, cols).crop(*cache.shape)
    if window.height <= 0 or window.width <= 0:
        return None
    return int(window.row_off), int(window.col_off), int(window.height), int(window.width)


def cache_view(cache: EmbeddingCache, window: tuple[int, int, int, int]) -> EmbeddingCache:
    """A read-only view of a window of a cache (memmap slices, no copy): a tile's part of an AOI cache.

    ENGINE-ADAPTER: the engine has no windowed `apply_head`; this builds an EmbeddingCache over slices.
    """
    r0, c0, h, w = window
    transform = windows.transform(Window(c0, r0, w, h), cache.transform)
    meta = EmbeddingMeta.model_validate(
        {**cache.meta.model_dump(), "transform": list(transform)[:6], "height": h, "width": w}
    )
    return EmbeddingCache(
        cache.directory, meta, cache.array[r0 : r0 + h, c0 : c0 + w], cache.valid[r0 : r0 + h, c0 : c0 + w]
    )


# -- labels and held-out evaluation ----------------------------------------------------------------------
def holdout_mask(labels: gpd.GeoDataFrame, fraction: float, min_labels: int = 10) -> np.ndarray:
    """Labels held out from every retrain: a stable hash of the label id, so a label is held out for the
    candidate *and* for every earlier version (none of them trained on it) and the comparison is fair."""
    if fraction <= 0 or len(labels) < min_labels:
        return np.zeros(len(labels), dtype=bool)
    ids = labels["label_id"].astype(str)
    buckets = np.array([int(hashlib.sha256(i.encode()).hexdigest()[:8], 16) % 1000 for i in ids])
    return buckets < fraction * 1000


def evaluate_head(
    weight: np.ndarray,
    bias: np.ndarray,
    class_names: Sequence[str],
    caches: Sequence[EmbeddingCache],
    labels: gpd.GeoDataFrame,
) -> MetricsReport | None:
    """Metrics of a head on labelled pixels of the caches (classes matched by name; unknown ones count as wrong)."""
    truth: list[str] = []
    predicted: list[str] = []
    for cache in caches:
        try:
            samples = labels_to_samples(labels, crs=cache.crs, transform=cache.transform, shape=cache.shape)
        except ValueError:  # RetrainError: no label in this cache
            continue
        x = sample_embeddings(cache, samples.rows, samples.cols).astype(np.float32)
        scores = x @ np.asarray(weight, np.float32).T + np.asarray(bias, np.float32)
        predicted += [class_names[i] for i in scores.argmax(axis=1)]
        truth += [str(n) for n in samples.class_names]
    if not truth:
        return None
    names = sorted(set(truth) | set(predicted))
    index = {n: i for i, n in enumerate(names)}
    return compute_metrics(
        np.array([index[n] for n in truth]), np.array([index[n] for n in predicted]), names, method="holdout_labels"
    )


# -- MLflow inference runs -------------------------------------------------------------------------------
def log_inference_run(
    tracking_uri: str,
    *,
    tags: Mapping[str, str],
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    experiment: str = INFERENCE_EXPERIMENT,
) -> str:
    """A finished MLflow run for an inference or embedding task (tagged with the Dagster run id)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run = client.create_run(experiment_id, tags=dict(tags))
    now = int(time.time() * 1000)
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
        params=[Param(k, str(v)[:6000]) for k, v in params.items()],
    )
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def class_pixel_counts(classes_path: Path, n_classes: int) -> list[int]:
    with rasterio.open(classes_path) as src:
        data = src.read(1)
    return np.bincount(data.ravel(), minlength=256)[:n_classes].astype(int).tolist()


def crs_of(path: Path) -> CRS:
    with rasterio.open(path) as src:
        return src.crs
