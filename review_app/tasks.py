"""Job bodies: imagery mosaic, inference over an AOI, live retrain, checkpoint restore.

Each body gets only what it touches: the project's workspace (files + session state), the label store, a slot
of the model cache, and the project's class schema as a callable (read when used: classes can be added while a
job waits for its turn). The domain services (review_app/services/) submit them; of those, this module knows
only the model cache's `ModelSlot` type.

The live retrain is ordered for latency: fit the head (one fit, no metrics), re-predict the AOI the
mapper is looking at from its cached embeddings (of a large AOI, first the ~512 px block around the
centre of the mapper's view, announced as a partial layer version, then the whole AOI as the next),
announce the new layer version, and only then re-predict the other AOIs, compute metrics (grouped CV
fits several more heads) and save the version.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import rasterio
from shapely.geometry import shape

from pearl_pipelines.classes import ClassSchema
from pearl_pipelines.geo.masking import mask_outside
from pearl_pipelines.geo.patching import unpatched_copy
from pearl_pipelines.geo.stac import StacError
from pearl_pipelines.labels.store import AoiRow, LabelStore
from pearl_pipelines.layout import EMBEDDINGS_META, cache_complete
from pearl_pipelines.ml import loop
from pearl_pipelines.ml.base_model import BaseModel
from pearl_pipelines.ml.errors import RetrainError
from pearl_pipelines.ml.metrics import MetricsReport
from pearl_pipelines.ml.preview import inner_centre
from pearl_pipelines.ml.priority import at_lower_priority
from pearl_pipelines.ml.versions import ModelVersion
from pearl_pipelines.settings import Settings
from pearl_pipelines.storage import MAP_FILES, older_versions
from pearl_pipelines.worker.contracts import FirstBlockResult
from review_app import remote_inference
from review_app.imagery import (
    ImageryError,
    build_mosaic,
    imagery_sources,
    lonlat_bounds,
    resolve_source,
    shared_mosaic,
    source_digest,
)
from review_app.jobs import JobContext, JobFailed
from review_app.links import prediction_links
from review_app.schemas import (
    ClassMetric,
    ImageryReadyEvent,
    MetricsOut,
    MetricsUpdatedEvent,
    PredictionUpdatedEvent,
)
from review_app.services.model_cache import ModelSlot
from review_app.workspace import AoiLayer, ImageryInfo, ModelVersionInfo, ProjectState, ProjectWorkspace

log = logging.getLogger(__name__)
SchemaOf = Callable[[], ClassSchema]  # the project's class schema as it is now
KEEP_LAYER_VERSIONS = 3  # the browser may still fetch the previous version's tiles while it swaps layers


def build_imagery(ctx: JobContext, ws: ProjectWorkspace, *, source: dict[str, Any], settings: Settings) -> str:
    """Point the project at the mosaic of its imagery `source` (the project's `imagery` field), building that mosaic
    first unless a project of the same source did (one shared file per source: imagery.shared_mosaic)."""
    with ws.update() as state:
        state.imagery = ImageryInfo(state="building", message="mosaicking the project's imagery")
    ctx.step("finding the project's imagery")
    try:
        spec = resolve_source(source, settings)  # an unconfigured STAC API is an error here, never a request
        digest = source_digest(spec)
        dst = ws.paths.imagery_mosaic(digest)
        clip = spec["bbox"] if spec["source"] == "stac" else None
        counted: list[int] = []

        def build(tmp: Path) -> None:
            sources = imagery_sources(spec, settings)
            counted.append(len(sources))
            build_mosaic(sources, tmp, clip_lonlat=clip, progress=lambda d, t: ctx.progress(d, t + 1, "mosaic"))

        stored = ws.states.stored_mosaic(dst)
        if stored is not None:  # another app process built it: read in place in the object store, not downloaded
            built, (name, gdal_env) = False, stored
            with rasterio.Env(**gdal_env):
                bounds = lonlat_bounds(name)
        else:
            built = shared_mosaic(dst, build)
            ws.states.publish_mosaic(dst)
            bounds = lonlat_bounds(dst)
    except (ImageryError, StacError) as exc:  # no items, or the STAC API is down: the project page says which
        missing = "generate" in str(exc)
        with ws.update() as state:
            state.imagery = ImageryInfo(state="missing" if missing else "error", message=str(exc))
        if missing:  # not an error of this job: the project page says what to run
            return "imagery not generated yet"
        raise JobFailed(str(exc)) from None
    except Exception:  # e.g. GDAL could not read a source: its message names files and URLs, so only the log has it
        log.exception("project %s: the imagery mosaic failed", ws.project_id)
        message = "the imagery could not be mosaicked (see server log)"
        with ws.update() as state:
            state.imagery = ImageryInfo(state="error", message=message)
        raise JobFailed(message) from None
    with ws.update() as state:
        state.imagery = ImageryInfo(state="ready", bounds=bounds, digest=digest)
    ctx.publish(ImageryReadyEvent(bounds=bounds))
    if built:
        return f"imagery ready ({counted[0]} items)"
    return "imagery ready (the mosaic of this source was built already)"


def _finish_map(ws: ProjectWorkspace, aoi_id: int, version: int, geometry: Mapping[str, Any]) -> None:
    """The one place every AOI map (a new AOI's first block and whole map, a retrain's block and whole map, a
    restore) passes before it is published: the steps that make the files what the tiles and exports show."""
    mask_outside(geometry, ws.paths.prediction_dir(aoi_id, version))  # nodata outside the AOI's polygon
    ws.patch_map(aoi_id, version, geometry)  # the mapper's patches over the model's map (kept beside it)


def _store_map(ws: ProjectWorkspace, aoi_id: int, version: int) -> None:
    """With an object store (PEARL_STORAGE_URL=s3://...; `StateStore.objects`, set by the container), the map's class
    and confidence COGs go to their layout keys before the layer is announced, and the objects of the versions that
    `_publish_layer` deletes go too: the tile routes of every app process read the maps there (review_app/tiles.py)."""
    objects = ws.states.objects
    if objects is None or not objects.remote:
        return
    layout, out_dir = ws.paths.layout, ws.paths.prediction_dir(aoi_id, version)
    for name in MAP_FILES:
        objects.put_file(out_dir / name, layout.key(out_dir / name))
    for old in older_versions(objects, layout.key(out_dir.parent), version - KEEP_LAYER_VERSIONS):
        objects.delete(old)


def _store_cache(ws: ProjectWorkspace, cache_dir: Path) -> None:
    """With a remote object store, the AOI's complete embedding cache goes up as chunks (ml/chunked_cache.py) before
    a layer with `embeddings=True` names it, unless the store holds this very cache already (the same metadata, byte
    for byte: it was downloaded from there). Another cache there (another backbone's) is deleted first, so that no
    reader ever mixes the chunks of two. Processes with disks of their own then read it
    (ProjectWorkspace.ensure_local_cache)."""
    from pearl_pipelines.ml.chunked_cache import upload_cache

    objects = ws.states.remote
    if objects is None or not cache_complete(cache_dir):
        return
    key = ws.paths.layout.key(cache_dir)
    try:
        stored: bytes | None = objects.get_bytes(f"{key}/{EMBEDDINGS_META}")
    except FileNotFoundError:
        stored = None
    if stored == (cache_dir / EMBEDDINGS_META).read_bytes():
        return
    if stored is not None:
        objects.delete(key)
    started = time.perf_counter()
    sent = upload_cache(cache_dir, objects, key)
    log.info(
        "project %s: cache %s uploaded (%.0f MB in %.1f s)",
        ws.project_id,
        key,
        sent / 1e6,
        time.perf_counter() - started,
    )


def _publish_layer(
    ctx: JobContext,
    ws: ProjectWorkspace,
    aoi_id: int,
    version: int,
    *,
    geometry: Mapping[str, Any],
    model_version: int | None,
    embeddings: bool,
    partial: bool = False,
) -> None:
    """Make `version` the AOI's layer and announce it. A `partial` layer is the block in view only, the rest still
    running: a new AOI's first block (no embeddings yet: retrains leave its AOI out until the whole AOI's layer
    replaces it), or a retrain's first re-predicted block (the AOI's cache stays complete and usable).

    The versions before the last KEEP_LAYER_VERSIONS are deleted: the browser draws a retrain's partial layer over
    the previous whole one (version - 1 and version - 2 are kept while `version` is shown). `geometry`: the AOI's
    lon/lat GeoJSON (`_finish_map`)."""
    _finish_map(ws, aoi_id, version, geometry)
    _store_map(ws, aoi_id, version)
    with ws.update() as state:
        state.aois[aoi_id] = AoiLayer(
            version=version, model_version=model_version, embeddings=embeddings, partial=partial
        )
    for old in range(1, version - KEEP_LAYER_VERSIONS + 1):
        shutil.rmtree(ws.paths.prediction_dir(aoi_id, old), ignore_errors=True)
    ctx.publish(
        PredictionUpdatedEvent(
            aoi_id=aoi_id,
            version=version,
            model_version=model_version,
            job_id=ctx.job.id,
            tilejson=prediction_links(ws.project_id, aoi_id, version),
            partial=partial,
            embeddings=embeddings,
        )
    )


def run_inference(
    ctx: JobContext,
    ws: ProjectWorkspace,
    aoi: AoiRow,
    *,
    model: ModelSlot,
    schema_of: SchemaOf,
    settings: Settings,
    view: tuple[float, float, float, float] | None = None,
) -> str:
    """A full forward pass over the AOI with the current model: a new layer version, and the embedding cache.

    The backbone runs in the worker (remote_inference.py: where Dagster's compute runs), not in this process.
    A new AOI shows within seconds: the worker first predicts the block nearest the centre of the mapper's `view`
    (lon/lat west, south, east, north), published at once as a partial layer version; the whole AOI follows as the
    next version. A small AOI is predicted whole at once (one version, as a spatial head's AOI always is).
    """
    current = model.require()
    aoi_id, paths = aoi.id, ws.paths
    state = ws.state()
    version = state.aois.get(aoi_id, AoiLayer()).version + 1
    cache_dir = ws.ensure_local_cache(aoi_id, state)  # another process's cache (remote store): fetched
    if cache_complete(cache_dir) and loop.open_cache(cache_dir).meta.backbone_digest == current.version.base_model_id:
        # This backbone embedded the AOI already (the Dagster loop's onboarding, or an earlier inference): the head
        # over the cache is the whole prediction, no backbone pass.
        ctx.step(f"predicting {aoi.name} from its embedding cache", 0.0)
        loop.repredict(cache_dir, current.version, schema_of(), paths.prediction_dir(aoi_id, version))
        _store_cache(ws, cache_dir)  # the Dagster loop's cache: not in the store yet
        _publish_layer(
            ctx, ws, aoi_id, version, geometry=aoi.geometry, model_version=state.current_model, embeddings=True
        )
        return f"{aoi.name} predicted from its embedding cache (no backbone pass)"
    # A spatial head applies to embeddings only: its map exists once the whole AOI is embedded, no first block.
    first = not current.version.needs_xy
    full_version = version + 1 if first else version
    shown: list[float] = []  # seconds from the start to the first block's layer
    started = time.perf_counter()

    def on_first_block(block: FirstBlockResult) -> None:
        _publish_layer(
            ctx,
            ws,
            aoi_id,
            version,
            geometry=aoi.geometry,
            model_version=state.current_model,
            embeddings=False,
            partial=True,
        )
        shown.append(time.perf_counter() - started)
        ctx.step(f"{aoi.name}: the block in view is shown; predicting the rest of the AOI")

    def progress(done: int, total: int, stage: str) -> None:
        what = "the block in view" if stage == "first_block" else "the rest of the AOI" if shown else aoi.name
        ctx.progress(done, total, f"predicting {what}: window {done}/{total}")

    ctx.step(f"predicting {aoi.name}", 0.0)
    result = remote_inference.predict_aoi(
        settings,
        ws,
        aoi.geometry,
        current.version,
        out_dir=paths.prediction_dir(aoi_id, full_version),
        embeddings_dir=cache_dir,
        progress=progress,
        first_out_dir=paths.prediction_dir(aoi_id, version) if first else None,
        view=view,
        on_first_block=on_first_block,
    )
    if first and not shown:  # a small AOI: no first block, the whole AOI is the next version
        shutil.rmtree(paths.prediction_dir(aoi_id, version), ignore_errors=True)
        paths.prediction_dir(aoi_id, full_version).rename(paths.prediction_dir(aoi_id, version))
        full_version = version
    if current.version.needs_xy:  # the forward pass gave the embeddings; the spatial head applies to them
        loop.repredict(cache_dir, current.version, schema_of(), paths.prediction_dir(aoi_id, full_version))
    _store_cache(ws, cache_dir)  # in the store before the layer says embeddings=True
    _publish_layer(
        ctx, ws, aoi_id, full_version, geometry=aoi.geometry, model_version=state.current_model, embeddings=True
    )
    where = "a warm worker fork" if result.forked else "a worker process"
    head = f"; the block in view shown after {shown[0]:.1f} s" if shown else ""
    return f"{aoi.name} predicted in {result.seconds:.1f} s by {where} (pid {result.pid}){head}"


def _cached_aois(ws: ProjectWorkspace, *, fetch: bool = True, state: ProjectState | None = None) -> dict[int, Path]:
    """The AOIs with a complete embedding cache, and its folder here: with a remote store, one that only the store
    has is downloaded (`fetch`), or (not `fetch`: a check before the job) counted without downloading. `state`: the
    project state the caller read already."""
    state = state or ws.state()
    embedded = [aoi_id for aoi_id, layer in state.aois.items() if layer.embeddings]
    if not fetch:
        return {aoi_id: ws.embeddings_dir(aoi_id, state) for aoi_id in embedded if ws.has_cache(aoi_id, state)}
    caches = {aoi_id: ws.ensure_local_cache(aoi_id, state) for aoi_id in embedded}
    return {aoi_id: cache for aoi_id, cache in caches.items() if cache_complete(cache)}


def check_retrain(ws: ProjectWorkspace, *, store: LabelStore, model: ModelSlot) -> None:
    """Refuse, before any work, a retrain that cannot run (raised as RetrainError -> 422)."""
    labels = store.list_labels(ws.project_id)
    if not labels:
        raise RetrainError("there are no labels to retrain on: add points or polygons inside an AOI first")
    cached = _cached_aois(ws, fetch=False)  # a request: the job downloads
    if not any(label.aoi_id in cached for label in labels):
        aois = sorted({label.aoi_id for label in labels if label.aoi_id is not None})
        raise RetrainError(
            f"the labelled AOI(s) {', '.join(map(str, aois))} have no predictions yet: run inference on them first "
            "(retraining re-uses the embeddings that inference caches)"
        )
    classes = {label.class_name for label in labels}
    if len(classes) < 2 and model.require().base.replay is None:
        raise RetrainError(
            f"all labels are of class {classes.pop()!r} and this model has no replay set: label at least two classes"
        )


def _labels(store: LabelStore, project_id: int, aoi_ids: list[int]) -> tuple[gpd.GeoDataFrame, str | None, set[int]]:
    """The labels inside the cached AOIs, the label store's digest of the project's labels when that is all of them
    (one snapshot: the digest names exactly the labels the head is fitted on), and the AOIs holding any label."""
    rows = store.list_labels(project_id)
    used = [r for r in rows if r.aoi_id in aoi_ids]
    digest = LabelStore.digest_of(rows) if len(used) == len(rows) else None
    return LabelStore.frame_of(used), digest, {r.aoi_id for r in rows if r.aoi_id is not None}


def metrics_out(report: MetricsReport | None, model_version: int, notes: list[str] | None = None) -> MetricsOut:
    """The engine's report on the classes that have labels (the rest would be rows of zeros)."""
    if report is None:
        return MetricsOut.empty(
            model_version,
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


def _repredict(
    ctx: JobContext,
    ws: ProjectWorkspace,
    aoi_id: int,
    version: ModelVersion,
    *,
    geometry: Mapping[str, Any],
    model_version: int,
    schema_of: SchemaOf,
    block: tuple[Sequence[float] | None, Sequence[float] | None] | None = None,
    on_shown: Callable[[], None] = lambda: None,
    state: ProjectState | None = None,
) -> float | None:
    """Re-predict the AOI from its cache as its next layer version. With `block` (the mapper's lon/lat view, the
    AOI's lon/lat centre) and a large AOI, the block around the view's centre (`loop.view_block`) is re-predicted
    and published first as a partial version, then the whole AOI as the one after. `on_shown` runs once the first
    layer is published. Returns the seconds the block took, or None when there was none. `state`: the project state
    the caller read already (its AOI layers as they are now: a project's jobs run one at a time)."""
    paths, state = ws.paths, state or ws.state()
    layer_version = state.aois.get(aoi_id, AoiLayer()).version + 1
    cache, schema = loop.open_cache(ws.ensure_local_cache(aoi_id, state)), schema_of()  # one schema: the same pixels
    window = loop.view_block(cache, block[0], centre=block[1]) if block is not None else None
    block_s = None
    if window is not None:
        started = time.perf_counter()
        loop.repredict(cache, version, schema, paths.prediction_dir(aoi_id, layer_version), window=window)
        _publish_layer(
            ctx,
            ws,
            aoi_id,
            layer_version,
            geometry=geometry,
            model_version=model_version,
            embeddings=True,
            partial=True,
        )
        block_s = time.perf_counter() - started
        on_shown()
        ctx.step(f"AOI {aoi_id}: the block in view is shown; re-predicting the rest of the AOI")
        layer_version += 1
        # The browser is fetching the block's tiles now: the rest of the AOI must not take their cores.
        at_lower_priority(lambda: loop.repredict(cache, version, schema, paths.prediction_dir(aoi_id, layer_version)))
    else:
        loop.repredict(cache, version, schema, paths.prediction_dir(aoi_id, layer_version))
    _publish_layer(ctx, ws, aoi_id, layer_version, geometry=geometry, model_version=model_version, embeddings=True)
    if window is None:
        on_shown()
    return block_s


def _lonlat_centre(store: LabelStore, aoi_id: int) -> tuple[float, float] | None:
    """The AOI's centre (lon/lat): its centroid, or a point inside it when the centroid is not."""
    try:
        geom = shape(store.get_aoi(aoi_id).geometry)
    except KeyError:
        return None
    point = inner_centre(geom)
    return point.x, point.y


def run_retrain(
    ctx: JobContext,
    ws: ProjectWorkspace,
    aoi_id: int | None,
    *,
    store: LabelStore,
    model: ModelSlot,
    schema_of: SchemaOf,
    finished: Callable[[], None] = lambda: None,
    view: Sequence[float] | None = None,
) -> str:
    """A new model version from all labels; `aoi_id` (the AOI in view) is re-predicted first, and of a large one
    first the block around the centre of `view` (lon/lat west, south, east, north: the mapper's map; default the
    AOI's centre) as a partial layer version. `finished` is called once the version is final (the version store
    logs it to MLflow)."""
    started = time.perf_counter()
    project_id = ws.project_id
    current = model.require()
    schema = schema_of()
    # One read of the session state on the live path: a project's document grows with its versions.
    state = ws.state()
    caches = _cached_aois(ws, state=state)
    labels, label_store_digest, labelled = _labels(store, project_id, list(caches))
    ctx.step("fitting the head on your labels", 0.1)
    cache_dirs = list(caches.values())
    strategy = state.strategy
    # The live fit reuses the replay share the last cross-validation chose; the metrics pass below chooses again.
    live_scale = 1.0 if current.version.replay_scale is None else current.version.replay_scale
    fit = functools.partial(
        loop.retrain_version, current.version, schema, cache_dirs, labels, current.base.replay, strategy=strategy
    )
    child = fit(evaluate=False, replay_scale=live_scale)
    with ws.update() as state:
        parent = state.current_model
        number = max(state.next_model_id, 1)
        state.next_model_id = number + 1
    version_dir = ws.paths.version_dir(number)
    info = ModelVersionInfo(
        id=number,
        engine_id=child.id,
        kind="retrain",
        parent=parent,
        label_set=child.label_set_digest,
        label_store_digest=label_store_digest,
        n_labels=int(child.info.get("n_labels", len(labels))),
        classes=child.schema.names,
    )
    model.set_version(child)
    # The AOI in view first, then the other labelled AOIs, then the rest.
    order = sorted(caches, key=lambda a: (a != aoi_id, a not in labelled, a))
    geometries = {aid: store.get_aoi(aid).geometry for aid in order}  # AOIs never change: read once
    shown: list[float] = []  # seconds from the start to the first new layer (the block in view, or the whole AOI)

    def make_current() -> None:
        shown.append(time.perf_counter() - started)
        # The version is current (and can be saved as a checkpoint) as soon as the map shows it.
        child.save(version_dir, labels=labels)
        ws.publish_version(number)  # in the store before the state names it (remote store only)
        with ws.change() as change:
            change.put_version(info)
            change.state.current_model = number

    first_layer_s, block_s = 0.0, None
    for n, aid in enumerate(order):
        ctx.step(f"re-predicting AOI {aid} from cached embeddings", 0.3 + 0.6 * n / len(order))
        if n == 0:
            # The AOI in view: of a large one, the block in view first.
            block = (view, _lonlat_centre(store, aid)) if aid == aoi_id else None
            block_s = _repredict(
                ctx,
                ws,
                aid,
                child,
                geometry=geometries[aid],
                model_version=number,
                schema_of=schema_of,
                block=block,
                on_shown=make_current,
                state=state,
            )
            first_layer_s = time.perf_counter() - started
        else:
            _repredict(ctx, ws, aid, child, geometry=geometries[aid], model_version=number, schema_of=schema_of)
    ctx.step("computing metrics (grouped cross-validation)", 0.9)
    # Off the live path: the same fit again (deterministic) plus the cross-validation folds, at a lower priority than
    # the requests for the tiles just announced.
    evaluated = at_lower_priority(lambda: fit(evaluate=True))
    notes = evaluated.info.get("metric_notes", [])
    # CV chose another replay share than the live fit used: its head replaces the live one.
    if evaluated.replay_scale != child.replay_scale:
        child = dataclasses.replace(evaluated, id=child.id)
        for aid in order:
            _repredict(ctx, ws, aid, child, geometry=geometries[aid], model_version=number, schema_of=schema_of)
    else:
        child = dataclasses.replace(child, metrics=evaluated.metrics, info={**child.info, "metric_notes": notes})
    model.set_version(child)
    child.save(version_dir, labels=labels)
    ws.publish_version(number)
    metrics = metrics_out(child.metrics, number, notes)
    metrics.n_labels = info.n_labels
    with ws.change() as change:  # as saved (a checkpoint's name may have been given meanwhile), with its metrics
        saved = change.version(number) or info
        change.put_version(saved.model_copy(update={"metrics": metrics}))
    _score_base(ws, base=current.base, schema=schema, caches=cache_dirs, labels=labels)
    ctx.publish(MetricsUpdatedEvent(model_version=number))
    finished()
    f1 = f"mean F1 {metrics.mean_f1:.2f}" if metrics.mean_f1 is not None else "metrics need more labels"
    if block_s is not None:  # the block's layer was shown first, then the whole AOI's
        shown_in = f"the block in view shown in {shown[0]:.2f} s (re-predicted in {block_s:.2f} s), "
        return f"model v{number}: {shown_in}map updated in {first_layer_s:.2f} s; {f1}"
    return f"model v{number}: map updated in {first_layer_s:.2f} s; {f1}"


def _score_base(
    ws: ProjectWorkspace,
    *,
    base: BaseModel,
    schema: ClassSchema,
    caches: list[Path],
    labels: gpd.GeoDataFrame,
) -> None:
    """The starter model's F1 on the same labels, so checkpoints can be compared with where the mapper began."""
    report = loop.evaluate(base.root_version(), schema, caches, labels)
    if report is None:
        return
    scored = metrics_out(report, 0)
    scored.n_labels = len(labels)
    with ws.change() as change:
        base_info = change.version(0)
        if base_info is not None:
            change.put_version(base_info.model_copy(update={"metrics": scored}))


def run_restore(
    ctx: JobContext,
    ws: ProjectWorkspace,
    number: int,
    version: ModelVersion,
    *,
    store: LabelStore,
    model: ModelSlot,
    schema_of: SchemaOf,
    finished: Callable[[], None] = lambda: None,
) -> str:
    """Make checkpoint `number` (its head: `version`) the current model and re-predict every cached AOI with it."""
    info = ws.checkpoint(number)
    model.require()
    model.set_version(version)
    with ws.update() as state:
        state.current_model = number
    caches = _cached_aois(ws)
    for n, aid in enumerate(sorted(caches)):
        ctx.step(f"re-predicting AOI {aid} with {info.name or f'v{number}'}", n / max(1, len(caches)))
        geometry = store.get_aoi(aid).geometry
        _repredict(ctx, ws, aid, version, geometry=geometry, model_version=number, schema_of=schema_of)
    ctx.publish(MetricsUpdatedEvent(model_version=number))
    finished()  # `current` moves in MLflow
    return f"restored {info.name or f'model v{number}'}"


def run_repatch(ctx: JobContext, ws: ProjectWorkspace, aoi_ids: Sequence[int], *, store: LabelStore) -> str:
    """Re-apply the project's map patches to the current maps of `aoi_ids` (a patch was added, removed or undone),
    without running the model: each AOI's model output (kept beside its patched map) becomes its next layer version,
    which `_finish_map` patches with the patches in force now."""
    done = []
    for n, aoi_id in enumerate(aoi_ids):
        layer = ws.state().aois.get(aoi_id)
        current = ws.paths.prediction_dir(aoi_id, layer.version) if layer is not None else None
        if layer is None or current is None or not current.is_dir():
            continue  # not predicted yet: its first map will carry the patches
        ctx.step(f"patching the map of AOI {aoi_id}", n / max(1, len(aoi_ids)))
        version = layer.version + 1
        unpatched_copy(current, ws.paths.prediction_dir(aoi_id, version))
        _publish_layer(
            ctx,
            ws,
            aoi_id,
            version,
            geometry=store.get_aoi(aoi_id).geometry,
            model_version=layer.model_version,
            embeddings=layer.embeddings,
            partial=layer.partial,
        )
        done.append(str(aoi_id))
    return f"patched the maps of AOI(s) {', '.join(done)}" if done else "no map to patch yet"
