"""Inference: `embeddings` (review AOIs, per base model) and `predictions` (classes + confidence COG per tile).

The backbone runs once per AOI (embeddings); after a retrain, a tile under review is re-predicted by
the new head over its cached embeddings (a 1x1 convolution, sub-second), other tiles by full inference.
Both run in the worker through Pipes; each tile it writes comes back as a custom message and becomes a
materialization of exactly that `predictions` partition.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from pearl_pipelines.defs.events import upstream_metadata
from pearl_pipelines.defs.imagery import fetch_tiles, register_tile_keys, selected_keys
from pearl_pipelines.defs.labels import get_project_or_fail
from pearl_pipelines.defs.models import ModelRef, champion_ref, project_model_ref
from pearl_pipelines.defs.partitions import tile_keys_partitions
from pearl_pipelines.defs.resources import (
    GpuCompute,
    LabelStoreResource,
    MlflowRegistry,
    RasterStore,
    StacResource,
)
from pearl_pipelines.geo.cog import validate_cog
from pearl_pipelines.geo.maps import class_counts
from pearl_pipelines.geo.tiles import search_tile_sources
from pearl_pipelines.layout import CLASSES_FILE, CONFIDENCE_FILE, PREDICTION_META, prediction_is_fresh
from pearl_pipelines.ml.refs import starter_model_name
from pearl_pipelines.worker.contracts import EmbedAoi, EmbedInput, PredictInput, Tile

PREDICTIONS_COG_CHECK = "predictions_cog_valid"


def project_collections(project: Any) -> list[str] | None:
    """The STAC collections a review-app project draws its imagery from (None: the resource's default)."""
    imagery = (project.imagery or {}) if project is not None else {}
    # {"source": "stac", "collections": [...]} or the local catalog's {"source": "local", "collection": "demo"}
    collections = imagery.get("collections") or ([imagery["collection"]] if imagery.get("collection") else None)
    return list(collections) if collections else None


def ensure_tiles(
    context: dg.AssetExecutionContext,
    stac: StacResource,
    rasters: RasterStore,
    keys: Sequence[str],
    collections: list[str] | None = None,
) -> int:
    """Cut the imagery tiles that are missing (STAC search per tile); each is reported as an `imagery_tiles`
    partition. Returns how many were cut."""
    missing = [k for k in keys if not rasters.has_tile(k)]
    if not missing:
        return 0
    register_tile_keys(context.instance, missing)
    sources_for = partial(search_tile_sources, stac.catalog(collections))
    count = 0
    without: list[str] = []
    for key, meta in fetch_tiles(rasters, missing, sources_for, without_imagery=without):
        count += 1
        context.log_event(
            dg.AssetMaterialization(
                asset_key="imagery_tiles", partition=key, metadata={**meta, "via": context.asset_key.to_user_string()}
            )
        )
    if without:
        context.log.warning(f"no imagery covers tiles {', '.join(without)}: left out")
    return count


class EmbeddingsConfig(dg.Config):
    project_id: int
    aoi_ids: list[int] = Field(default_factory=list)  # default: every AOI of the project
    refresh: bool = False  # recompute caches that exist


@dg.asset(
    deps=[dg.AssetDep("imagery_tiles", partition_mapping=dg.AllPartitionMapping()), "starter_model"],
    group_name="inference",
    kinds={"pytorch", "numpy"},
)
def embeddings(
    context: dg.AssetExecutionContext,
    *,
    config: EmbeddingsConfig,
    label_store: LabelStoreResource,
    rasters: RasterStore,
    mlflow: MlflowRegistry,
    stac: StacResource,
    compute: GpuCompute,
) -> dg.MaterializeResult:
    """Float16 embedding cache per review AOI, from the project's base model backbone (shared by every
    head retrained on it). Existing caches are reused; only new AOIs cost a forward pass."""
    project = get_project_or_fail(label_store, config.project_id)
    _, base = project_model_ref(mlflow, project)
    aois = [a for a in label_store.store().list_aois(config.project_id) if not config.aoi_ids or a.id in config.aoi_ids]
    if not aois:
        which = f" with ids {config.aoi_ids}" if config.aoi_ids else ""
        raise dg.Failure(
            description=f"project {config.project_id} has no AOIs{which}; draw an area of interest in the review app",
            allow_retries=False,
        )
    keys = sorted({k for a in aois for k in a.tile_keys})
    register_tile_keys(context.instance, keys)
    fetched = ensure_tiles(context, stac, rasters, keys, project_collections(project))
    todo = [a for a in aois if config.refresh or not rasters.cache_ready(rasters.embeddings_dir(base.slug, a.id))]
    blind = [a.id for a in todo if not any(rasters.has_tile(k) for k in a.tile_keys)]
    if blind:
        raise dg.Failure(
            description=f"no imagery under AOIs {blind} of project {config.project_id}: the STAC API "
            f"({stac.url}) has no items there; draw the AOI over available imagery",
            allow_retries=False,
        )
    worker: dict[str, Any] = {}
    if todo:
        task = EmbedInput(
            asset="embeddings",
            dagster_run_id=context.run.run_id,
            mlflow_uri=mlflow.tracking_uri,
            model=base.ref(),
            aois=[
                EmbedAoi(
                    aoi_id=a.id,
                    geometry=a.geometry,
                    tile_paths=[rasters.rel(rasters.tile_path(k)) for k in a.tile_keys if rasters.has_tile(k)],
                    cache_dir=rasters.rel(rasters.embeddings_dir(base.slug, a.id)),
                    predictions_dir=rasters.rel(rasters.aoi_predictions_dir(base.slug, a.id)),
                )
                for a in todo
            ],
        )
        worker = dict(compute.run(context, "embed", task.extras()).get_materialize_result().metadata or {})
    rows = ["| AOI | tiles | cache |", "|---|---|---|"] + [
        f"| {a.id} {a.name} | {len(a.tile_keys)} | `{rasters.embeddings_dir(base.slug, a.id)}` |" for a in aois
    ]
    return dg.MaterializeResult(
        metadata={
            **worker,
            "project_id": config.project_id,
            "base_model": base.uri,
            "n_aois": len(aois),
            "caches_computed": len(todo),
            "caches_reused": len(aois) - len(todo),
            "tiles_fetched": fetched,
            "caches": dg.MetadataValue.md("\n".join(rows)),
        }
    )


@dataclass(frozen=True)
class TileJob:
    key: str
    cache_dir: str | None  # an AOI cache covering the tile (head-only prediction), else None


def predict_tiles(
    context: dg.AssetExecutionContext,
    *,
    compute: GpuCompute,
    rasters: RasterStore,
    mlflow: MlflowRegistry,
    model: ModelRef,
    tiles: Sequence[TileJob],
    report_check: bool,
) -> tuple[list[dict[str, Any]], list[Any]]:
    """Run the worker's `predict` task; returns (per-tile results, Pipes results such as check results)."""
    task = PredictInput(
        asset="predictions",
        dagster_run_id=context.run.run_id,
        mlflow_uri=mlflow.tracking_uri,
        model=model.ref(),
        report_check=report_check,
        tiles=[
            Tile(
                key=t.key,
                tile_path=rasters.rel(rasters.tile_path(t.key)),
                out_dir=rasters.rel(rasters.predictions_dir(model.slug, t.key)),
                cache_dir=t.cache_dir,
            )
            for t in tiles
        ],
    )
    invocation = compute.run(context, "predict", task.extras())
    messages = invocation.get_custom_messages()
    for message in messages:
        if message.get("kind") == "summary":
            context.log.info(
                f"predicted {message['head'] + message['full']} tiles in {message['seconds']:.1f} s "
                f"({message['head']} head-only, {message['full']} full); MLflow run {message['mlflow_run_id']}"
            )
    return [m for m in messages if m.get("kind") == "tile"], list(invocation.get_results())


def existing_prediction(rasters: RasterStore, model: ModelRef, key: str) -> dict[str, Any]:
    """A tile prediction already on disk (e.g. written by the retrain worker), in the worker's message shape."""
    out = rasters.predictions_dir(model.slug, key)
    counts = class_counts(out / CLASSES_FILE)
    return {
        "kind": "tile",
        "tile_key": key,
        "classes": str(out / CLASSES_FILE),
        "confidence": str(out / CONFIDENCE_FILE),
        "mode": "precomputed",
        "seconds": 0.0,
        "class_pixels": counts.pixels,
        "width": counts.width,
        "height": counts.height,
    }


def split_fresh(
    rasters: RasterStore, model: ModelRef, keys: Sequence[str], *, force: bool = False, whole_tile: bool = False
) -> tuple[list[str], list[str]]:
    """(keys whose prediction by `model` is on disk and newer than their imagery, keys to predict).

    `whole_tile`: head-only predictions (the AOI part of a tile) do not count, e.g. for a regional map.
    """
    if force:
        return [], list(keys)
    if rasters.files.remote:  # another pod's predictions: fetched from the store, complete ones only
        for k in keys:
            rasters.files.try_local(rasters.predictions_dir(model.slug, k), marker=PREDICTION_META)
    fresh = [
        k
        for k in keys
        if prediction_is_fresh(rasters.predictions_dir(model.slug, k), rasters.tile_path(k), whole_tile=whole_tile)
    ]
    return fresh, [k for k in keys if k not in set(fresh)]


def _classes_here(rasters: RasterStore, model: ModelRef, result: dict[str, Any]) -> Path:
    """A tile result's classes COG in this process's PEARL_HOME: with an object store, the worker's pod wrote it in
    its own PEARL_HOME and published it, and it is fetched from the store."""
    if not rasters.files.remote:
        return Path(result["classes"])
    folder = rasters.files.local(rasters.predictions_dir(model.slug, result["tile_key"]), marker=PREDICTION_META)
    return folder / CLASSES_FILE


def tile_metadata(result: dict[str, Any], model: ModelRef, **extra: Any) -> dict[str, Any]:
    pixels = result.get("class_pixels", {})
    total = sum(pixels.values()) or 1
    table = "\n".join(
        ["| class | share |", "|---|---|"] + [f"| {n} | {c / total:.1%} |" for n, c in pixels.items() if c]
    )
    return {
        "classes_uri": dg.MetadataValue.path(result["classes"]),
        "confidence_uri": dg.MetadataValue.path(result["confidence"]),
        "model_uri": model.uri,
        "mode": result["mode"],
        "seconds": result["seconds"],
        "width": result["width"],
        "height": result["height"],
        "class_shares": dg.MetadataValue.md(table),
        **extra,
    }


class PredictionsConfig(dg.Config):
    project_id: int | None = None  # predict with the project's latest model (head over its AOI caches)
    model: str | None = None  # or an explicit models:/name@alias | models:/name/3
    model_name: str = starter_model_name("chesapeake9")  # without project or model: this model's champion
    # Restrict to these keys of the run's partition range (empty: the whole range).
    tile_keys: list[str] = Field(default_factory=list)
    repredict: bool = False  # predict again even where this model's prediction of the tile is up to date


@dg.asset(
    partitions_def=tile_keys_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=["imagery_tiles", "embeddings", "landcover_model"],
    check_specs=[dg.AssetCheckSpec(PREDICTIONS_COG_CHECK, asset="predictions", description="every tile COG is valid")],
    output_required=False,
    group_name="inference",
    kinds={"cog", "pytorch"},
)
def predictions(
    context: dg.AssetExecutionContext,
    *,
    config: PredictionsConfig,
    label_store: LabelStoreResource,
    rasters: RasterStore,
    mlflow: MlflowRegistry,
    stac: StacResource,
    compute: GpuCompute,
) -> Iterator[dg.AssetMaterialization | dg.AssetCheckResult]:
    """Classified COG (class index, schema colour table) + confidence COG per tile key.

    With a project: the version this run's `landcover_model` registered (else the project's latest),
    head-only over the AOI caches. Otherwise the champion (or `model`). Only the tiles named in the
    config (default: the whole partition range) are predicted and materialized.
    """
    keys = selected_keys(context, config.tile_keys)
    tile_cache: dict[str, str] = {}
    project = None
    if config.model:
        name, version = mlflow.resolve(config.model)
        model = ModelRef(name, version)
    elif config.project_id is not None:
        project = get_project_or_fail(label_store, config.project_id)
        latest, base = project_model_ref(mlflow, project)
        trained = upstream_metadata(context, dg.AssetKey("landcover_model"), match={"project_id": config.project_id})
        model = ModelRef(str(trained["model_name"]), str(trained["model_version"])) if trained else latest
        for aoi in label_store.store().list_aois(config.project_id):
            cache = rasters.embeddings_dir(base.slug, aoi.id)
            if rasters.cache_ready(cache):
                for key in aoi.tile_keys:
                    tile_cache.setdefault(key, rasters.rel(cache))
    else:
        found = champion_ref(mlflow, config.model_name)
        if found is None:
            raise dg.Failure(
                description=f"{config.model_name} has no champion yet; materialize starter_model first",
                allow_retries=False,
            )
        model = found
    ensure_tiles(context, stac, rasters, keys, project_collections(project))
    keys = [k for k in keys if rasters.has_tile(k)]  # tiles without imagery cannot be predicted
    fresh, todo = split_fresh(rasters, model, keys, force=config.repredict)
    results = [existing_prediction(rasters, model, k) for k in fresh]
    pipes_results: list[Any] = []
    if todo:
        predicted, pipes_results = predict_tiles(
            context,
            compute=compute,
            rasters=rasters,
            mlflow=mlflow,
            model=model,
            tiles=[TileJob(k, tile_cache.get(k)) for k in todo],
            report_check=not fresh,  # the worker vouches for the COGs only when it wrote them all
        )
        results += predicted
    for result in results:
        yield dg.AssetMaterialization(
            asset_key=context.asset_key,
            partition=result["tile_key"],
            metadata=tile_metadata(result, model, project_id=config.project_id or 0),
        )
    if pipes_results:
        yield from pipes_results
    else:
        invalid = [r["tile_key"] for r in results if not validate_cog(_classes_here(rasters, model, r))[0]]
        yield dg.AssetCheckResult(
            check_name=PREDICTIONS_COG_CHECK,
            passed=not invalid,
            metadata={"tiles_checked": len(results), "invalid": ", ".join(invalid) or "none"},
        )
