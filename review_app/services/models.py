"""A project's model versions: live retrain, checkpoints (a name for a version, logged to MLflow when it is up),
and restoring one. The version folders under the project are the source of truth; MLflow is a copy."""

from __future__ import annotations

import functools
import logging
import threading

from pearl_pipelines.labels.store import LabelStore, LabelStoreError
from pearl_pipelines.ml.versions import ModelVersion
from pearl_pipelines.settings import Settings
from review_app import tasks
from review_app.jobs import Job, JobRunner
from review_app.services.aois import AoiService
from review_app.services.classes import ClassSchemas
from review_app.services.errors import Conflict
from review_app.services.model_cache import ModelCache
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
    ) -> None:
        self.settings, self.store, self.states = settings, store, states
        self.classes, self.model_cache, self.aois, self.runner = classes, model_cache, aois, runner

    def start_retrain(self, project_id: int, aoi_id: int | None) -> Job:
        self.model_cache.require(project_id)
        if aoi_id is not None:
            self.aois.get(project_id, aoi_id)
        ws, slot = self.states.workspace(project_id), self.model_cache.slot(project_id)
        tasks.check_retrain(ws, store=self.store, model=slot)  # refuse an empty/unusable retrain now, as a 4xx
        schema_of = functools.partial(self.classes.get, project_id)
        return self.runner.submit(
            project_id,
            "retrain",
            lambda ctx: tasks.run_retrain(ctx, ws, aoi_id, store=self.store, model=slot, schema_of=schema_of),
            aoi_id=aoi_id,
        )

    def start_restore(self, project_id: int, version: int) -> Job:
        self.checkpoint_info(project_id, version)
        ws, slot = self.states.workspace(project_id), self.model_cache.slot(project_id)
        schema_of = functools.partial(self.classes.get, project_id)
        return self.runner.submit(
            project_id, "restore", lambda ctx: tasks.run_restore(ctx, ws, version, model=slot, schema_of=schema_of)
        )

    def checkpoint_info(self, project_id: int, version: int) -> ModelVersionInfo:
        self.store.get_project(project_id)
        return self.states.workspace(project_id).checkpoint(version)

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
        from pearl_pipelines.ml.registry import log_checkpoint  # MLflow: imported when a checkpoint is logged

        directory = self.states.paths(project_id).version_dir(version)
        try:
            mlflow_version = log_checkpoint(
                self.settings.resolved_mlflow_uri,
                self.store.get_project(project_id).name,
                name,
                ModelVersion.load(directory),
                ModelVersion.load_labels(directory),
            )
        except Exception as exc:  # MLflow is optional locally: the checkpoint folder is the source of truth
            log.info("checkpoint %s not logged to MLflow: %s", name, exc)
            return
        with self.states.update(project_id) as state:
            state.models[version].mlflow_version = mlflow_version
