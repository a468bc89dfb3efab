"""The review session: projects, classes, AOIs and labels (synchronous, validated) and the jobs that map them.

Routers stay thin: they translate HTTP to these methods. Methods raise domain errors
(`GeometryError`, `LabelStoreError`, `RetrainError`, `KeyError` for unknown ids, `Conflict`) that
errors.py turns into 4xx JSON. Long work goes to the job runner (tasks.py) and reports on the websocket.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shapely.geometry import shape

from pearl_pipelines.classes import ClassSchema, load_schema
from pearl_pipelines.geo.grid import aoi_to_tile_keys
from pearl_pipelines.labels.store import AoiRow, LabelRow, LabelStore, LabelStoreError, ProjectRow
from pearl_pipelines.ml.versions import ModelVersion
from pearl_pipelines.settings import Settings
from review_app import engine, geometry
from review_app.events import EventHub
from review_app.jobs import Debouncer, Job, JobRunner
from review_app.schemas import (
    DEFAULT_BASE_MODEL,
    AoiCreate,
    AoiOut,
    ClassCreate,
    ClassOut,
    ClassUpdate,
    ImageryStatus,
    LabelCreate,
    LabelFeature,
    LocalImagery,
    ModelStatus,
    PredictionLayer,
    ProjectCreate,
    ProjectOut,
    TileJsonLinks,
)
from review_app.workspace import ModelVersionInfo, ProjectPaths, StateStore

log = logging.getLogger(__name__)
DEMO_PROJECT = "Demo: Chesapeake shoreline"
DEMO_COLLECTION = "demo"
MODEL_RETRY_S = 10.0  # look for a base model (and for missing imagery) again at most this often
IMAGERY_RETRY_S = 10.0
TMS = "WebMercatorQuad"


@dataclass(frozen=True)
class ProjectModel:
    """The frozen backbone (+ replay set) and the head the project currently maps with."""

    base: engine.BaseModel
    version: ModelVersion


class Conflict(RuntimeError):
    """The request is valid but the project is not in a state to do it (no model yet, imagery not ready)."""


def label_feature(row: LabelRow) -> LabelFeature:
    return LabelFeature(
        id=row.id,
        geometry=row.geometry,
        properties={
            "class_name": row.class_name,
            "aoi_id": row.aoi_id,
            "geom_type": row.geom_type,
            "created_at": row.created_at.isoformat() if row.created_at else None,
        },
    )


class ReviewService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.home_abs.mkdir(parents=True, exist_ok=True)
        self.store = LabelStore(settings.resolved_label_store_url)
        self.states = StateStore(settings.home_abs)
        self.hub = EventHub()
        self.runner = JobRunner(self.hub)
        self.label_runs = Debouncer(lambda project_id: engine.submit_label_run(project_id, settings, self.store))
        self._lock = threading.RLock()
        self._models: dict[int, ProjectModel] = {}
        self._model_notes: dict[int, tuple[float, str]] = {}  # project -> (last attempt, why no model)
        self._schemas: dict[int, ClassSchema] = {}
        self._loading: set[int] = set()
        self._imagery_tried: dict[int, float] = {}

    def close(self) -> None:
        self.label_runs.close()
        self.runner.shutdown()
        self.store.engine.dispose()

    def paths(self, project_id: int) -> ProjectPaths:
        return self.states.paths(project_id)

    # -- projects -------------------------------------------------------------------------------------------------
    def ensure_demo_project(self) -> None:
        """First start: the demo project (local `demo` collection, chesapeake9, the starter model)."""
        if self.store.list_projects():
            return
        self.create_project(
            ProjectCreate(
                name=DEMO_PROJECT,
                imagery=LocalImagery(collection=DEMO_COLLECTION),
                class_schema="chesapeake9",
                base_model=DEFAULT_BASE_MODEL,
            )
        )

    def create_project(self, req: ProjectCreate) -> ProjectRow:
        if isinstance(req.class_schema, str):
            try:
                schema = load_schema(req.class_schema, self.settings.assets_dir)
            except KeyError as exc:  # a bad value in the body, not an unknown path id: 422
                raise LabelStoreError(exc.args[0]) from None
        else:
            schema = req.class_schema
        row = self.store.create_project(req.name, req.imagery.model_dump(), schema, req.base_model)
        self.warm_up(row.id)
        return row

    def warm_up(self, project_id: int) -> None:
        """Start what a project needs in the background: its imagery mosaic and its base model."""
        from review_app import tasks

        state = self.states.get(project_id)
        with self._lock:
            retry = (
                state.imagery.state in ("missing", "error")
                and not self._job_running(project_id, "imagery")
                and time.monotonic() - self._imagery_tried.get(project_id, -1e9) > IMAGERY_RETRY_S
            )
            if retry:
                self._imagery_tried[project_id] = time.monotonic()
        if retry:
            self.runner.submit(project_id, "imagery", lambda ctx: tasks.build_imagery(self, project_id, ctx))
        with self._lock:
            load = project_id not in self._models and project_id not in self._loading
            if load:
                self._loading.add(project_id)
        if load:
            threading.Thread(target=self._load_model, args=(project_id,), daemon=True, name="pearl-model").start()

    def _load_model(self, project_id: int) -> None:
        try:
            self.model(project_id)
        except Exception:  # a broken model file must not kill the app: say so on the project, log the rest
            log.exception("loading the model of project %s failed", project_id)
            with self._lock:
                self._model_notes[project_id] = (time.monotonic(), "the model could not be loaded (see server log)")
        finally:
            with self._lock:
                self._loading.discard(project_id)

    def _job_running(self, project_id: int, kind: str) -> bool:
        return any(j.kind == kind for j in self.runner.active(project_id))

    def project(self, project_id: int) -> ProjectRow:
        return self.store.get_project(project_id)

    def schema(self, project_id: int) -> ClassSchema:
        with self._lock:
            if project_id not in self._schemas:
                self._schemas[project_id] = self.store.schema(project_id)
            return self._schemas[project_id]

    def colormap(self, project_id: int) -> dict[int, tuple[int, int, int, int]]:
        return self.schema(project_id).colormap()

    def project_out(self, project_id: int, *, retry_missing: bool = True) -> ProjectOut:
        row = self.project(project_id)
        state = self.states.get(project_id)
        if retry_missing:
            self.warm_up(project_id)  # e.g. `pearl generate` or the starter training ran after the app started
        schema = self.schema(project_id)
        counts = Counter(label.class_name for label in self.store.list_labels(project_id))
        classes = [
            ClassOut(index=i, name=c.name, title=c.title, color=c.color, label_count=counts.get(c.name, 0))
            for i, c in enumerate(schema.classes)
        ]
        imagery = ImageryStatus(
            state=state.imagery.state,
            message=state.imagery.message,
            bounds=state.imagery.bounds,
            tilejson=self.imagery_links(project_id) if state.imagery.state == "ready" else TileJsonLinks(),
        )
        model = self._models.get(project_id)
        note = self._model_notes.get(project_id, (0.0, "loading the base model..."))[1]
        return ProjectOut(
            id=row.id,
            name=row.name,
            created_at=row.created_at,
            imagery_source=row.imagery,
            class_schema_id=schema.id,
            classes=classes,
            imagery=imagery,
            model=ModelStatus(
                ready=model is not None,
                message="" if model is not None else note,
                base_model=row.base_model,
                current_version=state.current_model,
            ),
            aois=[self.aoi_out(a) for a in self.store.list_aois(project_id)],
            live_aoi_max_km2=self.settings.live_aoi_max_km2,
        )

    @staticmethod
    def imagery_links(project_id: int) -> TileJsonLinks:
        base = f"/tiles/imagery/{project_id}/{TMS}/tilejson.json?minzoom=11"
        return TileJsonLinks(true_color=f"{base}&bidx=1&bidx=2&bidx=3", false_color=f"{base}&bidx=4&bidx=1&bidx=2")

    @staticmethod
    def prediction_links(project_id: int, aoi_id: int, version: int) -> TileJsonLinks:
        tail = f"{project_id}/{aoi_id}/{version}/{TMS}/tilejson.json"
        return TileJsonLinks(
            classes=f"/tiles/predictions/{tail}?tile_format=png&minzoom=12",
            confidence=f"/tiles/confidence/{tail}?tile_format=png&minzoom=12",
        )

    # -- models -----------------------------------------------------------------------------------------------------
    def model(self, project_id: int) -> ProjectModel | None:
        """The project's base model and current version (loaded once; the base model is retried until found)."""
        with self._lock:
            if project_id in self._models:
                return self._models[project_id]
            last, _ = self._model_notes.get(project_id, (0.0, ""))
            if project_id in self._model_notes and time.monotonic() - last < MODEL_RETRY_S:
                return None
            self._model_notes[project_id] = (time.monotonic(), "loading the base model...")
        paths = self.paths(project_id)
        note = ""
        if (paths.base_model_dir / engine.MODEL_FILE).is_file():
            base: engine.BaseModel | None = engine.BaseModel.load(paths.base_model_dir)
        else:
            base, note = engine.load_base_model(self.project(project_id).base_model, self.settings)
            if base is not None:
                base.save(paths.base_model_dir)
        loaded = None
        if base is not None:
            loaded = ProjectModel(base, self._current_version(project_id, base))
        with self._lock:
            changed = loaded is not None or self._model_notes.get(project_id, (0, ""))[1] != note
            if loaded is not None:
                self._models[project_id] = loaded
            self._model_notes[project_id] = (time.monotonic(), note)
        if changed:  # the page shows the model's status: tell it (no polling)
            self.hub.publish(project_id, {"type": "model_status", "ready": loaded is not None, "message": note})
        return loaded

    def _current_version(self, project_id: int, base: engine.BaseModel) -> ModelVersion:
        paths = self.paths(project_id)
        state = self.states.get(project_id)
        if state.current_model is not None and paths.version_dir(state.current_model).is_dir():
            return engine.load_version(paths.version_dir(state.current_model))
        root = engine.root_version(base)
        engine.save_version(root, paths.version_dir(0), None)
        with self.states.update(project_id) as st:
            st.models[0] = ModelVersionInfo(
                id=0, engine_id=root.id, kind="base", name="starter (base model)", classes=root.schema.names
            )
            st.current_model, st.next_model_id = 0, max(st.next_model_id, 1)
        return root

    def set_version(self, project_id: int, version: ModelVersion) -> None:
        with self._lock:
            self._models[project_id] = dataclasses.replace(self._models[project_id], version=version)

    def require_model(self, project_id: int) -> ProjectModel:
        model = self.model(project_id)
        if model is None:
            raise Conflict(self._model_notes.get(project_id, (0.0, "no model available"))[1])
        return model

    # -- classes ----------------------------------------------------------------------------------------------------
    def _schema_changed(self, project_id: int) -> None:
        with self._lock:
            self._schemas.pop(project_id, None)
        self.hub.publish(project_id, {"type": "classes_changed"})

    def add_class(self, project_id: int, req: ClassCreate) -> ClassSchema:
        title = req.title or req.name.replace("_", " ").capitalize()
        schema = self.store.add_class(project_id, req.name, title, req.color)
        self._schema_changed(project_id)
        return schema

    def update_class(self, project_id: int, name: str, req: ClassUpdate) -> ClassSchema:
        if req.name is None and req.title is None and req.color is None:
            raise LabelStoreError("nothing to change: send any of name, title, color")
        schema = self.store.update_class(project_id, name, new_name=req.name, title=req.title, color=req.color)
        self._schema_changed(project_id)
        return schema

    # -- AOIs -------------------------------------------------------------------------------------------------------
    def aoi_out(self, row: AoiRow) -> AoiOut:
        layer = self.states.get(row.project_id).aois.get(row.id)
        prediction = None
        if layer is not None and layer.version > 0:
            prediction = PredictionLayer(
                version=layer.version,
                model_version=layer.model_version,
                tilejson=self.prediction_links(row.project_id, row.id, layer.version),
                embeddings=layer.embeddings,
            )
        return AoiOut(
            id=row.id,
            name=row.name,
            geometry=row.geometry,
            area_km2=round(geometry.area_km2(shape(row.geometry)), 4),
            tile_keys=len(row.tile_keys),
            prediction=prediction,
        )

    def aoi(self, project_id: int, aoi_id: int) -> AoiRow:
        row = self.store.get_aoi(aoi_id)
        if row.project_id != project_id:
            raise KeyError(f"no AOI {aoi_id} in project {project_id}")
        return row

    def add_aoi(self, project_id: int, req: AoiCreate) -> AoiRow:
        self.project(project_id)
        geom = geometry.parse_aoi(req.geometry, req.crs, self.settings.live_aoi_max_km2)
        imagery = self.states.get(project_id).imagery
        if imagery.state != "ready" or imagery.bounds is None:
            raise Conflict(f"the project's imagery is not ready ({imagery.state}): {imagery.message or 'wait for it'}")
        from shapely.geometry import box

        if not box(*imagery.bounds).intersects(geom):
            raise geometry.GeometryError(
                f"AOI {tuple(round(v, 5) for v in geom.bounds)} is outside the project's imagery "
                f"{tuple(round(v, 5) for v in imagery.bounds)}; draw it over the imagery"
            )
        keys = aoi_to_tile_keys(geom)
        name = req.name or f"AOI {len(self.store.list_aois(project_id)) + 1}"
        return self.store.add_aoi(project_id, name, geom, keys)

    # -- labels -----------------------------------------------------------------------------------------------------
    def add_label(self, project_id: int, req: LabelCreate) -> LabelRow:
        self.project(project_id)
        geom = geometry.parse_label(req.geometry, req.crs)
        schema = self.schema(project_id)
        if req.class_name not in schema.names:
            raise LabelStoreError(f"unknown class {req.class_name!r}; this project has: {', '.join(schema.names)}")
        aoi: AoiRow | None
        if req.aoi_id is not None:
            aoi = self.aoi(project_id, req.aoi_id)
            if not geometry.inside(shape(aoi.geometry), geom):
                raise geometry.GeometryError(
                    f"the label is not inside AOI {aoi.id} ({aoi.name}); labels must lie within their AOI"
                )
        else:
            aoi = next((a for a in self.store.list_aois(project_id) if geometry.inside(shape(a.geometry), geom)), None)
            if aoi is None:
                raise geometry.GeometryError(
                    "the label is outside every AOI of this project; draw an AOI around it first"
                )
        (row,) = self.store.add_labels(project_id, [(req.class_name, geom)], aoi_id=aoi.id)
        self._labels_changed(project_id)
        return row

    def delete_label(self, project_id: int, label_id: int) -> LabelRow:
        row = self.store.delete_label(project_id, label_id)
        self._labels_changed(project_id)
        return row

    def undo(self, project_id: int) -> LabelRow | None:
        self.project(project_id)
        row = self.store.undo(project_id)
        if row is not None:
            self._labels_changed(project_id)
        return row

    def _labels_changed(self, project_id: int) -> None:
        self.hub.publish(project_id, {"type": "labels_changed"})
        self.label_runs.touch(project_id)  # Dagster hears about label bursts once, in the background

    # -- jobs -------------------------------------------------------------------------------------------------------
    def start_inference(self, project_id: int, aoi_id: int) -> Job:
        from review_app import tasks

        self.aoi(project_id, aoi_id)
        self.require_model(project_id)
        if self.states.get(project_id).imagery.state != "ready":
            raise Conflict("the project's imagery is not ready yet")
        return self.runner.submit(
            project_id, "inference", lambda ctx: tasks.run_inference(self, project_id, aoi_id, ctx), aoi_id=aoi_id
        )

    def start_retrain(self, project_id: int, aoi_id: int | None) -> Job:
        from review_app import tasks

        self.require_model(project_id)
        if aoi_id is not None:
            self.aoi(project_id, aoi_id)
        tasks.check_retrain(self, project_id)  # refuse an empty/unusable retrain now, as a 4xx
        return self.runner.submit(
            project_id, "retrain", lambda ctx: tasks.run_retrain(self, project_id, aoi_id, ctx), aoi_id=aoi_id
        )

    def start_restore(self, project_id: int, version: int) -> Job:
        from review_app import tasks

        self.checkpoint_info(project_id, version)
        return self.runner.submit(project_id, "restore", lambda ctx: tasks.run_restore(self, project_id, version, ctx))

    # -- checkpoints ------------------------------------------------------------------------------------------------
    def checkpoint_info(self, project_id: int, version: int) -> ModelVersionInfo:
        self.project(project_id)
        info = self.states.get(project_id).models.get(version)
        if info is None or not self.paths(project_id).version_dir(version).is_dir():
            raise KeyError(f"no checkpoint {version} in project {project_id}")
        return info

    def save_checkpoint(self, project_id: int, name: str) -> ModelVersionInfo:
        name = name.strip()
        if not name:
            raise LabelStoreError("a checkpoint needs a name")
        with self.states.update(project_id) as state:
            if state.current_model is None:
                raise Conflict("there is no model to save yet")
            if any(m.name == name for m in state.models.values()):
                raise LabelStoreError(f"a checkpoint named {name!r} exists already; pick another name")
            info = state.models[state.current_model]
            info.name = name
        threading.Thread(
            target=self._log_checkpoint, args=(project_id, info.id, name), daemon=True, name="pearl-mlflow"
        ).start()
        return info

    def _log_checkpoint(self, project_id: int, version: int, name: str) -> None:
        directory = self.paths(project_id).version_dir(version)
        try:
            mlflow_version = engine.log_checkpoint(
                self.settings,
                self.project(project_id).name,
                name,
                engine.load_version(directory),
                ModelVersion.load_labels(directory),
            )
        except Exception as exc:  # MLflow is optional locally: the checkpoint folder is the source of truth
            log.info("checkpoint %s not logged to MLflow: %s", name, exc)
            return
        with self.states.update(project_id) as state:
            state.models[version].mlflow_version = mlflow_version

    def labels_geojson(self, project_id: int) -> dict[str, Any]:
        self.project(project_id)
        rows = self.store.list_labels(project_id)
        return {
            "type": "FeatureCollection",
            "features": [label_feature(r).model_dump() for r in rows],
        }

    def export_dir(self, project_id: int) -> Path:
        path = self.paths(project_id).root / "exports"
        path.mkdir(parents=True, exist_ok=True)
        return path
