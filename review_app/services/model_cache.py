"""Each project's model in memory: the frozen base model (backbone + replay set) and the head it maps with now.

The base model is looked for once per project, in the background, and again at most every `MODEL_RETRY_S` while
there is none (the starter model may be trained after the app started); until then `why_missing` says why.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass

from pearl_pipelines.labels.store import LabelStore
from pearl_pipelines.layout import model_slug
from pearl_pipelines.ml.base_model import BaseModel, load_base_model
from pearl_pipelines.ml.models import MODEL_FILE
from pearl_pipelines.ml.refs import PREFIX, parse_model_uri
from pearl_pipelines.ml.versions import ModelVersion
from pearl_pipelines.settings import Settings
from review_app.events import EventHub
from review_app.services.errors import Conflict
from review_app.workspace import ModelVersionInfo, StateStore

log = logging.getLogger(__name__)
MODEL_RETRY_S = 10.0  # look for a base model again at most this often
LOADING = "loading the base model..."


@dataclass(frozen=True)
class ProjectModel:
    """The frozen backbone (+ replay set) and the head the project currently maps with."""

    base: BaseModel
    version: ModelVersion


class ModelCache:
    def __init__(self, *, settings: Settings, store: LabelStore, states: StateStore, hub: EventHub) -> None:
        self.settings, self.store, self.states, self.hub = settings, store, states, hub
        self._lock = threading.Lock()
        self._models: dict[int, ProjectModel] = {}
        self._notes: dict[int, tuple[float, str]] = {}  # project -> (last attempt, why no model)
        self._loading: set[int] = set()

    def loaded(self, project_id: int) -> ProjectModel | None:
        """The model if it is in memory already (never loads)."""
        return self._models.get(project_id)

    def why_missing(self, project_id: int, default: str = LOADING) -> str:
        return self._notes.get(project_id, (0.0, default))[1]

    def get(self, project_id: int) -> ProjectModel | None:
        """The project's base model and current version (loaded once; the base model is retried until found)."""
        with self._lock:
            if project_id in self._models:
                return self._models[project_id]
            last, _ = self._notes.get(project_id, (0.0, ""))
            if project_id in self._notes and time.monotonic() - last < MODEL_RETRY_S:
                return None
            self._notes[project_id] = (time.monotonic(), LOADING)
        paths = self.states.paths(project_id)
        note = ""
        if (paths.base_model_dir / MODEL_FILE).is_file():
            base: BaseModel | None = BaseModel.load(paths.base_model_dir)
        else:
            base, note = load_base_model(self.store.get_project(project_id).base_model, self.settings)
            if base is not None:
                base.save(paths.base_model_dir)
                self._share_caches(project_id, base)
        loaded = None
        if base is not None:
            loaded = ProjectModel(base, self._current_version(project_id, base))
        with self._lock:
            changed = loaded is not None or self._notes.get(project_id, (0, ""))[1] != note
            if loaded is not None:
                self._models[project_id] = loaded
            self._notes[project_id] = (time.monotonic(), note)
        if changed:  # the page shows the model's status: tell it (no polling)
            self.hub.publish(project_id, {"type": "model_status", "ready": loaded is not None, "message": note})
        return loaded

    def require(self, project_id: int) -> ProjectModel:
        model = self.get(project_id)
        if model is None:
            raise Conflict(self.why_missing(project_id, "no model available"))
        return model

    def set_version(self, project_id: int, version: ModelVersion) -> None:
        with self._lock:
            self._models[project_id] = dataclasses.replace(self._models[project_id], version=version)

    def slot(self, project_id: int) -> ModelSlot:
        return ModelSlot(self, project_id)

    def load_in_background(self, project_id: int) -> None:
        """Start loading the project's model unless it is loaded or loading (a model takes seconds to load)."""
        with self._lock:
            load = project_id not in self._models and project_id not in self._loading
            if load:
                self._loading.add(project_id)
        if load:
            threading.Thread(target=self._load, args=(project_id,), daemon=True, name="pearl-model").start()

    def _load(self, project_id: int) -> None:
        try:
            self.get(project_id)
        except Exception:  # a broken model file must not kill the app: say so on the project, log the rest
            log.exception("loading the model of project %s failed", project_id)
            with self._lock:
                self._notes[project_id] = (time.monotonic(), "the model could not be loaded (see server log)")
        finally:
            with self._lock:
                self._loading.discard(project_id)

    def _share_caches(self, project_id: int, base: BaseModel) -> None:
        """A base that is a registered version: the project's AOI caches go where the Dagster loop keeps that
        backbone's (one cache per AOI for both loops). A project that cached AOIs before keeps its folder."""
        if not base.source.startswith(PREFIX):
            return
        name, version = parse_model_uri(base.source)
        with self.states.update(project_id) as state:
            if version.isdigit() and state.embeddings_slug is None and not state.aois:
                state.embeddings_slug = model_slug(name, version)

    def _current_version(self, project_id: int, base: BaseModel) -> ModelVersion:
        """The version the project's state names as current; the base model's own head (v0) the first time."""
        paths = self.states.paths(project_id)
        state = self.states.get(project_id)
        if state.current_model is not None and paths.version_dir(state.current_model).is_dir():
            return ModelVersion.load(paths.version_dir(state.current_model))
        root = base.root_version()
        root.save(paths.version_dir(0))
        with self.states.update(project_id) as st:
            st.models[0] = ModelVersionInfo(
                id=0, engine_id=root.id, kind="base", name="starter (base model)", classes=root.schema.names
            )
            st.current_model, st.next_model_id = 0, max(st.next_model_id, 1)
        return root


@dataclass(frozen=True)
class ModelSlot:
    """One project's entry of the cache, as a job sees it: the current model, and a way to replace its head."""

    cache: ModelCache
    project_id: int

    def require(self) -> ProjectModel:
        return self.cache.require(self.project_id)

    def set_version(self, version: ModelVersion) -> None:
        self.cache.set_version(self.project_id, version)
