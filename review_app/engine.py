"""The single place where the review app calls the ML engine (`pearl_pipelines.ml`) and the Dagster trigger.

Everything here is synchronous and runs in the job thread pool (see jobs.py). Functions marked
`# ENGINE-ADAPTER` stand in for engine modules that do not exist yet; each names the module that
replaces it, and keeps the call shape the app needs, so wiring the real one is a local change.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import httpx
import numpy as np
from rasterio.features import geometry_mask
from rasterio.windows import Window, from_bounds

from pearl_pipelines.classes import ClassSchema
from pearl_pipelines.ml import inference
from pearl_pipelines.ml.embeddings import EmbeddingCache, apply_head, sample_embeddings
from pearl_pipelines.ml.models import LandcoverModel, load_model, save_model
from pearl_pipelines.ml.outputs import PredictionResult
from pearl_pipelines.settings import Settings

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]

POLYGON_SAMPLES = 200  # pixels drawn per polygon label (PEARL's newer branch uses 200)
REPLAY_SAMPLES = 2000  # pseudo-labelled pixels that keep the map stable where nobody labelled
REPLAY_SHARE = 1.0  # the replay set weighs as much as the labels (each label weighs 1), at least MIN_REPLAY_WEIGHT
MIN_REPLAY_WEIGHT = 5.0


class RetrainError(ValueError):  # ENGINE-ADAPTER: pearl_pipelines.ml.retrain.RetrainError
    """A retrain the engine refuses (no labels, no cached embeddings...); the message says what to do."""


# -- models ---------------------------------------------------------------------------------------------------
@dataclass
class BaseModelResult:
    model: LandcoverModel | None
    source: str
    message: str


def _mlflow_reachable(uri: str) -> bool:
    if not uri.startswith("http"):
        return True  # file or sqlite store: local
    try:
        return httpx.get(f"{uri.rstrip('/')}/health", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _parse_models_uri(ref: str) -> tuple[str, str]:
    body = ref.removeprefix("models:/")
    if "@" in body:
        name, alias = body.split("@", 1)
        return name, alias
    name, _, version = body.partition("/")
    return name, version or "champion"


def local_model_candidates(ref: str, settings: Settings) -> list[Path]:
    """Files under PEARL_HOME/models that may hold `ref` when MLflow is not reachable. ENGINE-ADAPTER: starter.py"""
    name, alias = _parse_models_uri(ref)
    models = settings.models_dir
    return [
        models / f"{name}@{alias}.pt",
        models / f"{name}-{alias}.pt",
        models / f"{name}.pt",
        models / name / alias / "model.pt",
        models / name / "model.pt",
    ]


def load_base_model(ref: str, settings: Settings) -> BaseModelResult:
    """The project's base model: from the MLflow registry, else from a local file; None (with why) if neither."""
    if ref.startswith("models:/"):
        name, alias = _parse_models_uri(ref)
        uri = settings.resolved_mlflow_uri
        if _mlflow_reachable(uri):
            from pearl_pipelines.ml.registry import ModelRegistry

            try:
                model = ModelRegistry(uri).load_model(name, alias, cache_dir=settings.models_dir / "mlflow" / name / alias)
                return BaseModelResult(model, f"{ref} ({uri})", "")
            except Exception as exc:  # registry errors vary (missing alias, artifact store): fall back, say why
                log.warning("base model %s not loadable from MLflow: %s", ref, exc)
        for path in local_model_candidates(ref, settings):
            if path.is_file():
                return BaseModelResult(load_model(path), str(path), "")
        return BaseModelResult(
            None,
            ref,
            f"no model yet: {ref} is not in MLflow at {uri} and no local copy is in {settings.models_dir}. "
            "Train the starter model (`make demo` does) and reload",
        )
    path = Path(ref) if Path(ref).is_absolute() else settings.models_dir / ref
    if path.is_file():
        return BaseModelResult(load_model(path), str(path), "")
    return BaseModelResult(None, ref, f"no model file {path}")


def head_arrays(model: LandcoverModel) -> tuple[np.ndarray, np.ndarray]:
    """The 1x1 head as (K, C) weight and (K,) bias arrays."""
    weight = model.head.weight.detach().cpu().numpy().reshape(model.head.out_channels, -1)
    bias = model.head.bias.detach().cpu().numpy()  # type: ignore[union-attr]
    return weight.astype(np.float32), bias.astype(np.float32)


def with_head(model: LandcoverModel, schema: ClassSchema, weight: np.ndarray, bias: np.ndarray) -> LandcoverModel:
    import torch

    new = copy.deepcopy(model)
    new.replace_head(schema, torch.from_numpy(weight), torch.from_numpy(bias))
    return new.eval()


def save_version(model: LandcoverModel, path: Path, extra: dict[str, Any]) -> Path:  # ENGINE-ADAPTER: versions.py
    return save_model(model, path, extra=extra)


def load_version(path: Path) -> LandcoverModel:  # ENGINE-ADAPTER: versions.py
    return load_model(path)


# -- prediction -----------------------------------------------------------------------------------------------
def predict_aoi(
    model: LandcoverModel,
    imagery: Path,
    aoi_lonlat: Any,
    out_dir: Path,
    embeddings_dir: Path,
    progress: Progress | None = None,
    model_id: str | None = None,
) -> PredictionResult:
    """Full forward pass over the AOI: classes + confidence COGs, and the AOI's embedding cache."""
    return inference.predict(
        model,
        imagery,
        out_dir,
        aoi=aoi_lonlat,
        aoi_crs="EPSG:4326",
        embeddings_dir=embeddings_dir,
        model_id=model_id,
        progress=progress,
    )


def repredict(
    embeddings_dir: Path, weight: np.ndarray, bias: np.ndarray, schema: ClassSchema, out_dir: Path
) -> PredictionResult:
    """Head-only re-prediction from the cached embeddings (no backbone): the live-retrain path."""
    return apply_head(EmbeddingCache.open(embeddings_dir), weight, bias, schema, out_dir)


def has_embeddings(embeddings_dir: Path) -> bool:
    try:
        EmbeddingCache.open(embeddings_dir)
    except (FileNotFoundError, OSError, ValueError):
        return False
    return True


# -- retraining -----------------------------------------------------------------------------------------------
@dataclass
class Samples:
    x: np.ndarray  # (n, C) float32
    y: np.ndarray  # (n,) class index
    groups: np.ndarray  # (n,) label id
    weight: np.ndarray  # (n,)


@dataclass
class HeadFit:
    weight: np.ndarray
    bias: np.ndarray
    schema: ClassSchema
    n_labels: int
    labelled: Samples  # the user's samples (for metrics)
    replay: Samples = field(repr=False)


def _label_pixels(cache: EmbeddingCache, geom: Any, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of cache pixels under a label given in the cache CRS (points: one pixel)."""
    height, width = cache.shape
    if geom.geom_type == "Point":
        col, row = ~cache.transform * (geom.x, geom.y)
        r, c = int(np.floor(row)), int(np.floor(col))
        if 0 <= r < height and 0 <= c < width:
            return np.array([r]), np.array([c])
        return np.array([], dtype=int), np.array([], dtype=int)
    window = from_bounds(*geom.bounds, transform=cache.transform).round_offsets(op="floor").round_lengths(op="ceil")
    window = window.intersection(Window(0, 0, width, height))
    inside = geometry_mask(
        [geom],
        out_shape=(int(window.height), int(window.width)),
        transform=cache.transform * cache.transform.translation(window.col_off, window.row_off),
        invert=True,
        all_touched=True,
    )
    rows, cols = np.nonzero(inside)
    if len(rows) > POLYGON_SAMPLES:
        keep = rng.choice(len(rows), POLYGON_SAMPLES, replace=False)
        rows, cols = rows[keep], cols[keep]
    return rows + int(window.row_off), cols + int(window.col_off)


def collect_samples(
    labels: gpd.GeoDataFrame, cache_dir: Path, schema: ClassSchema, seed: int = 0
) -> Samples:  # ENGINE-ADAPTER: samples.py
    """Embeddings under the labels of one AOI (one group per label, for grouped cross-validation)."""
    cache = EmbeddingCache.open(cache_dir)
    rng = np.random.default_rng(seed)
    frame = labels.to_crs(cache.crs)
    xs, ys, gs = [], [], []
    for label_id, class_name, geom in zip(frame["label_id"], frame["class_name"], frame.geometry, strict=True):
        rows, cols = _label_pixels(cache, geom, rng)
        if len(rows) == 0:
            continue
        xs.append(sample_embeddings(cache, rows, cols).astype(np.float32))
        ys.append(np.full(len(rows), schema.index(class_name)))
        gs.append(np.full(len(rows), int(label_id)))
    if not xs:
        return Samples(np.zeros((0, cache.meta.channels), np.float32), np.zeros(0, int), np.zeros(0, int), np.zeros(0))
    x = np.concatenate(xs)
    # Each label weighs the same, whatever its pixel count: a big polygon must not drown the points.
    groups = np.concatenate(gs)
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    return Samples(x, np.concatenate(ys), groups, 1.0 / counts[inverse])


def replay_samples(
    cache_dir: Path, weight: np.ndarray, bias: np.ndarray, n: int = REPLAY_SAMPLES, seed: int = 0
) -> Samples:  # ENGINE-ADAPTER: retrain.py replay set
    """Random AOI pixels labelled by the current head: what the model already says where nobody labelled."""
    cache = EmbeddingCache.open(cache_dir)
    rng = np.random.default_rng(seed)
    rows, cols = np.nonzero(np.asarray(cache.valid))
    if len(rows) == 0:
        return Samples(np.zeros((0, weight.shape[1]), np.float32), np.zeros(0, int), np.zeros(0, int), np.zeros(0))
    pick = rng.choice(len(rows), min(n, len(rows)), replace=False)
    x = sample_embeddings(cache, rows[pick], cols[pick]).astype(np.float32)
    y = np.argmax(x @ weight.T + bias, axis=1)
    return Samples(x, y, np.full(len(y), -1), np.full(len(y), 1.0 / len(y)))


def _concat(parts: list[Samples]) -> Samples:
    return Samples(
        np.concatenate([p.x for p in parts]),
        np.concatenate([p.y for p in parts]),
        np.concatenate([p.groups for p in parts]),
        np.concatenate([p.weight for p in parts]),
    )


def _fit(x: np.ndarray, y: np.ndarray, w: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression (PEARL's last-layer retrain, refit from scratch, so new classes just work)."""
    from sklearn.linear_model import LogisticRegression

    present = np.unique(y)
    weight = np.zeros((n_classes, x.shape[1]), np.float32)
    bias = np.full(n_classes, -30.0, np.float32)  # classes with no sample are never predicted
    if len(present) == 1:
        bias[present[0]] = 0.0
        return weight, bias
    clf = LogisticRegression(C=1.0, max_iter=300)
    clf.fit(x, y, sample_weight=w / w.mean())
    coef, intercept = clf.coef_, clf.intercept_
    if len(present) == 2:  # sklearn's binary form: one row for the second class
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    weight[present] = coef
    bias[present] = intercept
    return weight, bias


def retrain_head(
    model: LandcoverModel,
    schema: ClassSchema,
    labels_by_aoi: dict[int, gpd.GeoDataFrame],
    caches: dict[int, Path],
) -> HeadFit:  # ENGINE-ADAPTER: retrain.py
    """A new head for `schema` (which may have grown) from the labels over cached embeddings plus a replay set."""
    n_labels = sum(len(f) for f in labels_by_aoi.values())
    if n_labels == 0:
        raise RetrainError("there are no labels to retrain on: add points or polygons inside an AOI first")
    missing = [aoi for aoi, frame in labels_by_aoi.items() if len(frame) and aoi not in caches]
    if missing:
        raise RetrainError(
            f"AOI(s) {', '.join(map(str, missing))} have labels but no cached embeddings: run inference on them first"
        )
    weight, bias = pad_head(*head_arrays(model), len(schema))
    user = [collect_samples(frame, caches[aoi], schema) for aoi, frame in labels_by_aoi.items() if len(frame)]
    labelled = _concat(user)
    if len(labelled.y) == 0:
        raise RetrainError("none of the labels falls on a predicted pixel of its AOI; label inside the AOI")
    replay = _concat([replay_samples(caches[aoi], weight, bias) for aoi in caches])
    replay.weight *= max(MIN_REPLAY_WEIGHT, REPLAY_SHARE * n_labels) / max(1, len(caches))
    data = _concat([labelled, replay])
    new_weight, new_bias = _fit(data.x, data.y, data.weight, len(schema))
    return HeadFit(new_weight, new_bias, schema, n_labels, labelled, replay)


def pad_head(weight: np.ndarray, bias: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Grow a head to `n_classes` rows; added classes get a bias that never wins (they have no samples yet)."""
    pad = n_classes - weight.shape[0]
    if pad <= 0:
        return weight, bias
    return (
        np.vstack([weight, np.zeros((pad, weight.shape[1]), weight.dtype)]),
        np.concatenate([bias, np.full(pad, -30.0, bias.dtype)]),
    )


def _report(
    labelled: Samples, predicted: np.ndarray, schema: ClassSchema, method: str, base: dict[str, Any]
) -> dict[str, Any]:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    classes = sorted(set(labelled.y.tolist()))
    names = [schema.names[i] for i in classes]
    # Each label counts once: its pixels vote by weight (a 200-pixel polygon is one example, like a point).
    precision, recall, f1, _ = precision_recall_fscore_support(
        labelled.y, predicted, labels=classes, sample_weight=labelled.weight, zero_division=0
    )
    confusion = confusion_matrix(labelled.y, predicted, labels=classes, sample_weight=labelled.weight)
    counts = [len(np.unique(labelled.groups[labelled.y == c])) for c in classes]
    return {
        **base,
        "method": method,
        "per_class": [
            {"name": n, "f1": float(f), "precision": float(p), "recall": float(r), "support": int(s)}
            for n, f, p, r, s in zip(names, f1, precision, recall, counts, strict=True)
        ],
        "confusion": np.rint(confusion).astype(int).tolist(),
        "mean_f1": float(np.mean(f1)),
        "accuracy": float(np.average(labelled.y == predicted, weights=labelled.weight)),
        "message": "",
    }


def score_head(weight: np.ndarray, bias: np.ndarray, labelled: Samples, schema: ClassSchema) -> dict[str, Any]:
    """Metrics of a head that was not fit on these labels (e.g. the starter model): the labels are a hold-out set."""
    weight, bias = pad_head(weight, bias, len(schema))
    classes = sorted(set(labelled.y.tolist()))
    base = {"classes": [schema.names[i] for i in classes], "n_labels": len(np.unique(labelled.groups))}
    base["n_samples"] = len(labelled.y)
    predicted = np.argmax(labelled.x @ weight.T + bias, axis=1)
    return _report(labelled, predicted, schema, "your labels as a hold-out set (this model never saw them)", base)


def evaluate(labelled: Samples, replay: Samples, schema: ClassSchema, folds: int = 5) -> dict[str, Any]:
    """Per-class F1 and confusion matrix by grouped k-fold CV: no label is ever in its own test fold.

    `support` is the number of labels of a class (not pixels). ENGINE-ADAPTER: metrics.py
    """
    from sklearn.model_selection import GroupKFold

    classes = sorted(set(labelled.y.tolist()))
    names = [schema.names[i] for i in classes]
    n_groups = len(np.unique(labelled.groups))
    base = {"classes": names, "n_labels": n_groups, "n_samples": int(len(labelled.y))}
    if n_groups < 2 or len(classes) < 2:
        return {
            **base,
            "method": "not enough labels",
            "per_class": [],
            "confusion": [],
            "mean_f1": None,
            "accuracy": None,
            "message": "metrics need labels of at least two classes (two labels or more)",
        }
    k = min(folds, n_groups)
    predicted = np.empty_like(labelled.y)
    for train, test in GroupKFold(n_splits=k).split(labelled.x, labelled.y, labelled.groups):
        x = np.concatenate([labelled.x[train], replay.x])
        y = np.concatenate([labelled.y[train], replay.y])
        w = np.concatenate([labelled.weight[train], replay.weight])
        weight, bias = _fit(x, y, w, len(schema))
        predicted[test] = np.argmax(labelled.x[test] @ weight.T + bias, axis=1)
    method = f"grouped {k}-fold cross-validation over labels (replay set in every training fold)"
    return _report(labelled, predicted, schema, method, base)


# -- tracking and orchestration --------------------------------------------------------------------------------
def log_checkpoint(settings: Settings, project_name: str, name: str, model_path: Path, metrics: dict[str, Any]) -> str:
    """Log a saved checkpoint as an MLflow run + registered model version; returns it. ENGINE-ADAPTER: tracking.py"""
    uri = settings.resolved_mlflow_uri
    if not _mlflow_reachable(uri):
        raise ConnectionError(f"MLflow is not reachable at {uri}")
    import mlflow

    from pearl_pipelines.ml.registry import MODEL_ARTIFACT_PATH, MODEL_FILE, ModelRegistry

    slug = "".join(c if c.isalnum() else "-" for c in project_name.lower()).strip("-") or "project"
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(f"pearl-review-{slug}")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(f"pearl-review-{slug}")
    run = client.create_run(experiment_id, run_name=name, tags={"pearl.checkpoint": name})
    for key, value in metrics.items():
        if isinstance(value, int | float):
            client.log_metric(run.info.run_id, key, float(value))
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(model_path, Path(tmp) / MODEL_FILE)
        client.log_artifact(run.info.run_id, str(Path(tmp) / MODEL_FILE), MODEL_ARTIFACT_PATH)
    client.set_terminated(run.info.run_id)
    version = ModelRegistry(uri).register(f"pearl-review-{slug}", run.info.run_id, tags={"checkpoint": name})
    return str(version.version)


def submit_label_run(project_id: int) -> None:
    """Tell Dagster that labels changed (direct run submission); absent trigger = nothing to do."""
    try:
        from pearl_pipelines.trigger import submit_label_run as submit  # type: ignore[import-not-found]
    except ImportError:  # ENGINE-ADAPTER: pearl_pipelines.trigger (the Dagster agent's module)
        log.info("pearl_pipelines.trigger not available: label run for project %s not submitted", project_id)
        return
    submit(project_id)
