"""Worker tasks: each parses its Pipes extras into its contract (`worker.contracts`), calls the ML engine, and
reports back through Dagster Pipes. `TASKS` (at the end) is the one list of tasks: name -> (contract, function).

| task           | asset            | what it does                                                          |
|----------------|------------------|-----------------------------------------------------------------------|
| probe          | (any)            | report Python, torch, CUDA device and PEARL_HOME (GPU pod smoke test) |
| train-starter  | starter_model    | train on the train regions, evaluate on holdout, register (`starter`) |
| embed          | embeddings       | backbone over each review AOI -> float16 embedding cache              |
| retrain        | landcover_model  | new head on cached embeddings under the label set, register version   |
| predict        | predictions      | classes + confidence COG per tile (head on cache, or full inference)  |
| predict-aoi    | (review app)     | the block in view, then the whole AOI -> COGs + its embedding cache   |

Per-tile results go back as custom messages ({"kind": "tile", ...}); the Dagster side turns them into
materializations of the tile partitions. Every task is one MLflow run tagged with the Dagster run id.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from dagster_pipes import PipesContext

from pearl_pipelines.layout import PREDICTION_META, Layout, cache_complete
from pearl_pipelines.settings import get_settings
from pearl_pipelines.stored_files import StoredFiles
from pearl_pipelines.worker.contracts import (
    AoiProgress,
    AoiSummary,
    EmbedInput,
    FirstBlockResult,
    PredictAoiInput,
    PredictInput,
    ProbeInput,
    RetrainInput,
    TaskInput,
    Tile,
    TileResult,
    TrainStarterInput,
)
from pearl_pipelines.worker.starter import f1_table

if TYPE_CHECKING:  # for annotations only: each task imports the engine modules it uses when it runs
    import geopandas as gpd
    from mlflow.entities.model_registry import ModelVersion as RegisteredVersion

    from pearl_pipelines.classes import ClassSchema
    from pearl_pipelines.ml.embeddings import EmbeddingCache
    from pearl_pipelines.ml.metrics import MetricsReport
    from pearl_pipelines.ml.models import LandcoverModel
    from pearl_pipelines.ml.replay import ReplaySet
    from pearl_pipelines.ml.versions import ModelVersion


def _path(rel: str | Path) -> Path:
    """Paths in the extras are relative to PEARL_HOME (absolute ones are taken as they are)."""
    return get_settings().home_abs / rel


@lru_cache(maxsize=4)
def _stored_files(url: str | None, home: Path) -> StoredFiles:
    return StoredFiles.open(url, home)


def _files() -> StoredFiles:
    """This pod's PEARL_HOME, mirrored to the store of PEARL_STORAGE_URL (unset: local files only, as shared)."""
    settings = get_settings()
    return _stored_files(settings.storage_url, settings.home_abs)


def _input(rel: str | Path, *, marker: str | None = None) -> Path:
    """`_path` of an input the Dagster run names by key, fetched from the object store when this pod lacks it."""
    return _files().local(_path(rel), marker=marker)


def _input_cache(rel: str | Path) -> Path:
    """An embedding cache's folder, downloaded from its chunks in the object store when this pod lacks it."""
    path, files = _path(rel), _files()
    if files.remote and not cache_complete(path):
        from pearl_pipelines.ml.chunked_cache import download_cache

        assert files.store is not None
        download_cache(files.store, files.key(path), path)
    return path


@contextlib.contextmanager
def _raster_in_place(rel: str | Path) -> Iterator[str | Path]:
    """A raster the task reads by windows (an AOI out of a project's imagery mosaic): the local file, or where this
    pod lacks it and the object store has it, the object itself, read in place by GDAL's range requests (/vsis3/):
    only the windows the task reads travel, never the whole mosaic."""
    import rasterio

    path, files = _path(rel), _files()
    if path.is_file() or not files.stored(path):
        yield path
        return
    assert files.store is not None
    with rasterio.Env(**files.store.gdal_env()):
        yield files.store.gdal_path(files.key(path))


def _publish(path: Path, *, last: tuple[str, ...] = ()) -> None:
    """Upload an output file or folder to its key (nothing without an object store)."""
    _files().publish(path, last=last)


def _publish_cache(path: Path) -> None:
    """Upload a complete embedding cache as chunks (nothing without an object store)."""
    files = _files()
    if files.remote and cache_complete(path):
        from pearl_pipelines.ml.chunked_cache import upload_cache

        assert files.store is not None
        upload_cache(path, files.store, files.key(path))


def _models_cache() -> Path:
    return get_settings().layout.path(Layout.registry_cache)


class Phases:
    """Wall time per phase of a task, reported as materialization metadata (where the seconds go)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self._last, 3)
        self._last = now

    def metadata(self) -> dict[str, Any]:
        return {"raw_value": self.seconds, "type": "json"}


def _md(text: str) -> dict[str, str]:
    return {"raw_value": text, "type": "md"}


def _path_meta(path: Path) -> dict[str, str]:
    return {"raw_value": str(path), "type": "path"}


# -- train-starter ---------------------------------------------------------------------------------------
def train_starter(pipes: PipesContext, inp: TrainStarterInput) -> None:
    from pearl_pipelines.worker.starter import train_and_register

    result = train_and_register(inp, tags=inp.run_tags("train-starter"), log=pipes.log.info)
    if _path(inp.report_dir).is_dir():
        _publish(_path(inp.report_dir))
    pipes.report_asset_materialization(metadata=result, data_version=str(result["model_version"]))


# -- embed -----------------------------------------------------------------------------------------------
def embed(pipes: PipesContext, inp: EmbedInput) -> None:
    """Embedding cache per review AOI (and the base model's predictions of it, as a by-product)."""
    from pearl_pipelines.geo.mosaic import GTI_SUFFIX, one_grid_mosaic
    from pearl_pipelines.ml.loop import predict_aoi
    from pearl_pipelines.ml.registry import load_registered
    from pearl_pipelines.ml.tracking import log_inference_run

    name, version = inp.model.name, inp.model.version
    model = load_registered(inp.mlflow_uri, name, version, _models_cache())
    started = time.perf_counter()
    pixels = 0
    with tempfile.TemporaryDirectory(prefix="pearl-embed-") as tmp:
        for aoi in inp.aois:
            mosaic = one_grid_mosaic([_input(p) for p in aoi.tile_paths], Path(tmp) / f"aoi-{aoi.aoi_id}{GTI_SUFFIX}")
            result = predict_aoi(
                model,
                mosaic,
                aoi.geometry,
                _path(aoi.predictions_dir),
                _path(aoi.cache_dir),
                model_id=f"{name}/{version}",
            )
            _publish_cache(_path(aoi.cache_dir))
            if _path(aoi.predictions_dir).is_dir():
                _publish(_path(aoi.predictions_dir))
            pixels += result.height * result.width
            pipes.report_custom_message(
                {
                    "kind": "aoi",
                    "aoi_id": aoi.aoi_id,
                    "cache_dir": aoi.cache_dir,
                    "shape": [result.height, result.width],
                    "seconds": round(result.seconds, 2),
                }
            )
            pipes.log.info(f"AOI {aoi.aoi_id}: {result.height}x{result.width} px embedded in {result.seconds:.1f} s")
    seconds = time.perf_counter() - started
    run_id = log_inference_run(
        inp.mlflow_uri,
        tags=inp.run_tags("embed"),
        params={"model": inp.model.uri, "aois": ",".join(str(a.aoi_id) for a in inp.aois)},
        metrics={"seconds": seconds, "pixels": pixels, "pixels_per_second": pixels / max(seconds, 1e-9)},
    )
    pipes.report_asset_materialization(
        metadata={
            "model": inp.model.uri,
            "aois_embedded": len(inp.aois),
            "pixels": pixels,
            "seconds": round(seconds, 2),
            "mlflow_run_id": run_id,
        }
    )


# -- retrain ---------------------------------------------------------------------------------------------
# Steps, in order: load the inputs, fit (or adopt the review app's version), score candidate and champion on the
# held-out labels, register, log the gate's scores, describe it for Dagster, re-predict the project's tiles.
@dataclass
class RetrainInputs:
    """What a retrain reads before it fits: the label split, the parent, the caches, the replay set."""

    schema: ClassSchema
    train_labels: gpd.GeoDataFrame
    holdout_labels: gpd.GeoDataFrame
    parent_model: LandcoverModel
    parent: ModelVersion
    caches: list[EmbeddingCache]
    replay: ReplaySet | None


@dataclass
class Candidate:
    """The version to register (`version`) and the fit the gate scores (`scored`: the same, unless adopted)."""

    version: ModelVersion
    scored: ModelVersion
    fit_seconds: float


@dataclass
class Gate:
    """Candidate and champion scored alike, on the same held-out labels (None: too few, or not comparable)."""

    candidate: MetricsReport | None
    champion: MetricsReport | None


def _load_retrain_inputs(inp: RetrainInput) -> RetrainInputs:
    import geopandas as gpd

    from pearl_pipelines.ml.embeddings import EmbeddingCache
    from pearl_pipelines.ml.loop import holdout_mask
    from pearl_pipelines.ml.registry import find_replay, load_registered, version_of

    uri, parent_ref, base = inp.mlflow_uri, inp.parent, inp.base_ref
    labels = gpd.read_parquet(_input(inp.label_set))
    parent_model = load_registered(uri, parent_ref.name, parent_ref.version, _models_cache())
    held_out = holdout_mask(labels, inp.holdout_fraction)
    return RetrainInputs(
        schema=inp.class_schema,
        train_labels=labels[~held_out],
        holdout_labels=labels[held_out],
        parent_model=parent_model,
        parent=version_of(parent_model, uri, parent_ref.name, parent_ref.version),
        caches=[EmbeddingCache.open(_input_cache(d)) for d in inp.caches],
        replay=find_replay(uri, base.name, base.version, _models_cache()),
    )


def _fit_candidate(inp: RetrainInput, data: RetrainInputs) -> Candidate:
    """A new head on the training labels, or the review app's version of this label set (`adopt`)."""
    from pearl_pipelines.ml.loop import retrain_version
    from pearl_pipelines.ml.registry import download_version

    def fit(**options: Any) -> ModelVersion:
        return retrain_version(
            data.parent, data.schema, data.caches, data.train_labels, data.replay, seed=inp.seed, **options
        )

    started = time.perf_counter()
    if inp.adopt is not None:
        with tempfile.TemporaryDirectory(prefix="pearl-adopt-") as tmp:
            version = download_version(inp.mlflow_uri, inp.adopt.name, inp.adopt.version, Path(tmp))
        # The gate scores the recipe on labels it did not see: the adopted version's recipe, refitted without the
        # held-out labels, is scored and thrown away (the registered version stays the app's).
        scored = fit(evaluate=False, strategy=version.strategy, replay_scale=version.replay_scale)
    else:
        # every AOI of the project: each label is sampled in the caches it falls in
        version = scored = fit(evaluate=True)
        # The label store's digest names the label set in Dagster; keep both on the version.
        version.info["label_store_digest"] = inp.label_set_digest
        version.info["n_holdout_labels"] = len(data.holdout_labels)
    return Candidate(version, scored, time.perf_counter() - started)


def _champion_gate(pipes: PipesContext, inp: RetrainInput, data: RetrainInputs, scored: ModelVersion) -> Gate:
    """Candidate and champion scored on the same held-out labels and the project's schema."""
    from pearl_pipelines.ml.errors import RetrainError
    from pearl_pipelines.ml.loop import evaluate
    from pearl_pipelines.ml.registry import load_registered
    from pearl_pipelines.ml.versions import ModelVersion

    candidate = evaluate(scored, data.schema, data.caches, data.holdout_labels)
    champion = inp.champion
    if champion is None or candidate is None:
        return Gate(candidate, None)
    champion_model = load_registered(inp.mlflow_uri, champion.name, champion.version, _models_cache())
    try:
        scores = evaluate(ModelVersion.from_model(champion_model), data.schema, data.caches, data.holdout_labels)
    except RetrainError as exc:  # e.g. another project's champion with more classes: no comparison, no promotion
        pipes.log.warning(f"champion {champion.uri} not comparable: {exc}")
        scores = None
    return Gate(candidate, scores)


def _register_candidate(inp: RetrainInput, data: RetrainInputs, version: ModelVersion) -> RegisteredVersion:
    """Register the new version with its lineage (or give the adopted one this run's aliases)."""
    from pearl_pipelines.ml.lineage import Lineage, ModelRegistry, register_version

    if inp.adopt is not None:
        registry = ModelRegistry(inp.mlflow_uri)
        registered = registry.model_version(inp.adopt.name, inp.adopt.version)
        for alias in inp.aliases:
            registry.set_alias(registered.name, alias, registered.version)
        return registered
    return register_version(
        inp.mlflow_uri,
        version,
        Lineage(
            project_id=inp.project_id,
            base_model=inp.base_ref.uri,
            parent_model=inp.parent.uri,
            label_store_digest=inp.label_set_digest,
            source="dagster",
            dagster_run_id=inp.dagster_run_id,
        ),
        labels=data.train_labels,
        run_tags=inp.run_tags("retrain"),
        aliases=inp.aliases,
        description=f"project {inp.project_id}: retrained on label set {inp.label_set_digest}",
    )


def _log_gate(uri: str, run_id: str, gate: Gate) -> None:
    """The gate's held-out scores on the registered version's run."""
    from pearl_pipelines.ml.lineage import ModelRegistry

    client = ModelRegistry(uri).client
    if gate.candidate is not None:
        client.log_metric(run_id, "holdout_macro_f1", gate.candidate.macro_f1)
    if gate.champion is not None:
        client.log_metric(run_id, "champion_holdout_macro_f1", gate.champion.macro_f1)


def _retrain_metadata(
    inp: RetrainInput, data: RetrainInputs, candidate: Candidate, gate: Gate, registered: RegisteredVersion
) -> dict[str, Any]:
    """The landcover_model materialization's metadata (the confusion matrix written to the report folder)."""
    from pearl_pipelines.ml.metrics import confusion_figure

    version = candidate.version
    metadata: dict[str, Any] = {
        "model_uri": f"models:/{registered.name}/{registered.version}",
        "model_name": registered.name,
        "model_version": int(registered.version),
        "version_id": version.id,
        "parent_model": inp.parent.uri,
        "parent_version_id": data.parent.id,
        "label_set_digest": inp.label_set_digest,
        "mlflow_run_id": str(registered.run_id),
        "classes": ", ".join(version.schema.names),
        "new_classes": ", ".join(version.new_classes) or "none",
        "adopted_from_review_app": inp.adopt is not None,
        "n_labels_train": len(data.train_labels),
        "n_labels_holdout": len(data.holdout_labels),
        "n_user_samples": int(version.info.get("n_user_samples", 0)),
        "fit_seconds": round(candidate.fit_seconds, 3),
        "cv_macro_f1": version.metrics.macro_f1 if version.metrics else None,
        "holdout_macro_f1": gate.candidate.macro_f1 if gate.candidate else None,
        "champion_holdout_macro_f1": gate.champion.macro_f1 if gate.champion else None,
        "champion_model": inp.champion.uri if inp.champion else None,
    }
    if version.metrics is not None:
        confusion_path = _path(inp.report_dir) / f"confusion-v{registered.version}.png"
        confusion_path.parent.mkdir(parents=True, exist_ok=True)
        confusion_figure(version.metrics, confusion_path)
        _publish(confusion_path)
        metadata["cv_f1_per_class"] = _md(f1_table(version.metrics))
        metadata["confusion_matrix"] = _md(f"![confusion matrix]({confusion_path})")
        metadata["confusion_matrix_path"] = _path_meta(confusion_path)
    return metadata


def _repredict_tiles(
    pipes: PipesContext, inp: RetrainInput, data: RetrainInputs, version: ModelVersion, registered: RegisteredVersion
) -> dict[str, Any]:
    """Re-predict the project's tiles under review right away: the head over the cached embeddings is sub-second,
    and doing it here saves the predictions step a second worker start-up. That step then materializes these
    files (and predicts anything still missing). Returns metadata (none when there was nothing to predict)."""
    from pearl_pipelines.layout import model_slug
    from pearl_pipelines.ml.tracking import log_inference_run

    layout = get_settings().layout
    slug = model_slug(registered.name, registered.version)
    tiles = [
        t.model_copy(update={"out_dir": str(layout.path(Layout.tile_prediction(slug, t.key)))})
        for t in inp.predict_tiles
    ]
    if not tiles:
        return {}
    model_id = f"models:/{registered.name}/{registered.version}"
    started = time.perf_counter()
    counts, invalid = predict_tile_list(pipes, version.to_model(data.parent_model), model_id, tiles, version=version)
    seconds = time.perf_counter() - started
    log_inference_run(
        inp.mlflow_uri,
        tags=inp.run_tags("predict-head"),
        params={"model": model_id, "tiles": len(tiles), "mode": json.dumps(counts)},
        metrics={"seconds": seconds, "tiles": len(tiles), "invalid": len(invalid)},
    )
    return {"tiles_predicted_head_only": counts["head"], "predict_seconds": round(seconds, 3)}


def retrain(pipes: PipesContext, inp: RetrainInput) -> None:
    """A new head on the project's cached embeddings; registered in MLflow with its lineage."""
    phases = Phases()
    import pearl_pipelines.ml.loop  # noqa: F401  (the engine: its import time is a phase of its own)

    phases.lap("imports")
    data = _load_retrain_inputs(inp)
    phases.lap("load")
    candidate = _fit_candidate(inp, data)
    phases.lap("fit")
    gate = _champion_gate(pipes, inp, data, candidate.scored)
    phases.lap("evaluate")
    registered = _register_candidate(inp, data, candidate.version)
    _log_gate(inp.mlflow_uri, str(registered.run_id), gate)
    phases.lap("mlflow")
    holdout_f1 = f"{gate.candidate.macro_f1:.3f}" if gate.candidate else "n/a (too few labels)"
    pipes.log.info(
        f"models:/{registered.name}/{registered.version}: "
        + ("adopted from the review app (same label set), " if inp.adopt else "")
        + f"head fitted on {len(data.train_labels)} labels in {candidate.fit_seconds:.2f} s, "
        + f"held-out macro F1 {holdout_f1}"
    )
    metadata = _retrain_metadata(inp, data, candidate, gate, registered)
    metadata.update(_repredict_tiles(pipes, inp, data, candidate.version, registered))
    phases.lap("predict")
    metadata["worker_seconds"] = phases.metadata()
    pipes.report_asset_materialization(
        metadata={k: v for k, v in metadata.items() if v is not None}, data_version=candidate.version.id
    )


# -- predict ---------------------------------------------------------------------------------------------
def predict_tile_list(
    pipes: PipesContext, model: Any, model_id: str, tiles: list[Tile], version: ModelVersion | None = None
) -> tuple[dict[str, int], list[str]]:
    """Predict tiles (head over an AOI cache where given, else full inference over a mosaic of the tiles,
    so tile edges see their neighbours); one custom message per tile. Returns (counts per mode, invalid COGs).

    `version`: the model's head as a ModelVersion when the caller has it (else read from the model)."""
    from pearl_pipelines.geo.cog import validate_cog
    from pearl_pipelines.geo.grid import tile_geometry
    from pearl_pipelines.geo.maps import class_counts
    from pearl_pipelines.geo.mosaic import GTI_SUFFIX, one_grid_mosaic
    from pearl_pipelines.layout import write_prediction_meta
    from pearl_pipelines.ml.embeddings import EmbeddingCache
    from pearl_pipelines.ml.inference import predict as full_predict
    from pearl_pipelines.ml.loop import repredict
    from pearl_pipelines.ml.versions import ModelVersion

    schema = model.spec.schema
    head = version if version is not None else ModelVersion.from_model(model)
    invalid: list[str] = []
    counts = {"head": 0, "full": 0}
    caches: dict[str, EmbeddingCache] = {}
    with tempfile.TemporaryDirectory(prefix="pearl-predict-") as tmp:
        need_full = [t for t in tiles if not t.cache_dir]
        mosaic = (
            one_grid_mosaic([_input(t.tile_path) for t in need_full], Path(tmp) / f"tiles{GTI_SUFFIX}")
            if need_full
            else None
        )
        for i, tile in enumerate(tiles):
            tile_started = time.perf_counter()
            if tile.out_dir is None:
                raise ValueError(f"tile {tile.key}: no out_dir to write its prediction to")
            out_dir = _path(tile.out_dir)
            mode = "full"
            result = None
            if tile.cache_dir:
                cache = caches.get(tile.cache_dir) or EmbeddingCache.open(_input_cache(tile.cache_dir))
                caches[tile.cache_dir] = cache
                window = cache.lonlat_window(tile_geometry(tile.key))
                if window is not None:
                    result = repredict(cache, head, schema, out_dir, window=window)
                    mode = "head"
            if result is None:
                imagery = mosaic
                if tile.cache_dir:  # a cache was given but does not cover the tile: not in the mosaic either
                    imagery = one_grid_mosaic([_input(tile.tile_path)], Path(tmp) / f"tile-{i}{GTI_SUFFIX}")
                result = full_predict(
                    model, imagery, out_dir, aoi=tile_geometry(tile.key), aoi_crs="EPSG:4326", model_id=model_id
                )
            counts[mode] += 1
            write_prediction_meta(out_dir, model=model_id, mode=mode, tile_key=tile.key)
            _publish(out_dir, last=(PREDICTION_META,))  # the completion marker last (layout.prediction_is_fresh)
            ok, errors, _ = validate_cog(result.classes_path)
            if not ok:
                invalid.append(f"{tile.key}: {'; '.join(errors)}")
            message = TileResult(
                tile_key=tile.key,
                classes=str(result.classes_path),
                confidence=str(result.confidence_path),
                mode=mode,
                seconds=round(time.perf_counter() - tile_started, 3),
                class_pixels=class_counts(result.classes_path).pixels,
                width=result.width,
                height=result.height,
            )
            pipes.report_custom_message(message.model_dump(mode="json"))
    return counts, invalid


def predict(pipes: PipesContext, inp: PredictInput) -> None:
    """Classes + confidence COGs per tile with a registered model version; one MLflow inference run."""
    from pearl_pipelines.ml.registry import load_registered
    from pearl_pipelines.ml.tracking import log_inference_run

    model = load_registered(inp.mlflow_uri, inp.model.name, inp.model.version, _models_cache())
    tiles = inp.tiles
    started = time.perf_counter()
    counts, invalid = predict_tile_list(pipes, model, inp.model.uri, tiles)
    seconds = time.perf_counter() - started
    run_id = log_inference_run(
        inp.mlflow_uri,
        tags=inp.run_tags("predict"),
        params={"model": inp.model.uri, "tiles": len(tiles), "mode": json.dumps(counts)},
        metrics={"seconds": seconds, "tiles": len(tiles), "tiles_per_minute": 60 * len(tiles) / max(seconds, 1e-9)},
    )
    pipes.report_custom_message({"kind": "summary", "mlflow_run_id": run_id, "seconds": seconds, **counts})
    if not inp.report_check:  # e.g. the map step validates its mosaic instead
        return
    pipes.report_asset_check(
        asset_key="predictions",
        check_name="predictions_cog_valid",
        passed=not invalid,
        severity="ERROR",
        metadata={"tiles_checked": len(tiles), "invalid": "; ".join(invalid) or "none", "mlflow_run_id": run_id},
    )


# -- predict-aoi -----------------------------------------------------------------------------------------
def predict_aoi(pipes: PipesContext, inp: PredictAoiInput) -> None:
    """The review app's inference over a new AOI, run where the compute runs (see worker/session.py).

    The model is the project's base model folder (model.pt) plus the head version folder it maps with;
    a spatial head applies to embeddings only, so the base model runs and the app re-predicts from the cache.
    With `first_out_dir`, the AOI's first block (ml/preview.py: one window near the mapper's view) is predicted
    and announced (`first_block` message) before the whole AOI, so the map shows something within seconds.
    """
    from pearl_pipelines.ml import loop
    from pearl_pipelines.ml.base_model import BaseModel
    from pearl_pipelines.ml.models import load_model
    from pearl_pipelines.ml.versions import ModelVersion

    base = BaseModel(load_model(_path(inp.base_model)), None, inp.base_model)
    version = ModelVersion.load(_path(inp.version_dir)) if inp.version_dir else base.root_version()
    model = loop.version_model(version, base)
    last, interval = 0.0, inp.progress_interval_s

    def reporter(stage: Literal["first_block", "aoi"]) -> Callable[[int, int], None]:
        def progress(done: int, total: int) -> None:
            nonlocal last
            now = time.perf_counter()
            if done >= total or now - last >= interval:
                last = now
                message = AoiProgress(done=done, total=total, stage=stage)
                pipes.report_custom_message(message.model_dump(mode="json"))

        return progress

    with _raster_in_place(inp.imagery) as imagery:
        _predict_aoi_from(pipes, inp, model, imagery, reporter)


def _predict_aoi_from(
    pipes: PipesContext,
    inp: PredictAoiInput,
    model: Any,
    imagery: str | Path,
    reporter: Callable[[Literal["first_block", "aoi"]], Callable[[int, int], None]],
) -> None:
    import torch

    from pearl_pipelines.ml import loop
    from pearl_pipelines.ml.preview import LONLAT, predict_first_block

    if inp.first_out_dir is not None:
        first = predict_first_block(
            model,
            imagery,
            inp.aoi,
            _path(inp.first_out_dir),
            aoi_crs=LONLAT,
            view=inp.view,
            progress=reporter("first_block"),
        )
        if first is not None:
            block = FirstBlockResult(
                out_dir=inp.first_out_dir,
                seconds=round(first.seconds, 3),
                windows=first.windows,
                height=first.height,
                width=first.width,
            )
            pipes.report_custom_message(block.model_dump(mode="json"))
    result = loop.predict_aoi(
        model,
        imagery,
        inp.aoi,
        _path(inp.out_dir),
        _path(inp.embeddings_dir),
        model_id=inp.model_id,
        progress=reporter("aoi"),
    )
    summary = AoiSummary(
        pid=os.getpid(),
        forked_from_warm_server=os.environ.get("PEARL_WORKER_FORKED") == "1",
        torch_threads=torch.get_num_threads(),
        seconds=round(result.seconds, 3),
        windows=result.windows,
        height=result.height,
        width=result.width,
    )
    pipes.report_custom_message(summary.model_dump(mode="json"))


# -- probe ---------------------------------------------------------------------------------------------
def probe(pipes: PipesContext, inp: ProbeInput) -> None:
    """What the worker sees: Python, torch, the accelerator, PEARL_HOME (a GPU pod's smoke test)."""
    import platform

    import torch

    home = get_settings().home_abs
    writable = home.is_dir() and os.access(home, os.W_OK)
    cuda = torch.cuda.is_available()
    pipes.report_asset_materialization(
        metadata={
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": cuda,
            "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "pearl_home": str(home),
            "pearl_home_writable": bool(writable),
            "echo": inp.echo,
            "forked_from_warm_server": os.environ.get("PEARL_WORKER_FORKED") == "1",
        }
    )


# -- the one list of tasks ---------------------------------------------------------------------------------
In = TypeVar("In", bound=TaskInput)


@dataclass(frozen=True)
class Task(Generic[In]):
    """A worker task: the contract its extras must meet, and the function that runs it."""

    contract: type[In]
    function: Callable[[PipesContext, In], None]

    def parse(self, extras: Any) -> In:
        """The task's input; pydantic's ValidationError (naming each bad field) when the extras do not meet it."""
        return self.contract.model_validate(extras)

    def __call__(self, pipes: PipesContext) -> None:
        self.function(pipes, self.parse(pipes.extras))


TASKS: dict[str, Task[Any]] = {
    "probe": Task(ProbeInput, probe),
    "train-starter": Task(TrainStarterInput, train_starter),
    "embed": Task(EmbedInput, embed),
    "retrain": Task(RetrainInput, retrain),
    "predict": Task(PredictInput, predict),
    "predict-aoi": Task(PredictAoiInput, predict_aoi),
}
