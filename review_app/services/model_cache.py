"""Each project's model in memory: the frozen base model (backbone + replay set) and the head it maps with now.

A project's base model is looked for once, in the background, and again at most every `MODEL_RETRY_S` while there
is none (the starter model may be trained after the app started); until then `why_missing` says why. Once found,
the project records which shared copy it maps with (`ml.base_model.record_project_base`).

Base models are shared and bounded: projects on the same copy (the same registered version, or the same local
model) share one loaded `BaseModel`, and at most `settings.model_cache_size` are kept loaded, least recently used
first out. An evicted one is read again from its copy when a project needs it; the heads (small) stay in memory.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from pearl_pipelines.labels.store import LabelStore
from pearl_pipelines.layout import model_slug
from pearl_pipelines.ml.base_model import BaseModel, load_base_model, project_base, record_project_base
from pearl_pipelines.ml.models import MODEL_FILE
from pearl_pipelines.ml.refs import ACCEPTED_FORMS, PREFIX, parse_model_uri, parse_registered_ref
from pearl_pipelines.ml.versions import ModelVersion
from pearl_pipelines.settings import Settings
from review_app.events import EventHub
from review_app.schemas import ModelStatusEvent
from review_app.services.errors import Conflict
from review_app.workspace import ModelVersionInfo, StateStore

log = logging.getLogger(__name__)
MODEL_RETRY_S = 10.0  # look for a base model again at most this often
LOADING = "loading the base model..."
NOT_A_REFERENCE = f"the project's base model is not a registered model reference ({ACCEPTED_FORMS})"


@dataclass(frozen=True)
class ProjectModel:
    """The frozen backbone (+ replay set) and the head the project currently maps with."""

    base: BaseModel
    version: ModelVersion


class ModelCache:
    def __init__(self, *, settings: Settings, store: LabelStore, states: StateStore, hub: EventHub) -> None:
        self.settings, self.store, self.states, self.hub = settings, store, states, hub
        self._lock = threading.Lock()
        self._bases: OrderedDict[Path, BaseModel] = OrderedDict()  # shared copy's folder -> loaded; LRU order
        self._base_locks: dict[Path, threading.Lock] = {}  # one reader per copy: a base loads once
        self._base_of: dict[int, Path] = {}  # project -> folder of the base it maps with
        self._versions: dict[int, ModelVersion] = {}  # project -> the head it maps with (small: kept for all)
        self._notes: dict[int, tuple[float, str]] = {}  # project -> (last attempt, why no model)
        self._loading: set[int] = set()

    def loaded(self, project_id: int) -> ProjectModel | None:
        """The model if it is in memory already (never loads)."""
        with self._lock:
            return self._in_memory(project_id, touch=False)

    def available(self, project_id: int) -> bool:
        """The project's base model was found: it maps now, or after its base is read again (evicted)."""
        return project_id in self._versions

    def why_missing(self, project_id: int, default: str = LOADING) -> str:
        return self._notes.get(project_id, (0.0, default))[1]

    def get(self, project_id: int) -> ProjectModel | None:
        """The project's base model and current version (the base is retried until found, read again if evicted)."""
        with self._lock:
            model = self._in_memory(project_id, touch=True)
            if model is not None:
                return model
            if project_id not in self._versions:  # never found: look again at most every MODEL_RETRY_S
                last, _ = self._notes.get(project_id, (0.0, ""))
                if project_id in self._notes and time.monotonic() - last < MODEL_RETRY_S:
                    return None
                self._notes[project_id] = (time.monotonic(), LOADING)
        base, note, found_now = self._find(project_id)
        loaded = None
        if base is not None:
            version = self._versions.get(project_id)
            loaded = ProjectModel(base, version if version is not None else self._current_version(project_id, base))
        with self._lock:
            first = loaded is not None and project_id not in self._versions
            changed = first or (loaded is None and self._notes.get(project_id, (0, ""))[1] != note)
            if loaded is not None:
                assert base is not None and base.folder is not None
                self._base_of[project_id] = _key(base.folder)
                version = self._versions.setdefault(project_id, loaded.version)  # a head set meanwhile wins
                loaded = ProjectModel(loaded.base, version)
            self._notes[project_id] = (time.monotonic(), note)
        if found_now and base is not None:
            self._share_caches(project_id, base)
        if changed:  # the page shows the model's status: tell it (no polling)
            self.hub.publish(project_id, ModelStatusEvent(ready=loaded is not None, message=note))
        return loaded

    def require(self, project_id: int) -> ProjectModel:
        model = self.get(project_id)
        if model is None:
            raise Conflict(self.why_missing(project_id, "no model available"))
        return model

    def current(self, project_id: int) -> ProjectModel:
        """`require`, with the head the shared session state names as current: another app process may have
        retrained or restored since this one last looked. For job bodies: a project's jobs run one at a time across
        processes, so the state cannot move under them."""
        model = self.require(project_id)
        info = self.states.current_version(project_id)
        if info is None or info.engine_id == model.version.id:
            return model
        folder = self.states.workspace(project_id).local_version_dir(info.id)  # another process's: fetched
        if not folder.is_dir():
            return model
        version = ModelVersion.load(folder)
        self.set_version(project_id, version)
        return ProjectModel(model.base, version)

    def set_version(self, project_id: int, version: ModelVersion) -> None:
        with self._lock:
            self._versions[project_id] = version

    def slot(self, project_id: int) -> ModelSlot:
        return ModelSlot(self, project_id)

    def load_in_background(self, project_id: int) -> None:
        """Start looking for the project's base model unless it was found or is being looked for (a model takes
        seconds to load). A found base that was evicted is read again when a job needs it, not here."""
        with self._lock:
            load = project_id not in self._versions and project_id not in self._loading
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

    def _in_memory(self, project_id: int, *, touch: bool) -> ProjectModel | None:
        """(Under the lock.) The project's model if its base is loaded; `touch`: mark that base used now."""
        folder, version = self._base_of.get(project_id), self._versions.get(project_id)
        if folder is None or version is None or folder not in self._bases:
            return None
        if touch:
            self._bases.move_to_end(folder)
        return ProjectModel(self._bases[folder], version)

    def _find(self, project_id: int) -> tuple[BaseModel | None, str, bool]:
        """(base, why not, found just now): the copy the project recorded, else the one its reference names."""
        base_dir = self.states.paths(project_id).base_model_dir
        recorded = project_base(self.settings, base_dir)
        if recorded is not None and (recorded[0] / MODEL_FILE).is_file():
            return self._base(*recorded), "", False
        ref = self.store.get_project(project_id).base_model
        if recorded is not None and _is_version(recorded[1]):
            ref = recorded[1]  # its copy is gone: the same registered version again, not whatever the alias is now
        try:
            parse_registered_ref(ref)
        except ValueError:  # a project saved when paths were accepted, without a copy of its own
            return None, NOT_A_REFERENCE, False
        base, note = load_base_model(ref, self.settings, load=self._base)
        if base is None:
            return None, note, False
        record_project_base(self.settings, base_dir, base)
        return base, "", True

    def _base(self, folder: Path, source: str | None = None) -> BaseModel:
        """The base model in `folder`, loaded once and shared; the least recently used beyond the cache size out."""
        key = _key(folder)
        with self._lock:
            if key in self._bases:
                self._bases.move_to_end(key)
                return self._bases[key]
            lock = self._base_locks.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                if key in self._bases:
                    return self._bases[key]
            base = BaseModel.load(key, source)
            with self._lock:
                self._bases[key] = base
                while len(self._bases) > max(1, self.settings.model_cache_size):
                    evicted, _ = self._bases.popitem(last=False)
                    log.info("base model %s unloaded (model_cache_size %d)", evicted, self.settings.model_cache_size)
            return base

    def _share_caches(self, project_id: int, base: BaseModel) -> None:
        """A base that is a registered version: the project's AOI caches go where the Dagster loop keeps that
        backbone's (one cache per AOI for both loops). A project that cached AOIs before keeps its folder."""
        if not _is_version(base.source):
            return
        name, version = parse_model_uri(base.source)
        with self.states.update(project_id) as state:
            if state.embeddings_slug is None and not state.aois:
                state.embeddings_slug = model_slug(name, version)

    def _current_version(self, project_id: int, base: BaseModel) -> ModelVersion:
        """The version the project's state names as current; the base model's own head (v0) the first time."""
        ws = self.states.workspace(project_id)
        state = ws.state()
        if state.current_model is not None and ws.local_version_dir(state.current_model).is_dir():
            return ModelVersion.load(ws.paths.version_dir(state.current_model))
        root = base.root_version()
        root.save(ws.paths.version_dir(0))
        ws.publish_version(0)  # in the store before the state names it (remote store only)
        with self.states.change(project_id) as change:
            change.put_version(
                ModelVersionInfo(
                    id=0, engine_id=root.id, kind="base", name="starter (base model)", classes=root.schema.names
                )
            )
            st = change.state
            st.current_model, st.next_model_id = 0, max(st.next_model_id, 1)
        return root


def _key(folder: Path) -> Path:
    """One key per folder, however the path to it was spelt."""
    return Path(os.path.normpath(folder.absolute()))


def _is_version(source: str) -> bool:
    """`models:/name/N`: a registered version (a source that is a local copy is not)."""
    if not source.startswith(PREFIX):
        return False
    try:
        return parse_registered_ref(source)[1].isdigit()
    except ValueError:
        return False


@dataclass(frozen=True)
class ModelSlot:
    """One project's entry of the cache, as a job sees it: the current model, and a way to replace its head."""

    cache: ModelCache
    project_id: int

    def require(self) -> ProjectModel:
        return self.cache.current(self.project_id)

    def set_version(self, version: ModelVersion) -> None:
        self.cache.set_version(self.project_id, version)
