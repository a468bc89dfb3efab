"""A project's model versions: live retrain, checkpoints (a name for a version: an MLflow alias), and restoring
one. MLflow is the version store (services/version_store.py logs every finished version); the version folders under
the project are its local cache, and a version no longer cached is read back from MLflow."""

from __future__ import annotations

import functools
import logging
import tempfile
from pathlib import Path

from pearl_pipelines.labels.store import LabelStore, LabelStoreError
from pearl_pipelines.ml.refs import checkpoint_alias, project_model_name
from pearl_pipelines.ml.versions import ModelVersion
from pearl_pipelines.settings import Settings
from review_app import tasks
from review_app.jobs import Job, JobRunner
from review_app.schemas import MetricsOut
from review_app.services.aois import AoiService
from review_app.services.classes import ClassSchemas
from review_app.services.errors import Conflict
from review_app.services.model_cache import ModelCache
from review_app.services.version_store import VersionPublisher
from review_app.workspace import ModelVersionInfo, StateStore

log = logging.getLogger(__name__)


class ModelService:
    def __init__(
        self,
        *,
        settings: Settings,
        store: LabelStore,
        states: StateStore,
        classes: ClassSchemas,
        model_cache: ModelCache,
        aois: AoiService,
        runner: JobRunner,
        publisher: VersionPublisher,
    ) -> None:
        self.settings, self.store, self.states = settings, store, states
        self.classes, self.model_cache, self.aois, self.runner = classes, model_cache, aois, runner
        self.publisher = publisher

    def start_retrain(
        self, project_id: int, aoi_id: int | None, view: tuple[float, float, float, float] | None = None
    ) -> Job:
        """A live retrain; `aoi_id` (the AOI in view) is re-predicted first, and of a large one first the block
        around the centre of `view` (lon/lat west, south, east, north: the mapper's map)."""
        self.model_cache.require(project_id)
        if aoi_id is not None:
            self.aois.get(project_id, aoi_id)
        ws, slot = self.states.workspace(project_id), self.model_cache.slot(project_id)
        tasks.check_retrain(ws, store=self.store, model=slot)  # refuse an empty/unusable retrain now, as a 4xx
        schema_of = functools.partial(self.classes.get, project_id)
        return self.runner.submit(
            project_id,
            "retrain",
            lambda ctx: tasks.run_retrain(
                ctx,
                ws,
                aoi_id,
                store=self.store,
                model=slot,
                schema_of=schema_of,
                finished=functools.partial(self.publisher.request, project_id),
                view=view,
            ),
            aoi_id=aoi_id,
        )

    def start_restore(self, project_id: int, version: int) -> Job:
        self.checkpoint_info(project_id, version)
        ws, slot = self.states.workspace(project_id), self.model_cache.slot(project_id)
        schema_of = functools.partial(self.classes.get, project_id)
        head = self.load_version(project_id, version)
        return self.runner.submit(
            project_id,
            "restore",
            lambda ctx: tasks.run_restore(
                ctx,
                ws,
                version,
                head,
                store=self.store,
                model=slot,
                schema_of=schema_of,
                finished=functools.partial(self.publisher.request, project_id),
            ),
        )

    def load_version(self, project_id: int, number: int) -> ModelVersion:
        """A version's head from the local cache (fetched from the remote object store when another process made
        it), else from MLflow (put back into the cache)."""
        directory = self.states.workspace(project_id).local_version_dir(number)
        if directory.is_dir():
            return ModelVersion.load(directory)
        info = self.checkpoint_info(project_id, number)
        from pearl_pipelines.ml.registry import download_version  # MLflow: imported when it is needed
        from pearl_pipelines.ml.tracking import mlflow_reachable

        uri = self.settings.resolved_mlflow_uri
        if not info.mlflow_version or not mlflow_reachable(uri):
            raise Conflict(f"model v{number} is kept in MLflow only, and MLflow does not answer at {uri}; try later")
        with tempfile.TemporaryDirectory(prefix="pearl-version-") as tmp:
            version = download_version(uri, project_model_name(project_id), info.mlflow_version, Path(tmp))
        version.save(directory)
        return version

    def strategy(self, project_id: int) -> str:
        """The retraining strategy of the project (ml/strategies.py name)."""
        return self.states.get(project_id).strategy

    def set_strategy(self, project_id: int, strategy: str) -> None:
        """How the next retrains fit their head (the current map stays until the next retrain)."""
        with self.states.update(project_id) as state:
            state.strategy = strategy

    def current_version(self, project_id: int) -> int | None:
        return self.states.get(project_id).current_model

    def checkpoints(self, project_id: int, *, all_versions: bool = False) -> list[ModelVersionInfo]:
        """Saved checkpoints (and the base model), newest first, with the current model always among them;
        `all_versions` adds the unnamed retrain versions."""
        current = self.states.get(project_id).current_model
        versions = self.states.versions(project_id, named=not all_versions)
        if current is not None and current not in versions:
            info = self.states.version(project_id, current)
            versions.update({current: info} if info is not None else {})
        return sorted(versions.values(), key=lambda m: m.id, reverse=True)

    def metrics(self, project_id: int) -> MetricsOut:
        """The current model's metrics, or empty ones saying what is missing."""
        state = self.states.get(project_id)
        info = self.states.current_version(project_id, state)
        if info is not None and info.metrics is not None:
            return info.metrics
        return MetricsOut.empty(
            state.current_model,
            n_labels=len(self.store.list_labels(project_id)),
            message="no metrics yet: add labels of two classes or more and retrain",
        )

    def checkpoint_info(self, project_id: int, version: int) -> ModelVersionInfo:
        self.store.get_project(project_id)
        return self.states.workspace(project_id).checkpoint(version)

    def save_checkpoint(self, project_id: int, name: str) -> ModelVersionInfo:
        name = name.strip()
        if not name:
            raise LabelStoreError("a checkpoint needs a name")
        with self.states.change(project_id) as change:
            info = change.version(change.state.current_model)
            if info is None:
                raise Conflict("there is no model to save yet")
            if any(e.name and checkpoint_alias(e.name) == checkpoint_alias(name) for e in change.version_entries()):
                raise LabelStoreError(f"a checkpoint named {name!r} exists already; pick another name")
            info.name = name
            change.put_version(info)
        self.publisher.request(project_id)  # the checkpoint's alias in MLflow (once the version is there)
        return info
