"""Job bodies: imagery mosaic, inference over an AOI, live retrain, checkpoint restore.

The live retrain is ordered for latency: fit the head (one fit, no metrics), re-predict the AOI the
mapper is looking at from its cached embeddings, announce the new layer version, and only then
re-predict the other AOIs, compute metrics (grouped CV fits several more heads) and save the version.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import geopandas as gpd
from shapely.geometry import shape

from pearl_pipelines.classes import ClassSchema
from pearl_pipelines.ml.metrics import MetricsReport
from pearl_pipelines.ml.versions import ModelVersion
from review_app import engine
from review_app.imagery import ImageryError, build_mosaic, imagery_sources, lonlat_bounds
from review_app.jobs import JobContext, JobFailed
from review_app.schemas import ClassMetric, MetricsOut
from review_app.workspace import AoiLayer, ImageryInfo, ModelVersionInfo

if TYPE_CHECKING:
    from review_app.service import ReviewService

KEEP_LAYER_VERSIONS = 3  # the browser may still fetch the previous version's tiles while it swaps layers


def build_imagery(svc: ReviewService, project_id: int, ctx: JobContext) -> str:
    row = svc.project(project_id)
    paths = svc.paths(project_id)
    with svc.states.update(project_id) as state:
        state.imagery = ImageryInfo(state="building", message="mosaicking the project's imagery")
    ctx.step("finding the project's imagery")
    try:
        sources = imagery_sources(row.imagery, svc.settings)
        clip = row.imagery.get("bbox") if row.imagery.get("source") == "stac" else None
        build_mosaic(sources, paths.imagery, clip_lonlat=clip, progress=lambda d, t: ctx.progress(d, t + 1, "mosaic"))
        bounds = lonlat_bounds(paths.imagery)
    except ImageryError as exc:
        missing = "generate" in str(exc)
        with svc.states.update(project_id) as state:
            state.imagery = ImageryInfo(state="missing" if missing else "error", message=str(exc))
        if missing:  # not an error of this job: the project page says what to run
            return "imagery not generated yet"
        raise JobFailed(str(exc)) from None
    except Exception:
        with svc.states.update(project_id) as state:
            state.imagery = ImageryInfo(state="error", message="the imagery could not be mosaicked (see server log)")
        raise
    with svc.states.update(project_id) as state:
        state.imagery = ImageryInfo(state="ready", bounds=bounds)
    ctx.publish({"type": "imagery_ready", "bounds": bounds})
    return f"imagery ready ({len(sources)} items)"


def _publish_layer(
    svc: ReviewService, ctx: JobContext, aoi_id: int, version: int, *, model_version: int | None, embeddings: bool
) -> None:
    project_id = ctx.job.project_id
    with svc.states.update(project_id) as state:
        state.aois[aoi_id] = AoiLayer(version=version, model_version=model_version, embeddings=embeddings)
    paths = svc.paths(project_id)
    for old in range(1, version - KEEP_LAYER_VERSIONS + 1):
        shutil.rmtree(paths.prediction_dir(aoi_id, old), ignore_errors=True)
    ctx.publish(
        {
            "type": "prediction_updated",
            "aoi_id": aoi_id,
            "version": version,
            "model_version": model_version,
            "job_id": ctx.job.id,
            "tilejson": svc.prediction_links(project_id, aoi_id, version).model_dump(),
        }
    )


def run_inference(svc: ReviewService, project_id: int, aoi_id: int, ctx: JobContext) -> str:
    current = svc.require_model(project_id)
    aoi = svc.aoi(project_id, aoi_id)
    paths = svc.paths(project_id)
    state = svc.states.get(project_id)
    version = state.aois.get(aoi_id, AoiLayer()).version + 1
    ctx.step(f"predicting {aoi.name}", 0.0)
    result = engine.predict_aoi(
        engine.version_model(current.version, current.base),
        paths.imagery,
        shape(aoi.geometry),
        paths.prediction_dir(aoi_id, version),
        paths.embeddings_dir(aoi_id),
        progress=lambda done, total: ctx.progress(done, total, f"predicting {aoi.name}: window {done}/{total}"),
        model_id=current.version.id,
    )
    if current.version.needs_xy:  # the forward pass gave the embeddings; the spatial head applies to them
        engine.repredict(
            paths.embeddings_dir(aoi_id), current.version, svc.schema(project_id), paths.prediction_dir(aoi_id, version)
        )
    _publish_layer(svc, ctx, aoi_id, version, model_version=state.current_model, embeddings=True)
    return f"{aoi.name} predicted in {result.seconds:.1f} s"


def _cached_aois(svc: ReviewService, project_id: int) -> dict[int, Path]:
    paths = svc.paths(project_id)
    return {
        aoi_id: paths.embeddings_dir(aoi_id)
        for aoi_id, layer in svc.states.get(project_id).aois.items()
        if layer.embeddings and engine.has_embeddings(paths.embeddings_dir(aoi_id))
    }


def check_retrain(svc: ReviewService, project_id: int) -> None:
    """Refuse, before any work, a retrain that cannot run (raised as RetrainError -> 422)."""
    labels = svc.store.list_labels(project_id)
    if not labels:
        raise engine.RetrainError("there are no labels to retrain on: add points or polygons inside an AOI first")
    cached = _cached_aois(svc, project_id)
    if not any(label.aoi_id in cached for label in labels):
        aois = sorted({label.aoi_id for label in labels if label.aoi_id is not None})
        raise engine.RetrainError(
            f"the labelled AOI(s) {', '.join(map(str, aois))} have no predictions yet: run inference on them first "
            "(retraining re-uses the embeddings that inference caches)"
        )
    classes = {label.class_name for label in labels}
    if len(classes) < 2 and svc.require_model(project_id).base.replay is None:
        raise engine.RetrainError(
            f"all labels are of class {classes.pop()!r} and this model has no replay set: label at least two classes"
        )


def _labels(svc: ReviewService, project_id: int, aoi_ids: list[int]) -> gpd.GeoDataFrame:
    frame = svc.store.labels_frame(project_id)
    aoi_of = {r.id: r.aoi_id for r in svc.store.list_labels(project_id)}
    return frame[[aoi_of.get(i) in aoi_ids for i in frame["label_id"]]]


def metrics_out(report: MetricsReport | None, model_version: int, notes: list[str] | None = None) -> MetricsOut:
    """The engine's report on the classes that have labels (the rest would be rows of zeros)."""
    if report is None:
        return MetricsOut(
            model_version=model_version,
            method="none",
            per_class=[],
            confusion=[],
            classes=[],
            mean_f1=None,
            accuracy=None,
            n_labels=0,
            n_samples=0,
            message="; ".join(notes or []) or "metrics need labels of two classes or more in separate places",
        )
    present = [i for i, n in enumerate(report.support) if n > 0]
    # Columns: the labelled classes plus any other class the model predicted for them (errors must show).
    predicted = [j for j in range(len(report.class_names)) if any(report.confusion[i][j] for i in present)]
    columns = present + [j for j in predicted if j not in present]
    return MetricsOut(
        model_version=model_version,
        method=report.method,
        per_class=[
            ClassMetric(
                name=report.class_names[i],
                f1=report.f1[i],
                precision=report.precision[i],
                recall=report.recall[i],
                support=report.support[i],
            )
            for i in present
        ],
        confusion=[[report.confusion[i][j] for j in columns] for i in present],
        classes=[report.class_names[i] for i in present],
        columns=[report.class_names[j] for j in columns],
        mean_f1=report.macro_f1,
        accuracy=report.accuracy,
        n_labels=0,
        n_samples=report.n_samples,
        message="; ".join(report.notes),
    )


def _repredict(svc: ReviewService, ctx: JobContext, aoi_id: int, version: ModelVersion, model_version: int) -> None:
    project_id = ctx.job.project_id
    paths = svc.paths(project_id)
    layer_version = svc.states.get(project_id).aois.get(aoi_id, AoiLayer()).version + 1
    engine.repredict(
        paths.embeddings_dir(aoi_id), version, svc.schema(project_id), paths.prediction_dir(aoi_id, layer_version)
    )
    _publish_layer(svc, ctx, aoi_id, layer_version, model_version=model_version, embeddings=True)


def run_retrain(svc: ReviewService, project_id: int, aoi_id: int | None, ctx: JobContext) -> str:
    started = time.perf_counter()
    current = svc.require_model(project_id)
    schema = svc.schema(project_id)
    caches = _cached_aois(svc, project_id)
    labels = _labels(svc, project_id, list(caches))
    ctx.step("fitting the head on your labels", 0.1)
    cache_dirs = list(caches.values())
    strategy = svc.states.get(project_id).strategy
    # The live fit reuses the replay share the last cross-validation chose; the metrics pass below chooses again.
    live_scale = float(current.version.info.get("replay_scale", 1.0))
    fit = functools.partial(
        engine.retrain_version, current.version, schema, cache_dirs, labels, current.base.replay, strategy=strategy
    )
    child = fit(evaluate=False, replay_scale=live_scale)
    with svc.states.update(project_id) as state:
        parent = state.current_model
        number = max(state.next_model_id, 1)
        state.next_model_id = number + 1
    version_dir = svc.paths(project_id).version_dir(number)
    info = ModelVersionInfo(
        id=number,
        engine_id=child.id,
        kind="retrain",
        parent=parent,
        label_set=child.label_set_digest,
        n_labels=int(child.info.get("n_labels", len(labels))),
        classes=child.schema.names,
    )
    svc.set_version(project_id, child)
    # The AOI in view first, then the other labelled AOIs, then the rest.
    labelled = {r.aoi_id for r in svc.store.list_labels(project_id)}
    order = sorted(caches, key=lambda a: (a != aoi_id, a not in labelled, a))
    first_layer_s = 0.0
    for n, aid in enumerate(order):
        ctx.step(f"re-predicting AOI {aid} from cached embeddings", 0.3 + 0.6 * n / len(order))
        _repredict(svc, ctx, aid, child, number)
        if n == 0:
            first_layer_s = time.perf_counter() - started
            # The version is current (and can be saved as a checkpoint) as soon as the map shows it.
            engine.save_version(child, version_dir, labels)
            with svc.states.update(project_id) as state:
                state.models[number], state.current_model = info, number
    ctx.step("computing metrics (grouped cross-validation)", 0.9)
    # Off the live path: the same fit again (deterministic) plus the cross-validation folds.
    evaluated = fit(evaluate=True)
    notes = evaluated.info.get("metric_notes", [])
    # CV chose another replay share than the live fit used: its head replaces the live one.
    if evaluated.info["replay_scale"] != child.info["replay_scale"]:
        child = dataclasses.replace(evaluated, id=child.id)
        for aid in order:
            _repredict(svc, ctx, aid, child, number)
    else:
        child = dataclasses.replace(child, metrics=evaluated.metrics, info={**child.info, "metric_notes": notes})
    svc.set_version(project_id, child)
    engine.save_version(child, version_dir, labels)
    metrics = metrics_out(child.metrics, number, notes)
    metrics.n_labels = info.n_labels
    with svc.states.update(project_id) as state:
        state.models[number].metrics = metrics
    _score_base(svc, project_id, base=current.base, schema=schema, caches=cache_dirs, labels=labels)
    ctx.publish({"type": "metrics_updated", "model_version": number})
    f1 = f"mean F1 {metrics.mean_f1:.2f}" if metrics.mean_f1 is not None else "metrics need more labels"
    return f"model v{number}: map updated in {first_layer_s:.2f} s; {f1}"


def _score_base(
    svc: ReviewService,
    project_id: int,
    *,
    base: engine.BaseModel,
    schema: ClassSchema,
    caches: list[Path],
    labels: gpd.GeoDataFrame,
) -> None:
    """The starter model's F1 on the same labels, so checkpoints can be compared with where the mapper began."""
    report = engine.score_version(engine.root_version(base), schema, caches, labels)
    if report is None:
        return
    scored = metrics_out(report, 0)
    scored.n_labels = len(labels)
    with svc.states.update(project_id) as state:
        if 0 in state.models:
            state.models[0].metrics = scored


def run_restore(svc: ReviewService, project_id: int, number: int, ctx: JobContext) -> str:
    info = svc.checkpoint_info(project_id, number)
    version = engine.load_version(svc.paths(project_id).version_dir(number))
    svc.require_model(project_id)
    svc.set_version(project_id, version)
    with svc.states.update(project_id) as state:
        state.current_model = number
    caches = _cached_aois(svc, project_id)
    for n, aid in enumerate(sorted(caches)):
        ctx.step(f"re-predicting AOI {aid} with {info.name or f'v{number}'}", n / max(1, len(caches)))
        _repredict(svc, ctx, aid, version, number)
    ctx.publish({"type": "metrics_updated", "model_version": number})
    return f"restored {info.name or f'model v{number}'}"
