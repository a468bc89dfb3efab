"""Thin helpers around `mlflow.MlflowClient` for the model registry: register, alias, load.

A registered version's source is the run's `model/` artifact folder, which holds one self-describing
`model.pt` (see `models.save_model`) and optional extras (the replay set). Promotion moves aliases
(`starter`, `champion`); MLflow stages are deprecated. References are parsed in `ml.refs`.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from pearl_pipelines.ml import versions
from pearl_pipelines.ml.models import MODEL_FILE, LandcoverModel, load_model, save_model
from pearl_pipelines.ml.refs import model_uri, parse_model_uri, project_model_name
from pearl_pipelines.ml.replay import REPLAY_FILE, ReplaySet
from pearl_pipelines.ml.tracking import CHECKPOINT_ARTIFACT_DIR, TAG_LABEL_SET, TAG_PARENT, TAG_VERSION, log_version

MODEL_ARTIFACT_PATH = "model"  # run artifact folder that a model version points at
READY_FILE = ".complete"  # in a downloaded version's folder: the download finished (holds model.pt's path)


@dataclass
class ModelRegistry:
    """Registered models on one MLflow tracking server."""

    tracking_uri: str
    _client: MlflowClient | None = field(default=None, init=False, repr=False)

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def register(
        self,
        name: str,
        run_id: str,
        *,
        artifact_path: str = MODEL_ARTIFACT_PATH,
        aliases: Iterable[str] = (),
        tags: dict[str, str] | None = None,
        description: str | None = None,
    ) -> ModelVersion:
        """Create `name` if needed, add a version whose source is the run's `artifact_path`, set `aliases`."""
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(name, description=description)
        version = self.client.create_model_version(
            name, f"runs:/{run_id}/{artifact_path}", run_id=run_id, tags=tags, description=description
        )
        for alias in aliases:
            self.set_alias(name, alias, version.version)
        return self.client.get_model_version(name, version.version)

    def set_alias(self, name: str, alias: str, version: str | int) -> None:
        self.client.set_registered_model_alias(name, alias, str(version))

    def get_version(self, name: str, alias: str) -> ModelVersion | None:
        """The version holding `alias`, or None when the model or the alias does not exist."""
        try:
            return self.client.get_model_version_by_alias(name, alias)
        except MlflowException:
            return None

    def set_alias_if_missing(self, name: str, alias: str, version: str | int) -> bool:
        """Give `alias` to `version` unless some version already holds it (first model becomes champion)."""
        if self.get_version(name, alias) is not None:
            return False
        self.set_alias(name, alias, version)
        return True

    def resolve(self, name: str, alias_or_version: str | int) -> ModelVersion:
        """The registered version behind an alias or a version number (KeyError when there is none)."""
        ref = str(alias_or_version)
        try:
            if ref.isdigit():
                return self.client.get_model_version(name, ref)
            return self.client.get_model_version_by_alias(name, ref)
        except MlflowException as exc:
            raise KeyError(f"{model_uri(name, ref)} does not exist on {self.tracking_uri}: {exc.message}") from exc

    def download(self, name: str, alias_or_version: str | int, dst: Path) -> Path:
        """Download a version's model folder into `dst`; returns the local folder that holds `model.pt`.

        Resolves the version with this client and downloads its source, so MLflow's process-wide
        registry URI (which `models:/` URIs would need) is never touched.
        """
        version = self.resolve(name, alias_or_version)
        dst.mkdir(parents=True, exist_ok=True)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=version.source, dst_path=str(dst), tracking_uri=self.tracking_uri
        )
        return Path(local)

    def load_model(
        self, name: str, alias_or_version: str | int = "champion", cache_dir: Path | None = None
    ) -> LandcoverModel:
        """`models:/name@alias` (or a version number) as a LandcoverModel in eval mode, read without unpickling code."""
        if cache_dir is not None:
            return load_model(self.download(name, alias_or_version, cache_dir) / MODEL_FILE)
        with tempfile.TemporaryDirectory(prefix="pearl-model-") as tmp:
            return load_model(self.download(name, alias_or_version, Path(tmp)) / MODEL_FILE)


# -- a project's versions: one registered model per project, head-only versions on a registered base ------------
TAG_BASE_MODEL_URI = "pearl.base_model"  # models:/name/N of the version whose backbone a head-only version uses
TAG_PROJECT = "pearl.project_id"


def register_head(
    tracking_uri: str,
    project_id: int,
    version: versions.ModelVersion,
    *,
    base_uri: str,
    labels: gpd.GeoDataFrame | None,
    tags: dict[str, str] | None = None,
    run_tags: dict[str, str] | None = None,
    aliases: Iterable[str] = (),
    description: str | None = None,
) -> ModelVersion:
    """Log `version` (run: params, metrics, confusion matrix, checkpoint = head + labels) and register it as a
    version of `project_model_name(project_id)`. The backbone is not copied: `base_uri` names the registered
    version it sits on, and `load_registered` composes the two."""
    tags = {
        TAG_VERSION: version.id,
        TAG_PARENT: version.parent_id or "",
        TAG_LABEL_SET: version.label_set_digest or "",
        TAG_BASE_MODEL_URI: base_uri,
        TAG_PROJECT: str(project_id),
        "pearl.strategy": version.strategy,
        **(tags or {}),
    }
    run_id = log_version(version, tracking_uri=tracking_uri, labels=labels, tags={**tags, **(run_tags or {})})
    return ModelRegistry(tracking_uri).register(
        project_model_name(project_id),
        run_id,
        artifact_path=CHECKPOINT_ARTIFACT_DIR,
        aliases=aliases,
        tags=tags,
        description=description,
    )


# -- a worker's local copies of registered versions ----------------------------------------------------------
def model_dir(cache_root: Path, name: str, version: str | int) -> Path:
    return Path(cache_root) / name / f"v{version}"


_download_locks: dict[Path, threading.Lock] = {}
_download_locks_guard = threading.Lock()


def _download_lock(local: Path) -> threading.Lock:
    """One lock per version folder: threads of one process (the review app's projects) download a version once."""
    with _download_locks_guard:
        return _download_locks.setdefault(local, threading.Lock())


def registered_folder(tracking_uri: str, name: str, version: str | int, cache_root: Path) -> Path:
    """The local folder holding a registered version's `model.pt` (and `replay.npz` when it logged one), downloaded
    once into `cache_root` and reused after: one copy per version for every project and worker on this machine.

    A starter version holds a whole `model.pt`; a project's version holds only its head (a checkpoint) and names
    its base in the `pearl.base_model` tag: the base is fetched the same way and the head set on it. Nothing here
    unpickles code: models are read with `load_model` (weights_only)."""
    local = model_dir(cache_root, name, version)
    with _download_lock(local):
        if not (local / READY_FILE).is_file():
            registry = ModelRegistry(tracking_uri)
            downloaded = registry.download(name, version, local)
            found = next(downloaded.rglob(MODEL_FILE), None)
            if found is None:
                checkpoint = _checkpoint_in(downloaded)
                base_uri = (registry.client.get_model_version(name, str(version)).tags or {}).get(TAG_BASE_MODEL_URI)
                if checkpoint is None or not base_uri:
                    raise FileNotFoundError(
                        f"{model_uri(name, version)} has neither {MODEL_FILE} nor a head and its base"
                    )
                base_name, base_version = parse_model_uri(base_uri)
                base = load_registered(tracking_uri, base_name, base_version, cache_root)
                found = local / MODEL_FILE
                save_model(versions.ModelVersion.load(checkpoint).to_model(base), found)
            (local / READY_FILE).write_text(str(found.relative_to(local)))
    return _ready_model_file(local).parent


def _ready_model_file(local: Path) -> Path:
    """The model file a downloaded version folder's READY_FILE names; ValueError unless it is a model.pt inside it."""
    found = local / (local / READY_FILE).read_text().strip()
    if found.name != MODEL_FILE or not found.resolve().is_relative_to(local.resolve()):
        raise ValueError(f"{local / READY_FILE} does not name a {MODEL_FILE} inside its folder")
    return found


def load_registered(tracking_uri: str, name: str, version: str | int, cache_root: Path) -> LandcoverModel:
    """A registered version as a model (see `registered_folder`), read without unpickling code."""
    return load_model(registered_folder(tracking_uri, name, version, cache_root) / MODEL_FILE)


def find_replay(tracking_uri: str, name: str, version: str | int, cache_root: Path) -> ReplaySet | None:
    """The replay set a starter version logged next to its model.pt (None for versions without one)."""
    registered_folder(tracking_uri, name, version, cache_root)  # downloads the version folder once
    found = next(model_dir(cache_root, name, version).rglob(REPLAY_FILE), None)
    return ReplaySet.load(found) if found is not None else None


def version_of(model: LandcoverModel, tracking_uri: str, name: str, version: str | int) -> versions.ModelVersion:
    """The model's head as a ModelVersion, with the lineage id the registry recorded (pearl.version_id tag)."""
    registry = ModelRegistry(tracking_uri)
    registered = registry.client.get_model_version(name, str(version))
    version_id = registered.tags.get(TAG_VERSION)
    if version_id is None and registered.run_id:
        version_id = registry.client.get_run(registered.run_id).data.tags.get(TAG_VERSION)
    return versions.ModelVersion.from_model(model, version_id=version_id or f"{name}-v{version}")


def download_version(tracking_uri: str, name: str, version: str | int, dst: Path) -> versions.ModelVersion:
    """A registered project version's head (its checkpoint folder) as a ModelVersion."""
    checkpoint = _checkpoint_in(ModelRegistry(tracking_uri).download(name, version, dst))
    if checkpoint is None:
        raise FileNotFoundError(f"{model_uri(name, version)} has no head checkpoint ({versions.VERSION_FILE})")
    return versions.ModelVersion.load(checkpoint)


def _checkpoint_in(folder: Path) -> Path | None:
    """The head checkpoint folder (ml.versions) inside a downloaded version, if it has one."""
    return next((p.parent for p in folder.rglob(versions.VERSION_FILE)), None)
