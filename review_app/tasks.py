"""Job bodies: imagery mosaic, inference over an AOI, live retrain, checkpoint restore.

The live retrain is ordered for latency: fit the head, re-predict the AOI the mapper is looking at
from its cached embeddings, announce the new layer version, and only then save the model version,
re-predict the other AOIs and compute metrics (grouped CV fits several more heads).
"""

from __future__ import annotations

import shutil
import time
from typing import TYPE_CHECKING

from shapely.geometry import shape

from review_app import engine
from review_app.imagery import ImageryError, build_mosaic, imagery_sources, lonlat_bounds
from review_app.jobs import JobContext, JobFailed
from review_app.schemas import MetricsOut
from review_app.workspace import AoiLayer, ImageryInfo, ModelVersionInfo

if TYPE_CHECKING:
    import numpy as np

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
        raise JobFailed(str(exc)) from None
    with svc.states.update(project_id) as state:
        state.imagery = ImageryInfo(state="ready", bounds=bounds)
    return f"imagery ready ({len(sources)} items)"


def _publish_layer(
    svc: ReviewService, ctx: JobContext, aoi_id: int, version: int, model_version: int | None, embeddings: bool
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
    model = svc.require_model(project_id)
    aoi = svc.aoi(project_id, aoi_id)
    paths = svc.paths(project_id)
    state = svc.states.get(project_id)
    version = state.aois.get(aoi_id, AoiLayer()).version + 1
    ctx.step(f"predicting {aoi.name}", 0.0)
    result = engine.predict_aoi(
        model,
        paths.imagery,
        shape(aoi.geometry),
        paths.prediction_dir(aoi_id, version),
        paths.embeddings_dir(aoi_id),
        progress=lambda done, total: ctx.progress(done, total, f"predicting {aoi.name}: window {done}/{total}"),
        model_id=f"project-{project_id}/v{state.current_model}",
    )
    _publish_layer(svc, ctx, aoi_id, version, state.current_model, embeddings=True)
    return f"{aoi.name} predicted in {result.seconds:.1f} s"


def _cached_aois(svc: ReviewService, project_id: int) -> dict[int, object]:
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


def _repredict(
    svc: ReviewService, ctx: JobContext, aoi_id: int, weight: np.ndarray, bias: np.ndarray, model_version: int
) -> None:
    project_id = ctx.job.project_id
    paths = svc.paths(project_id)
    version = svc.states.get(project_id).aois.get(aoi_id, AoiLayer()).version + 1
    weight, bias = engine.pad_head(weight, bias, len(svc.schema(project_id)))
    engine.repredict(
        paths.embeddings_dir(aoi_id), weight, bias, svc.schema(project_id), paths.prediction_dir(aoi_id, version)
    )
    _publish_layer(svc, ctx, aoi_id, version, model_version, embeddings=True)


def run_retrain(svc: ReviewService, project_id: int, aoi_id: int | None, ctx: JobContext) -> str:
    started = time.perf_counter()
    model = svc.require_model(project_id)
    schema = svc.schema(project_id)
    caches = _cached_aois(svc, project_id)
    labels = {aid: svc.store.labels_frame(project_id, aoi_id=aid) for aid in caches}
    ctx.step("fitting the head on your labels", 0.1)
    fit = engine.retrain_head(model, schema, labels, caches)  # type: ignore[arg-type]
    new_model = engine.with_head(model, schema, fit.weight, fit.bias)
    with svc.states.update(project_id) as state:
        parent = state.current_model
        version = max(state.next_model_id, 1)
        state.models[version] = ModelVersionInfo(
            id=version,
            kind="retrain",
            parent=parent,
            label_set=svc.store.label_set_digest(project_id),
            n_labels=fit.n_labels,
            classes=schema.names,
        )
        state.current_model, state.next_model_id = version, version + 1
    svc.set_model(project_id, new_model)
    # The AOI in view first, then the other labelled AOIs, then the rest.
    order = sorted(caches, key=lambda a: (a != aoi_id, len(labels[a]) == 0, a))
    first_layer_s = 0.0
    for n, aid in enumerate(order):
        ctx.step(f"re-predicting AOI {aid} from cached embeddings", 0.3 + 0.4 * n / len(order))
        _repredict(svc, ctx, aid, fit.weight, fit.bias, version)
        if n == 0:
            first_layer_s = time.perf_counter() - started
            engine.save_version(new_model, svc.paths(project_id).model_path(version), {"parent": parent})
    ctx.step("computing metrics (grouped cross-validation)", 0.8)
    metrics = MetricsOut(model_version=version, **engine.evaluate(fit.labelled, fit.replay, schema))
    base_metrics = None
    base = svc.states.get(project_id).models.get(0)
    if base is not None and svc.paths(project_id).model_path(0).is_file():
        base_model = engine.load_version(svc.paths(project_id).model_path(0))
        base_metrics = MetricsOut(model_version=0, **engine.score_head(*engine.head_arrays(base_model), fit.labelled, schema))
    with svc.states.update(project_id) as state:
        state.models[version].metrics = metrics
        if base_metrics is not None and 0 in state.models:
            state.models[0].metrics = base_metrics
    ctx.publish({"type": "metrics_updated", "model_version": version})
    f1 = f"mean F1 {metrics.mean_f1:.2f}" if metrics.mean_f1 is not None else "metrics need more labels"
    return f"model v{version}: map updated in {first_layer_s:.2f} s; {f1}"


def run_restore(svc: ReviewService, project_id: int, version: int, ctx: JobContext) -> str:
    info = svc.checkpoint_info(project_id, version)
    model = engine.load_version(svc.paths(project_id).model_path(version))
    svc.set_model(project_id, model)
    with svc.states.update(project_id) as state:
        state.current_model = version
    weight, bias = engine.head_arrays(model)
    caches = _cached_aois(svc, project_id)
    for n, aid in enumerate(sorted(caches)):
        ctx.step(f"re-predicting AOI {aid} with {info.name or f'v{version}'}", n / max(1, len(caches)))
        _repredict(svc, ctx, aid, weight, bias, version)
    ctx.publish({"type": "metrics_updated", "model_version": version})
    return f"restored {info.name or f'model v{version}'}"
