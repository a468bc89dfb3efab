"""Worker tasks: each reads its Pipes extras, calls the ML engine, and reports back through Dagster Pipes.

| task           | asset            | what it does                                                          |
|----------------|------------------|-----------------------------------------------------------------------|
| probe          | (any)            | report Python, torch, CUDA device and PEARL_HOME (GPU pod smoke test) |
| train-starter  | starter_model    | train on the train regions, evaluate on holdout, register (`starter`) |
| embed          | embeddings       | backbone over each review AOI -> float16 embedding cache              |
| retrain        | landcover_model  | new head on cached embeddings under the label set, register version   |
| predict        | predictions      | classes + confidence COG per tile (head on cache, or full inference)  |
| predict-aoi    | (review app)     | full forward pass over one review AOI -> COGs + its embedding cache   |

Per-tile results go back as custom messages ({"kind": "tile", ...}); the Dagster side turns them into
materializations of the tile partitions. Every task is one MLflow run tagged with the Dagster run id.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster_pipes import PipesContext

from pearl_pipelines.layout import Layout
from pearl_pipelines.settings import get_settings

if TYPE_CHECKING:  # for annotations only: each task imports the engine modules it uses when it runs
    from pearl_pipelines.ml.versions import ModelVersion

RUN_ID_TAG = "dagster_run_id"


def _path(rel: str | Path) -> Path:
    """Paths in the extras are relative to PEARL_HOME (absolute ones are taken as they are)."""
    return get_settings().home_abs / rel


def _models_cache() -> Path:
    return get_settings().layout.path(Layout.registry_cache)


def _run_tags(extras: Mapping[str, Any], task: str) -> dict[str, str]:
    return {
        RUN_ID_TAG: str(extras.get("dagster_run_id", "")),
        "dagster_asset": str(extras.get("asset", "")),
        "pearl.task": task,
        **{k: str(v) for k, v in (extras.get("tags") or {}).items()},
    }


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


def _f1_table(report: Any) -> str:
    rows = ["| class | F1 | precision | recall | support |", "|---|---|---|---|---|"]
    for i, name in enumerate(report.class_names):
        if report.support[i]:
            rows.append(
                f"| {name} | {report.f1[i]:.3f} | {report.precision[i]:.3f} | {report.recall[i]:.3f} | "
                f"{report.support[i]} |"
            )
    return "\n".join(rows)


# -- train-starter ---------------------------------------------------------------------------------------
def train_starter(pipes: PipesContext) -> None:
    extras = pipes.extras
    from pearl_pipelines.worker.starter import train_and_register

    result = train_and_register(extras, tags=_run_tags(extras, "train-starter"), log=pipes.log.info)
    pipes.report_asset_materialization(metadata=result, data_version=str(result["model_version"]))


# -- embed -----------------------------------------------------------------------------------------------
def embed(pipes: PipesContext) -> None:
    """Embedding cache per review AOI (and the base model's predictions of it, as a by-product)."""
    from pearl_pipelines.geo.mosaic import GTI_SUFFIX, one_grid_mosaic
    from pearl_pipelines.ml.loop import predict_aoi
    from pearl_pipelines.ml.registry import load_registered
    from pearl_pipelines.ml.tracking import log_inference_run

    extras = pipes.extras
    name, version = extras["model"]["name"], extras["model"]["version"]
    model = load_registered(extras["mlflow_uri"], name, version, _models_cache())
    started = time.perf_counter()
    pixels = 0
    with tempfile.TemporaryDirectory(prefix="pearl-embed-") as tmp:
        for aoi in extras["aois"]:
            mosaic = one_grid_mosaic(
                [_path(p) for p in aoi["tile_paths"]], Path(tmp) / f"aoi-{aoi['aoi_id']}{GTI_SUFFIX}"
            )
            result = predict_aoi(
                model,
                mosaic,
                aoi["geometry"],
                _path(aoi["predictions_dir"]),
                _path(aoi["cache_dir"]),
                model_id=f"{name}/{version}",
            )
            pixels += result.height * result.width
            pipes.report_custom_message(
                {
                    "kind": "aoi",
                    "aoi_id": aoi["aoi_id"],
                    "cache_dir": aoi["cache_dir"],
                    "shape": [result.height, result.width],
                    "seconds": round(result.seconds, 2),
                }
            )
            pipes.log.info(f"AOI {aoi['aoi_id']}: {result.height}x{result.width} px embedded in {result.seconds:.1f} s")
    seconds = time.perf_counter() - started
    run_id = log_inference_run(
        extras["mlflow_uri"],
        tags=_run_tags(extras, "embed"),
        params={"model": f"models:/{name}/{version}", "aois": ",".join(str(a["aoi_id"]) for a in extras["aois"])},
        metrics={"seconds": seconds, "pixels": pixels, "pixels_per_second": pixels / max(seconds, 1e-9)},
    )
    pipes.report_asset_materialization(
        metadata={
            "model": f"models:/{name}/{version}",
            "aois_embedded": len(extras["aois"]),
            "pixels": pixels,
            "seconds": round(seconds, 2),
            "mlflow_run_id": run_id,
        }
    )


# -- retrain ---------------------------------------------------------------------------------------------
def retrain(pipes: PipesContext) -> None:
    """A new head on the project's cached embeddings; registered in MLflow with its lineage."""
    phases = Phases()
    import geopandas as gpd

    from pearl_pipelines.classes import ClassSchema
    from pearl_pipelines.layout import model_slug
    from pearl_pipelines.ml.embeddings import EmbeddingCache
    from pearl_pipelines.ml.errors import RetrainError
    from pearl_pipelines.ml.loop import evaluate, holdout_mask, retrain_version
    from pearl_pipelines.ml.metrics import confusion_figure
    from pearl_pipelines.ml.refs import TAG_LABEL_STORE, TAG_SOURCE
    from pearl_pipelines.ml.registry import (
        ModelRegistry,
        download_version,
        find_replay,
        load_registered,
        register_head,
        version_of,
    )
    from pearl_pipelines.ml.tracking import log_inference_run
    from pearl_pipelines.ml.versions import ModelVersion

    phases.lap("imports")
    extras = pipes.extras
    uri = extras["mlflow_uri"]
    registry = ModelRegistry(uri)
    labels = gpd.read_parquet(_path(extras["label_set"]))
    schema = ClassSchema.model_validate(extras["schema"])
    parent_ref = extras["parent"]
    parent_model = load_registered(uri, parent_ref["name"], parent_ref["version"], _models_cache())
    parent = version_of(parent_model, uri, parent_ref["name"], parent_ref["version"])
    caches = [EmbeddingCache.open(_path(d)) for d in extras["caches"]]
    base = extras.get("base") or parent_ref
    replay = find_replay(uri, base["name"], base["version"], _models_cache())
    held_out = holdout_mask(labels, float(extras.get("holdout_fraction", 0.2)))
    train_labels, holdout_labels = labels[~held_out], labels[held_out]
    phases.lap("load")
    started = time.perf_counter()
    adopt = extras.get("adopt")  # the review app registered a version for this label set already: no second fit
    fit = functools.partial(
        retrain_version, parent, schema, caches, train_labels, replay, seed=int(extras.get("seed", 0))
    )
    if adopt:
        with tempfile.TemporaryDirectory(prefix="pearl-adopt-") as tmp:
            version = download_version(uri, adopt["name"], adopt["version"], Path(tmp))
        # The gate scores the recipe on labels it did not see: the adopted version's recipe, refitted without the
        # held-out labels, is scored and thrown away (the registered version stays the app's).
        scored = fit(evaluate=False, strategy=version.strategy, replay_scale=version.info.get("replay_scale"))
    else:
        # every AOI of the project: each label is sampled in the caches it falls in
        version = scored = fit(evaluate=True)
        # The label store's digest names the label set in Dagster; keep both on the version.
        version.info["label_store_digest"] = extras["label_set_digest"]
        version.info["n_holdout_labels"] = int(held_out.sum())
    fit_seconds = time.perf_counter() - started
    phases.lap("fit")

    # The champion gate: candidate and champion scored alike, on the same held-out labels and the project's schema.
    candidate_holdout = evaluate(scored, schema, caches, holdout_labels)
    champion_holdout = None
    champion = extras.get("champion")
    if champion and candidate_holdout is not None:
        champion_model = load_registered(uri, champion["name"], champion["version"], _models_cache())
        try:
            champion_holdout = evaluate(ModelVersion.from_model(champion_model), schema, caches, holdout_labels)
        except RetrainError as exc:  # e.g. another project's champion with more classes: no comparison, no promotion
            pipes.log.warning(f"champion models:/{champion['name']}/{champion['version']} not comparable: {exc}")

    phases.lap("evaluate")
    tags = _run_tags(extras, "retrain")
    if adopt:
        registered = registry.client.get_model_version(adopt["name"], str(adopt["version"]))
        for alias in extras.get("aliases", []):
            registry.set_alias(registered.name, alias, registered.version)
    else:
        registered = register_head(
            uri,
            int(extras["project_id"]),
            version,
            base_uri=f"models:/{base['name']}/{base['version']}",
            labels=train_labels,
            tags={
                "pearl.parent_model": f"models:/{parent_ref['name']}/{parent_ref['version']}",
                TAG_LABEL_STORE: extras["label_set_digest"],
                TAG_SOURCE: "dagster",
                RUN_ID_TAG: tags[RUN_ID_TAG],
            },
            run_tags=tags,
            aliases=extras.get("aliases", []),
            description=f"project {extras['project_id']}: retrained on label set {extras['label_set_digest']}",
        )
    run_id = str(registered.run_id)
    if candidate_holdout is not None:
        registry.client.log_metric(run_id, "holdout_macro_f1", candidate_holdout.macro_f1)
    if champion_holdout is not None:
        registry.client.log_metric(run_id, "champion_holdout_macro_f1", champion_holdout.macro_f1)
    phases.lap("mlflow")
    holdout_f1 = f"{candidate_holdout.macro_f1:.3f}" if candidate_holdout else "n/a (too few labels)"
    pipes.log.info(
        f"models:/{registered.name}/{registered.version}: "
        + ("adopted from the review app (same label set), " if adopt else "")
        + f"head fitted on {len(train_labels)} labels in {fit_seconds:.2f} s, held-out macro F1 {holdout_f1}"
    )
    confusion_path = None
    if version.metrics is not None:
        confusion_path = _path(extras["report_dir"]) / f"confusion-v{registered.version}.png"
        confusion_path.parent.mkdir(parents=True, exist_ok=True)
        confusion_figure(version.metrics, confusion_path)

    metadata: dict[str, Any] = {
        "model_uri": f"models:/{registered.name}/{registered.version}",
        "model_name": registered.name,
        "model_version": int(registered.version),
        "version_id": version.id,
        "parent_model": f"models:/{parent_ref['name']}/{parent_ref['version']}",
        "parent_version_id": parent.id,
        "label_set_digest": extras["label_set_digest"],
        "mlflow_run_id": run_id,
        "classes": ", ".join(version.schema.names),
        "new_classes": ", ".join(version.info.get("new_classes", [])) or "none",
        "adopted_from_review_app": bool(adopt),
        "n_labels_train": len(train_labels),
        "n_labels_holdout": int(held_out.sum()),
        "n_user_samples": int(version.info.get("n_user_samples", 0)),
        "fit_seconds": round(fit_seconds, 3),
        "cv_macro_f1": version.metrics.macro_f1 if version.metrics else None,
        "holdout_macro_f1": candidate_holdout.macro_f1 if candidate_holdout else None,
        "champion_holdout_macro_f1": champion_holdout.macro_f1 if champion_holdout else None,
        "champion_model": f"models:/{champion['name']}/{champion['version']}" if champion else None,
    }
    if version.metrics is not None:
        metadata["cv_f1_per_class"] = _md(_f1_table(version.metrics))
    if confusion_path is not None:
        metadata["confusion_matrix"] = _md(f"![confusion matrix]({confusion_path})")
        metadata["confusion_matrix_path"] = _path_meta(confusion_path)
    # Re-predict the project's tiles under review right away: the head over the cached embeddings is
    # sub-second, and doing it here saves the predictions step a second worker start-up. That step then
    # materializes these files (and predicts anything still missing).
    tiles = [
        {
            **t,
            "out_dir": str(
                get_settings().layout.path(
                    Layout.tile_prediction(model_slug(registered.name, registered.version), t["key"])
                )
            ),
        }
        for t in extras.get("predict_tiles", [])
    ]
    if tiles:
        model_id = f"models:/{registered.name}/{registered.version}"
        started = time.perf_counter()
        counts, invalid = predict_tile_list(pipes, version.to_model(parent_model), model_id, tiles, version=version)
        seconds = time.perf_counter() - started
        log_inference_run(
            uri,
            tags=_run_tags(extras, "predict-head"),
            params={"model": model_id, "tiles": len(tiles), "mode": json.dumps(counts)},
            metrics={"seconds": seconds, "tiles": len(tiles), "invalid": len(invalid)},
        )
        metadata["tiles_predicted_head_only"] = counts["head"]
        metadata["predict_seconds"] = round(seconds, 3)
    phases.lap("predict")
    metadata["worker_seconds"] = phases.metadata()
    pipes.report_asset_materialization(
        metadata={k: v for k, v in metadata.items() if v is not None}, data_version=version.id
    )


# -- predict ---------------------------------------------------------------------------------------------
def predict_tile_list(
    pipes: PipesContext, model: Any, model_id: str, tiles: list[dict[str, Any]], version: ModelVersion | None = None
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
        need_full = [t for t in tiles if not t.get("cache_dir")]
        mosaic = (
            one_grid_mosaic([_path(t["tile_path"]) for t in need_full], Path(tmp) / f"tiles{GTI_SUFFIX}")
            if need_full
            else None
        )
        for i, tile in enumerate(tiles):
            tile_started = time.perf_counter()
            out_dir = _path(tile["out_dir"])
            mode = "full"
            result = None
            if tile.get("cache_dir"):
                cache = caches.get(tile["cache_dir"]) or EmbeddingCache.open(_path(tile["cache_dir"]))
                caches[tile["cache_dir"]] = cache
                window = cache.lonlat_window(tile_geometry(tile["key"]))
                if window is not None:
                    result = repredict(cache, head, schema, out_dir, window=window)
                    mode = "head"
            if result is None:
                imagery = mosaic
                if tile.get("cache_dir"):  # a cache was given but does not cover the tile: not in the mosaic either
                    imagery = one_grid_mosaic([_path(tile["tile_path"])], Path(tmp) / f"tile-{i}{GTI_SUFFIX}")
                result = full_predict(
                    model, imagery, out_dir, aoi=tile_geometry(tile["key"]), aoi_crs="EPSG:4326", model_id=model_id
                )
            counts[mode] += 1
            write_prediction_meta(out_dir, model=model_id, mode=mode, tile_key=tile["key"])
            ok, errors, _ = validate_cog(result.classes_path)
            if not ok:
                invalid.append(f"{tile['key']}: {'; '.join(errors)}")
            pixels = class_counts(result.classes_path).pixels
            pipes.report_custom_message(
                {
                    "kind": "tile",
                    "tile_key": tile["key"],
                    "classes": str(result.classes_path),
                    "confidence": str(result.confidence_path),
                    "mode": mode,
                    "seconds": round(time.perf_counter() - tile_started, 3),
                    "class_pixels": pixels,
                    "width": result.width,
                    "height": result.height,
                }
            )
    return counts, invalid


def predict(pipes: PipesContext) -> None:
    """Classes + confidence COGs per tile with a registered model version; one MLflow inference run."""
    from pearl_pipelines.ml.registry import load_registered
    from pearl_pipelines.ml.tracking import log_inference_run

    extras = pipes.extras
    name, version = extras["model"]["name"], extras["model"]["version"]
    model = load_registered(extras["mlflow_uri"], name, version, _models_cache())
    tiles = list(extras["tiles"])
    started = time.perf_counter()
    counts, invalid = predict_tile_list(pipes, model, f"models:/{name}/{version}", tiles)
    seconds = time.perf_counter() - started
    run_id = log_inference_run(
        extras["mlflow_uri"],
        tags=_run_tags(extras, "predict"),
        params={"model": f"models:/{name}/{version}", "tiles": len(tiles), "mode": json.dumps(counts)},
        metrics={"seconds": seconds, "tiles": len(tiles), "tiles_per_minute": 60 * len(tiles) / max(seconds, 1e-9)},
    )
    pipes.report_custom_message({"kind": "summary", "mlflow_run_id": run_id, "seconds": seconds, **counts})
    if not extras.get("report_check", True):  # e.g. the map step validates its mosaic instead
        return
    pipes.report_asset_check(
        asset_key="predictions",
        check_name="predictions_cog_valid",
        passed=not invalid,
        severity="ERROR",
        metadata={"tiles_checked": len(tiles), "invalid": "; ".join(invalid) or "none", "mlflow_run_id": run_id},
    )


# -- predict-aoi -----------------------------------------------------------------------------------------
PROGRESS_INTERVAL_S = 0.2  # at most this often a progress message (plus the last window)


def predict_aoi(pipes: PipesContext) -> None:
    """The review app's inference over a new AOI, run where the compute runs (see worker/session.py).

    The model is the project's base model folder (model.pt) plus the head version folder it maps with;
    a spatial head applies to embeddings only, so the base model runs and the app re-predicts from the cache.
    """
    import torch

    from pearl_pipelines.ml import loop
    from pearl_pipelines.ml.base_model import BaseModel
    from pearl_pipelines.ml.models import load_model
    from pearl_pipelines.ml.versions import ModelVersion

    extras = pipes.extras
    base = BaseModel(load_model(_path(extras["base_model"])), None, extras["base_model"])
    version = ModelVersion.load(_path(extras["version_dir"])) if extras.get("version_dir") else base.root_version()
    model = loop.version_model(version, base)
    last, interval = 0.0, float(extras.get("progress_interval_s", PROGRESS_INTERVAL_S))

    def progress(done: int, total: int) -> None:
        nonlocal last
        now = time.perf_counter()
        if done >= total or now - last >= interval:
            last = now
            pipes.report_custom_message({"kind": "progress", "done": done, "total": total})

    result = loop.predict_aoi(
        model,
        _path(extras["imagery"]),
        extras["aoi"],
        _path(extras["out_dir"]),
        _path(extras["embeddings_dir"]),
        model_id=extras.get("model_id"),
        progress=progress,
    )
    pipes.report_custom_message(
        {
            "kind": "summary",
            "pid": os.getpid(),
            "forked_from_warm_server": os.environ.get("PEARL_WORKER_FORKED") == "1",
            "torch_threads": torch.get_num_threads(),
            "seconds": round(result.seconds, 3),
            "windows": result.windows,
            "height": result.height,
            "width": result.width,
        }
    )


# -- probe ---------------------------------------------------------------------------------------------
def probe(pipes: PipesContext) -> None:
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
            "echo": str(pipes.extras.get("echo", "")),
            "forked_from_warm_server": os.environ.get("PEARL_WORKER_FORKED") == "1",
        }
    )


TASKS: dict[str, Callable[[PipesContext], None]] = {
    "probe": probe,
    "train-starter": train_starter,
    "embed": embed,
    "retrain": retrain,
    "predict": predict,
    "predict-aoi": predict_aoi,
}
