"""The project's session state (layer versions, current model) and model versions; its files are
`layout.ProjectPaths`.

The state is a small JSON document per project on the label store's database, the model versions are rows beside it
(a project makes one per retrain; the document most requests read stays small): any number of app processes share
them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field

from pearl_pipelines.labels.app_state import AppState, VersionEntry, VersionWrite
from pearl_pipelines.labels.store import LabelStore
from pearl_pipelines.layout import CLASSES_FILE, EMBEDDINGS_META, Layout, ProjectPaths, cache_complete
from pearl_pipelines.ml.strategies import DEFAULT_STRATEGY
from pearl_pipelines.storage import ObjectStore
from pearl_pipelines.stored_files import StoredFiles
from review_app.schemas import MetricsOut

IMAGERY_TTL_S = 2.0
T = TypeVar("T")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ModelVersionInfo(BaseModel):
    """One model of the project: the base model (id 0) or a retrained head; a checkpoint once named."""

    id: int
    engine_id: str = Field(description="ml.versions.ModelVersion id")
    kind: Literal["base", "retrain"]
    parent: int | None = None
    created_at: dt.datetime = Field(default_factory=_now)
    label_set: str | None = None
    # The label store's digest of the project's labels when every one of them was used (what Dagster names a label
    # set by: its label run adopts this version instead of fitting again); None when some were left out.
    label_store_digest: str | None = None
    n_labels: int = 0
    classes: list[str] = Field(default_factory=list)
    metrics: MetricsOut | None = None
    name: str | None = None
    mlflow_version: str | None = Field(default=None, description="version of MLflow's pearl-project-<id> (once logged)")

    @property
    def final(self) -> bool:
        """Metrics are computed: the retrain finished and the version will not change any more."""
        return self.kind == "retrain" and self.metrics is not None


class AoiLayer(BaseModel):
    version: int = 0  # 0: nothing predicted yet
    model_version: int | None = None
    embeddings: bool = False
    # The block in view only, the whole AOI's version follows: a new AOI's first block (its whole pass runs, or failed
    # after it: no embeddings, not for retrains), or a retrain's first re-predicted block (its cache stays usable).
    partial: bool = False


class ImageryInfo(BaseModel):
    state: Literal["missing", "building", "ready", "error"] = "missing"
    message: str = ""
    bounds: tuple[float, float, float, float] | None = None
    # The shared mosaic the project reads (Layout.shared_imagery); None: the project's own (projects of before).
    digest: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class ProjectState(BaseModel):
    current_model: int | None = None
    next_model_id: int = 0
    # (The model versions are rows of their own: StateStore.version / versions / change.)
    aois: dict[int, AoiLayer] = Field(default_factory=dict)
    imagery: ImageryInfo = Field(default_factory=ImageryInfo)
    strategy: str = DEFAULT_STRATEGY  # ml.strategies name used by this project's retrains
    # The registered base version (`model_slug`) whose backbone made the AOI caches: they then live where the
    # Dagster loop keeps that backbone's caches (Layout.aoi_embeddings), one cache per AOI for both loops.
    # None (a base model that is not a registered version, or a project of before): under the project's folder.
    embeddings_slug: str | None = None
    # The app process logging the project's versions to MLflow, until when (services/version_store.py): one at a time.
    publisher: str | None = None
    publisher_until: dt.datetime | None = None
    # What the last label run submitted to Dagster saw ("<label event id>/<newest version logged to MLflow>",
    # review_app/label_runs.py): a burst of labels through several app processes submits one run.
    label_run: str | None = None


class StateStore:
    """Load-modify-save of project states, on the label store's database (pearl_pipelines/labels/app_state.py): every
    app process reads the same document, and `update()` holds the project's row lock for the whole change, so two
    processes (or threads) never lose each other's change. A project's `state.json` of before is adopted on first read.
    """

    def __init__(self, home: Path, store: LabelStore) -> None:
        self.home = Path(home)
        self.layout = Layout.at(self.home)
        self.db = AppState(store)
        # Where published AOI maps, model versions and AOI embedding caches also go (PEARL_STORAGE_URL; set by the
        # container): app processes with disks of their own read there what another one wrote. None: local files only.
        self.objects: ObjectStore | None = None
        # One download of a folder at a time in this process (no doubles); downloads of different folders (an AOI's
        # cache, a mosaic, a model version) run side by side.
        self._fetch_locks: dict[Path, threading.Lock] = {}
        self._fetch_guard = threading.Lock()
        # Tile requests ask for a project's imagery mosaic dozens of times a second: its name is kept for a moment.
        self._imagery: dict[int, tuple[float, Path, str | None]] = {}  # project -> (when, mosaic, its digest)
        # Paints the project's map patches into a new AOI map (review_app/services/patches.py; set by the container):
        # (project_id, aoi_id, layer version, AOI lon/lat GeoJSON) -> None. None: maps are published as predicted.
        self.map_patcher: Callable[[int, int, int, Mapping[str, Any]], None] | None = None

    def paths(self, project_id: int) -> ProjectPaths:
        return ProjectPaths.of(self.home, project_id)

    def fetching(self, directory: Path) -> threading.Lock:
        """The lock of downloads into `directory` (one per folder, kept: a project has a bounded number of them)."""
        with self._fetch_guard:
            return self._fetch_locks.setdefault(Path(directory), threading.Lock())

    @property
    def remote(self) -> ObjectStore | None:
        """The object store when it is remote (what other processes' disks share); None: local files only."""
        return self.objects if self.objects is not None and self.objects.remote else None

    @property
    def files(self) -> StoredFiles:
        """This PEARL_HOME's files mirrored to the remote store: the Dagster loop's mechanism, shared."""
        return StoredFiles(self.layout, self.remote)

    def workspace(self, project_id: int) -> ProjectWorkspace:
        return ProjectWorkspace(project_id, self.paths(project_id), self)

    def get(self, project_id: int) -> ProjectState:
        document = self.db.document(project_id)
        if document is not None:
            return ProjectState.model_validate(document)
        if self.paths(project_id).state.is_file():  # a project of before: its state.json goes to the database
            with self.update(project_id) as state:
                return state
        return ProjectState()

    def _legacy(self, project_id: int) -> tuple[ProjectState, list[ModelVersionInfo]] | None:
        """The state.json a project of before kept in its folder, and the model versions it held (adopted into the
        database by the next save)."""
        path = self.paths(project_id).state
        if not path.is_file():
            return None
        document = json.loads(path.read_text())
        models = document.pop("models", None) or {}
        return ProjectState.model_validate(document), [ModelVersionInfo.model_validate(m) for m in models.values()]

    def update(self, project_id: int) -> _StateUpdate[ProjectState]:
        """`with update(pid) as state:` the session state under the project's row lock, saved on a clean exit."""
        return _StateUpdate(self, project_id, lambda change: change.state)

    def change(self, project_id: int) -> _StateUpdate[StateChange]:
        """`update`, with the project's model versions to read and write in the same transaction."""
        return _StateUpdate(self, project_id, lambda change: change)

    # -- model versions -----------------------------------------------------------------------------------------
    def version(self, project_id: int, number: int | None) -> ModelVersionInfo | None:
        """Model version `number` of the project; None when it has none of that number (or `number` is None)."""
        return _version_info(self.db.version(project_id, number) if number is not None else None)

    def current_version(self, project_id: int, state: ProjectState | None = None) -> ModelVersionInfo | None:
        """The version the session state names as current (`state`: the one the caller read already)."""
        return self.version(project_id, (state or self.get(project_id)).current_model)

    def versions(self, project_id: int, *, named: bool = False) -> dict[int, ModelVersionInfo]:
        """The project's model versions by number, oldest first (`named`: checkpoints only)."""
        infos = (ModelVersionInfo.model_validate(d) for d in self.db.versions(project_id, named=named))
        return {info.id: info for info in infos}

    def version_entries(self, project_id: int) -> list[VersionEntry]:
        """Number, name, MLflow version and whether final of each model version (no documents read), oldest first."""
        return self.db.version_entries(project_id)

    def imagery_path(self, project_id: int) -> Path:
        """The imagery mosaic the project reads (shared by its source, or its own): what every reader of a project's
        imagery asks for (tile routes, inference). Cheap enough for every tile request: the answer is kept for
        IMAGERY_TTL_S (a mosaic is built once per source, so a new one shows on other processes within that). A
        shared mosaic another process built may be only in the object store: readers read it there in place
        (`stored_mosaic`), it is never downloaded whole."""
        now = time.monotonic()
        kept = self._imagery.get(project_id)
        if kept is not None and now - kept[0] < IMAGERY_TTL_S:
            return kept[1]
        digest = self.get(project_id).imagery.digest
        path = self.paths(project_id).imagery_mosaic(digest)
        self._imagery[project_id] = (now, path, digest)
        return path

    def stored_mosaic(self, path: Path) -> tuple[str, dict[str, Any]] | None:
        """A shared imagery mosaic missing on this disk that another app process published to the remote store: the
        name GDAL reads it by in place (/vsis3/...) and the `rasterio.Env` options it reads under; None when it is
        here or not there."""
        store = self.remote
        if store is None or path.is_file() or not self.files.stored(path):
            return None
        return store.gdal_path(self.stored_key(path)), store.gdal_env()

    def publish_mosaic(self, path: Path) -> None:
        """A shared imagery mosaic this process built, to the remote store for the other processes (no-op locally)."""
        if not self.files.stored(path):  # (StoredFiles: no-op without a remote store)
            self.files.publish(path.parent, last=(path.name,))

    # -- other folders of a project under PEARL_HOME (share snapshots, map folders, checkpoint maps) --------------
    def stored_key(self, path: Path) -> str:
        """The layout key of a path under PEARL_HOME."""
        return self.files.key(path)

    def publish_folder(self, directory: Path, *, last: tuple[str, ...] = ()) -> None:
        """A folder this process wrote, to the remote store (the files named in `last` after the others), for the
        processes with disks of their own. No-op without a remote store."""
        if directory.is_dir():
            self.files.publish(directory, last=last)

    def publish_files(self, directory: Path, names: tuple[str, ...]) -> None:
        """The files `names` of a folder (those present) to the remote store; no-op without one."""
        for name in names:
            if (directory / name).is_file():
                self.files.publish(directory / name)

    def fetch_folder(self, directory: Path, *, marker: str | None = None) -> bool:
        """A folder missing on this disk, downloaded whole from the remote store when another process published it
        there (`marker`: its file written last). Whether it is here now. A folder here counts as here, with or
        without its marker: this process may be writing it."""
        if self.remote is None or directory.is_dir():
            return directory.is_dir()
        with self.fetching(directory):
            if not directory.is_dir():
                self.files.try_local(directory, marker=marker)
        return directory.is_dir()

    def delete_stored(self, directory: Path) -> int:
        """Remove the folder's objects from the remote store (how many); 0 without a remote store."""
        store = self.remote
        return store.delete(self.stored_key(directory)) if store is not None else 0


@dataclass(frozen=True)
class ProjectWorkspace:
    """One project's files and session state: what a job body reads and writes (and nothing of other projects)."""

    project_id: int
    paths: ProjectPaths
    states: StateStore

    def state(self) -> ProjectState:
        return self.states.get(self.project_id)

    def update(self) -> _StateUpdate[ProjectState]:
        return self.states.update(self.project_id)

    def patch_map(self, aoi_id: int, version: int, geometry: Mapping[str, Any]) -> None:
        """Paint the project's map patches into the AOI's map `version` before it is published (`map_patcher`)."""
        if self.states.map_patcher is not None:
            self.states.map_patcher(self.project_id, aoi_id, version, geometry)

    def embeddings_dir(self, aoi_id: int, state: ProjectState | None = None) -> Path:
        """The AOI's embedding cache: shared with the Dagster loop when the base is a registered version.
        `state`: the project state the caller read already (a read copies it)."""
        slug = (state or self.state()).embeddings_slug
        if slug is None:
            return self.paths.embeddings_dir(aoi_id)
        return self.paths.layout.path(Layout.aoi_embeddings(slug, aoi_id))

    def change(self) -> _StateUpdate[StateChange]:
        return self.states.change(self.project_id)

    def checkpoint(self, version: int) -> ModelVersionInfo:
        """A model version of the project with its files on disk, in the object store or in MLflow, or KeyError."""
        info = self.states.version(self.project_id, version)
        if info is None or not (self.has_version(version) or info.mlflow_version):
            raise KeyError(f"no checkpoint {version} in project {self.project_id}")
        return info

    # -- with a remote object store, what one process writes the others read (each may have a disk of its own) ----
    def publish_version(self, number: int) -> None:
        """Upload model version `number`'s folder (just saved) to its layout keys, version.json last: before the
        session state names it, so that another process can always fetch what the state names. No-op without a
        remote store."""
        from pearl_pipelines.ml.versions import VERSION_FILE

        self.states.publish_folder(self.paths.version_dir(number), last=(VERSION_FILE,))

    def local_version_dir(self, number: int) -> Path:
        """Model version `number`'s folder here, fetched from the remote store first when it is not on this disk
        (it may be in neither: the caller checks)."""
        from pearl_pipelines.ml.versions import VERSION_FILE

        directory = self.paths.version_dir(number)
        self.states.fetch_folder(directory, marker=VERSION_FILE)
        return directory

    def has_version(self, number: int) -> bool:
        """Model version `number`'s folder is on this disk or in the remote store (nothing downloaded)."""
        from pearl_pipelines.ml.versions import VERSION_FILE

        directory = self.paths.version_dir(number)
        return directory.is_dir() or self.states.files.stored(directory / VERSION_FILE)

    def local_map_dir(self, aoi_id: int, version: int) -> Path:
        """The AOI's map folder `version` here (class and confidence COGs, and the model's output kept beside a
        patched map), fetched from the remote store first when it is not on this disk (it may be in neither)."""
        directory = self.paths.prediction_dir(aoi_id, version)
        self.states.fetch_folder(directory, marker=CLASSES_FILE)
        return directory

    def ensure_local_cache(self, aoi_id: int, state: ProjectState | None = None) -> Path:
        """The AOI's embedding cache folder (`embeddings_dir`), downloaded from the remote store's chunks first when
        it is not complete on this disk (ml/chunked_cache.py: the same memmap format, so `cache_complete` and
        `loop.open_cache` read it unchanged). Where neither has it, the folder stays without a complete cache."""
        directory = self.embeddings_dir(aoi_id, state)
        store = self.states.remote
        if store is None or cache_complete(directory):
            return directory
        from pearl_pipelines.ml.chunked_cache import download_cache

        with self.states.fetching(directory):
            if not cache_complete(directory):
                with contextlib.suppress(FileNotFoundError):  # not in the store either
                    download_cache(store, self.paths.layout.key(directory), directory)
        return directory

    def has_cache(self, aoi_id: int, state: ProjectState | None = None) -> bool:
        """The AOI's embedding cache is complete on this disk or in the remote store (nothing downloaded)."""
        directory, store = self.embeddings_dir(aoi_id, state), self.states.remote
        if cache_complete(directory) or store is None:
            return cache_complete(directory)
        return store.exists(f"{self.paths.layout.key(directory)}/{EMBEDDINGS_META}")


def _version_info(document: dict[str, Any] | None) -> ModelVersionInfo | None:
    return ModelVersionInfo.model_validate(document) if document is not None else None


class StateChange:
    """A project's session state and model versions under its row lock (`StateStore.change`): what is read here is
    what the change is made to; versions put are written with the state, when the block ends without error."""

    def __init__(self, state: ProjectState, locked: Any) -> None:
        self.state, self._locked = state, locked

    def version(self, number: int | None) -> ModelVersionInfo | None:
        return _version_info(self._locked.version(number) if number is not None else None)

    def version_entries(self) -> list[VersionEntry]:
        return self._locked.version_entries()

    def put_version(self, info: ModelVersionInfo) -> None:
        """Insert version `info.id`, or replace it (a version read here, changed and put back)."""
        document = info.model_dump(mode="json")
        self._locked.put_version(VersionWrite(info.id, document, info.name, info.mlflow_version, info.final))


class _StateUpdate(Generic[T]):
    """`with store.update(pid) as state: ...` (or `store.change(pid) as change`) -> saved on a clean exit, discarded
    on an exception. The project's row lock is held from the read to the write (keep the block short: no slow work,
    no other database writes)."""

    def __init__(self, store: StateStore, project_id: int, give: Callable[[StateChange], T]) -> None:
        self.store, self.project_id, self._give = store, project_id, give
        self._locked: contextlib.AbstractContextManager[Any] | None = None

    def __enter__(self) -> T:
        self._locked = self.store.db.locked_document(self.project_id)
        document = self._locked.__enter__()
        self._document = document
        if document.document is not None:
            state = ProjectState.model_validate(document.document)
            self.change = StateChange(state, document)
        else:
            legacy = self.store._legacy(self.project_id)
            self.change = StateChange(legacy[0] if legacy else ProjectState(), document)
            for info in legacy[1] if legacy else []:
                self.change.put_version(info)
        return self._give(self.change)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self._locked is not None
        if exc_type is None:
            self._document.save(self.change.state.model_dump(mode="json"))
            self.store._imagery.pop(self.project_id, None)
        self._locked.__exit__(exc_type, exc, tb)
