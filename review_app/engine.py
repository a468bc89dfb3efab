"""The single place where the review app calls the ML engine (`pearl_pipelines.ml`) and the Dagster trigger.

Everything here is synchronous and runs in the job thread pool (jobs.py).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import httpx
import numpy as np

from pearl_pipelines.classes import ClassSchema
from pearl_pipelines.labels.store import LabelStore
from pearl_pipelines.ml import inference
from pearl_pipelines.ml.embeddings import EmbeddingCache, apply_head, sample_embeddings
from pearl_pipelines.ml.errors import RetrainError
from pearl_pipelines.ml.heads import pad_classes
from pearl_pipelines.ml.metrics import MetricsReport, compute_metrics
from pearl_pipelines.ml.models import LandcoverModel, load_model, save_model
from pearl_pipelines.ml.outputs import PredictionResult
from pearl_pipelines.ml.replay import ReplaySet
from pearl_pipelines.ml.retrain import UNLEARNED_BIAS, RetrainOptions, make_strategy, retrain
from pearl_pipelines.ml.samples import labels_to_samples
from pearl_pipelines.ml.versions import ModelVersion
from pearl_pipelines.settings import Settings

__all__ = ["RetrainError"]
log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]
MODEL_FILE = "model.pt"
REPLAY_FILE = "replay.npz"


# -- base model -------------------------------------------------------------------------------------------------
@dataclass
class BaseModel:
    """The frozen backbone + starter head, and the replay set it was trained with (if the registry has one)."""

    model: LandcoverModel
    replay: ReplaySet | None
    source: str

    def save(self, directory: Path) -> None:
        save_model(self.model, directory / MODEL_FILE, extra={"source": self.source})
        if self.replay is not None:
            self.replay.save(directory / REPLAY_FILE)

    @classmethod
    def load(cls, directory: Path) -> BaseModel:
        replay = ReplaySet.load(directory / REPLAY_FILE) if (directory / REPLAY_FILE).is_file() else None
        return cls(load_model(directory / MODEL_FILE), replay, str(directory))


def _mlflow_reachable(uri: str) -> bool:
    if not uri.startswith("http"):
        return True  # file or database store: local
    try:  # MLflow's client retries for minutes on a dead server: ask /health with a short timeout first
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


def local_model_dirs(ref: str, settings: Settings) -> list[Path]:
    """Folders under PEARL_HOME/models that may hold `ref` (model.pt + replay.npz) when MLflow is down:
    the starter models' local copies (`ml.starter.starter_dir`, default architecture first), then <name>/<alias>."""
    from pearl_pipelines.ml.starter import DEFAULT_ARCH, RECIPES, starter_dir, starter_model_name

    name, alias = _parse_models_uri(ref)
    recipes = sorted(RECIPES, key=lambda key: key[1] != DEFAULT_ARCH.get(key[0]))
    starters = [starter_dir(settings, schema, arch) for schema, arch in recipes if starter_model_name(schema) == name]
    return [*starters, settings.models_dir / name / alias, settings.models_dir / name]


def load_base_model(ref: str, settings: Settings) -> tuple[BaseModel | None, str]:
    """The project's base model from the MLflow registry, else from PEARL_HOME/models; (None, why) if neither."""
    if not ref.startswith("models:/"):
        path = Path(ref) if Path(ref).is_absolute() else settings.models_dir / ref
        folder = path if path.is_dir() else path.parent
        if (folder / MODEL_FILE).is_file() or path.is_file():
            model = load_model(path if path.is_file() else folder / MODEL_FILE)
            replay = ReplaySet.load(folder / REPLAY_FILE) if (folder / REPLAY_FILE).is_file() else None
            return BaseModel(model, replay, str(path)), ""
        return None, f"no model file at {path}"
    name, alias = _parse_models_uri(ref)
    uri = settings.resolved_mlflow_uri
    if _mlflow_reachable(uri):
        from pearl_pipelines.ml.registry import ModelRegistry

        try:
            folder = ModelRegistry(uri).download(name, alias, settings.models_dir / "mlflow" / name / alias)
            return load_base_model(str(folder / MODEL_FILE), settings)[0], ""
        except Exception as exc:  # missing alias, artifact store trouble: fall back to a local copy, say why
            log.warning("base model %s not loadable from MLflow at %s: %s", ref, uri, exc)
    for folder in local_model_dirs(ref, settings):
        if (folder / MODEL_FILE).is_file():
            return load_base_model(str(folder / MODEL_FILE), settings)
    return None, (
        f"no model yet: {ref} is not in MLflow at {uri} and there is no local copy under {settings.models_dir}. "
        "Train the starter model (`make demo` does), then reload this page"
    )


# -- versions (heads) --------------------------------------------------------------------------------------------
def root_version(base: BaseModel) -> ModelVersion:
    return ModelVersion.from_model(base.model)


def conform(version: ModelVersion, schema: ClassSchema) -> ModelVersion:
    """The version's head on the project's schema: classes added since get a row that is never predicted,
    renamed classes keep their index (schemas only grow; class i is pixel value i everywhere)."""
    pad = len(schema) - len(version.schema)
    if pad < 0:
        raise RetrainError(
            f"the project has {len(schema)} classes, fewer than model {version.id} ({len(version.schema)})"
        )
    weight, bias, extra = pad_classes(version.weight, version.bias, version.head_extra, len(schema), UNLEARNED_BIAS)
    return dataclasses.replace(version, schema=schema, weight=weight, bias=bias, head_extra=extra)


def save_version(version: ModelVersion, directory: Path, labels: gpd.GeoDataFrame | None) -> Path:
    return version.save(directory, labels=labels)


def load_version(directory: Path) -> ModelVersion:
    return ModelVersion.load(directory)


def version_model(version: ModelVersion, base: BaseModel) -> LandcoverModel:
    """A full model (backbone + this head) for a forward pass; the base model for a spatial head, which applies
    to cached embeddings only (`repredict` after the forward pass)."""
    return base.model if version.needs_xy else version.to_model(base.model)


# -- prediction --------------------------------------------------------------------------------------------------
def predict_aoi(
    model: LandcoverModel,
    imagery: Path,
    aoi_lonlat: Any,
    out_dir: Path,
    embeddings_dir: Path,
    *,
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


def repredict(embeddings_dir: Path, version: ModelVersion, schema: ClassSchema, out_dir: Path) -> PredictionResult:
    """Head-only re-prediction from the cached embeddings (no backbone): the live-retrain path."""
    head = conform(version, schema)
    cache = EmbeddingCache.open(embeddings_dir)
    return apply_head(cache, head.weight, head.bias, schema, out_dir, extra=head.head_extra)


def has_embeddings(embeddings_dir: Path) -> bool:
    return (Path(embeddings_dir) / "embeddings.json").is_file()


# -- retraining ---------------------------------------------------------------------------------------------------
def retrain_version(
    parent: ModelVersion,
    schema: ClassSchema,
    cache_dirs: Sequence[Path],
    labels: gpd.GeoDataFrame,
    replay: ReplaySet | None,
    *,
    evaluate: bool,
    strategy: str = "logistic_regression",
    replay_scale: float | None = None,
) -> ModelVersion:
    """A child version for the project's schema from all labels over the cached AOIs (+ the replay set).

    `evaluate=False` with a `replay_scale` is the live path (one fit); `evaluate=True` adds grouped
    cross-validation metrics, and without a `replay_scale` the share of replay is chosen by that CV.
    """
    caches = [EmbeddingCache.open(d) for d in cache_dirs]
    options = RetrainOptions(evaluate=evaluate, replay_scale=replay_scale)
    head = make_strategy(strategy)
    return retrain(conform(parent, schema), caches, labels, replay=replay, strategy=head, options=options)


def score_version(
    version: ModelVersion, schema: ClassSchema, cache_dirs: Sequence[Path], labels: gpd.GeoDataFrame
) -> MetricsReport | None:
    """Metrics of a version on labels it was not fit on (the starter model on the mapper's labels)."""
    head = conform(version, schema)
    predicted, truth = [], []
    for directory in cache_dirs:
        cache = EmbeddingCache.open(directory)
        try:
            samples = labels_to_samples(labels, crs=cache.crs, transform=cache.transform, shape=cache.shape)
        except RetrainError:  # no label on this AOI
            continue
        x = sample_embeddings(cache, samples.rows, samples.cols)
        predicted.append(np.argmax(head.logits(x, cache.xy(samples.rows, samples.cols)), axis=1))
        truth += [schema.index(n) for n in samples.class_names]
    if not predicted:
        return None
    return compute_metrics(
        np.array(truth), np.concatenate(predicted), schema.names, method="holdout:labels (never trained on)"
    )


# -- tracking and orchestration -----------------------------------------------------------------------------------
def log_checkpoint(
    settings: Settings, project_name: str, checkpoint_name: str, version: ModelVersion, labels: gpd.GeoDataFrame | None
) -> str:
    """Log a saved checkpoint to MLflow (run with lineage + checkpoint artifacts) and register it as a version of
    `pearl-review-<project>`; returns the registered version number."""
    uri = settings.resolved_mlflow_uri
    if not _mlflow_reachable(uri):
        raise ConnectionError(f"MLflow is not reachable at {uri}")
    from pearl_pipelines.ml.registry import ModelRegistry
    from pearl_pipelines.ml.tracking import CHECKPOINT_ARTIFACT_DIR, log_version

    slug = re.sub(r"[^a-z0-9]+", "-", project_name.lower()).strip("-") or "project"
    run_id = log_version(version, tracking_uri=uri, labels=labels, tags={"pearl.checkpoint": checkpoint_name})
    registered = ModelRegistry(uri).register(
        f"pearl-review-{slug}",
        run_id,
        artifact_path=CHECKPOINT_ARTIFACT_DIR,
        tags={"pearl.checkpoint": checkpoint_name, "pearl.version_id": version.id},
    )
    return str(registered.version)


def submit_label_run(project_id: int, settings: Settings, store: LabelStore) -> None:
    """Tell Dagster that labels changed (direct run submission). Not reachable: logged; the sensor catches up."""
    from pearl_pipelines.trigger import TriggerError, submit_label_run

    try:
        run_id = submit_label_run(project_id, settings=settings, store=store)
    except TriggerError as exc:
        log.info("label run for project %s not submitted: %s", project_id, exc)
        return
    log.info("label run %s submitted for project %s", run_id, project_id)
