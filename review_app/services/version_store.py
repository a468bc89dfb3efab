"""MLflow as the project's version store: every finished model version the review app makes becomes a version of
the registered model `pearl-project-<id>` (the name the Dagster loop registers under too), with its lineage.

- A version is logged once its retrain finished (metrics computed), head only: its lineage's `base_model` names the
  starter version whose backbone it sits on, so any worker can rebuild the full model (`ml.registry.load_registered`).
- Tags (`ml.lineage.Lineage`; `ml.lineage.register_version` registers it, as in the Dagster worker): parent (app
  and engine ids, and its MLflow version), the label set (engine digest and the label store's), strategy, source
  `review-app`; the run holds params, metrics, the confusion matrix, the head and its labels.
- Aliases: `current` follows the model the mapper maps with; a named checkpoint is `checkpoint-<name>`.
- The app keeps a small local cache: the newest `KEEP_LOCAL` versions, the current one and the named checkpoints;
  older published versions are read back from MLflow when restored.
- MLflow down: versions wait (`mlflow_version` unset in the project state) and are logged when it answers again,
  retried every `RETRY_S` and at start-up. The app never waits for MLflow.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import threading
import uuid
from collections.abc import Callable

from pearl_pipelines.labels.patches import PatchStore
from pearl_pipelines.labels.store import LabelStore
from pearl_pipelines.ml.lineage import Lineage, ModelRegistry
from pearl_pipelines.ml.refs import (
    CURRENT_ALIAS,
    PREFIX,
    checkpoint_alias,
    model_uri,
    parse_model_uri,
    project_model_name,
)
from pearl_pipelines.settings import Settings
from review_app.workspace import StateStore

log = logging.getLogger(__name__)
RETRY_S = 15.0  # while versions wait for MLflow, try again this often
PUBLISH_LEASE_S = 300.0  # a process that died while logging versions gives the others its turn after this
KEEP_LOCAL = 5  # newest versions kept on disk besides the current one and the named checkpoints


class MlflowDown(Exception):
    pass


class VersionPublisher:
    """One background thread that logs projects' pending versions to MLflow, in order, and moves their aliases."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: LabelStore,
        states: StateStore,
        on_published: Callable[[int], None] = lambda project_id: None,
    ) -> None:
        self.settings, self.store, self.states, self.on_published = settings, store, states, on_published
        self._wake = threading.Condition()
        self._requested: set[int] = set()
        self._waiting: set[int] = set()  # projects whose versions wait for MLflow
        self._closed = False
        self.owner = uuid.uuid4().hex  # this process, as the holder of publishing leases
        self._thread = threading.Thread(target=self._run, daemon=True, name="pearl-version-store")
        self._thread.start()

    def request(self, project_id: int) -> None:
        """Log the project's pending versions and move its aliases, soon (never blocks)."""
        with self._wake:
            self._requested.add(project_id)
            self._wake.notify()

    def pending(self, project_id: int) -> list[int]:
        """App version numbers of the project that are finished but not in MLflow yet."""
        return [e.number for e in self.states.version_entries(project_id) if e.final and e.mlflow_version is None]

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._wake:
                if not self._requested and not self._closed:
                    self._wake.wait(timeout=RETRY_S if self._waiting else None)
                if self._closed:
                    return
                todo = sorted(self._requested | self._waiting)
                self._requested.clear()
            for project_id in todo:
                try:
                    published = self.publish(project_id)
                except MlflowDown as exc:
                    log.info("project %s: versions wait for MLflow (%s)", project_id, exc)
                    self._waiting.add(project_id)
                    continue
                except Exception:  # one project's trouble must not stop the others: logged, retried later
                    log.exception("project %s: logging versions to MLflow failed", project_id)
                    self._waiting.add(project_id)
                    continue
                self._waiting.discard(project_id)
                if published:
                    self.on_published(project_id)

    def publish(self, project_id: int) -> int:
        """Log the project's finished versions that MLflow lacks (parents first), set its aliases, trim the local
        cache. Returns how many versions were logged; MlflowDown when the tracking server does not answer."""
        from pearl_pipelines.ml.tracking import mlflow_reachable

        uri = self.settings.resolved_mlflow_uri
        if not mlflow_reachable(uri):
            raise MlflowDown(f"no answer from {uri}")
        if not self._lease(project_id, PUBLISH_LEASE_S):
            return 0  # another app process is logging this project's versions (each is logged once)
        try:
            return self._publish(project_id, uri)
        finally:
            self._lease(project_id, 0.0)

    def _lease(self, project_id: int, seconds: float) -> bool:
        """Take (seconds > 0) or give back (0) the project's publishing lease in the shared session state: one app
        process at a time logs a project's versions. False: another process holds it and it has not expired."""
        now = dt.datetime.now(dt.UTC)
        with self.states.update(project_id) as state:
            held = state.publisher is not None and state.publisher != self.owner
            if seconds and held and state.publisher_until is not None and state.publisher_until > now:
                return False
            if seconds:
                state.publisher, state.publisher_until = self.owner, now + dt.timedelta(seconds=seconds)
            elif not held:
                state.publisher, state.publisher_until = None, None
            return True

    def _publish(self, project_id: int, uri: str) -> int:
        from pearl_pipelines.ml.lineage import log_patches, register_version
        from pearl_pipelines.ml.versions import ModelVersion

        ws = self.states.workspace(project_id)
        name = project_model_name(project_id)
        base_uri = self._base_uri(project_id)
        published = 0
        for number in self.pending(project_id):
            info = self.states.version(project_id, number)
            directory = ws.local_version_dir(number)  # another process's (remote store): fetched
            if info is None or not directory.is_dir():
                continue
            parent = self.states.version(project_id, info.parent)  # again each time: the parent was just logged
            parent_uri = model_uri(name, parent.mlflow_version) if parent and parent.mlflow_version else base_uri
            # The map patches in force when the version was made: drawn over its maps (services/patches.py).
            patches = PatchStore(self.store).live(project_id, at=info.created_at)
            registered = register_version(
                uri,
                ModelVersion.load(directory),
                Lineage(
                    project_id=project_id,
                    base_model=base_uri,
                    parent_model=parent_uri,
                    app_version=number,
                    label_store_digest=info.label_store_digest or "",
                    source="review-app",
                    patches_digest=PatchStore.digest_of(patches) if patches else None,
                ),
                labels=ModelVersion.load_labels(directory),
                description=f"project {project_id}: review-app model v{number} ({info.n_labels} labels)",
            )
            if patches and registered.run_id:
                log_patches(uri, registered.run_id, PatchStore.geojson_of(patches))
            with self.states.change(project_id) as change:
                logged = change.version(number)
                if logged is not None:
                    change.put_version(logged.model_copy(update={"mlflow_version": str(registered.version)}))
            published += 1
        registry = ModelRegistry(uri)
        current = self.states.current_version(project_id)
        if current is not None and current.mlflow_version:
            registry.set_alias(name, CURRENT_ALIAS, current.mlflow_version)
        for entry in self.states.version_entries(project_id):
            if entry.name and entry.mlflow_version:
                registry.set_alias(name, checkpoint_alias(entry.name), entry.mlflow_version)
        self._trim_local(project_id)
        return published

    def _base_uri(self, project_id: int) -> str:
        """The project's base model as a version number (`models:/name/N`): heads name the backbone they need."""
        ref = self.store.get_project(project_id).base_model
        if not ref.startswith(PREFIX):
            return ref
        name, alias = parse_model_uri(ref)
        try:
            return model_uri(name, ModelRegistry(self.settings.resolved_mlflow_uri).resolve(name, alias).version)
        except KeyError:  # the starter is not registered here (the app runs on a local copy): keep the reference
            return ref

    def _trim_local(self, project_id: int) -> None:
        """Delete the local files of published versions that are neither recent, current nor named. This disk's copy
        only: the object store's (PEARL_STORAGE_URL) stays, the copy other processes fetch while the version exists."""
        entries = self.states.version_entries(project_id)
        keep = {e.number for e in entries[-KEEP_LOCAL:]} | {self.states.get(project_id).current_model, 0}
        for entry in entries:
            if entry.number not in keep and entry.mlflow_version and not entry.name:
                shutil.rmtree(self.states.paths(project_id).version_dir(entry.number), ignore_errors=True)
