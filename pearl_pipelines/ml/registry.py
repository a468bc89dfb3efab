"""Thin helpers around `mlflow.MlflowClient` for the model registry: register, alias, load.

A registered version's source is the run's `model/` artifact folder, which holds one self-describing
`model.pt` (see `models.save_model`) and optional extras (the replay set). Promotion moves aliases
(`starter`, `champion`); MLflow stages are deprecated. References are parsed in `ml.refs`.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from pearl_pipelines.ml import versions
from pearl_pipelines.ml.models import MODEL_FILE, LandcoverModel, load_model
from pearl_pipelines.ml.refs import model_uri
from pearl_pipelines.ml.replay import REPLAY_FILE, ReplaySet
from pearl_pipelines.ml.tracking import CHECKPOINT_ARTIFACT_DIR, TAG_VERSION, log_version, mlflow_reachable

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
        """`models:/name@alias` (or a version number) as a LandcoverModel in eval mode."""
        if cache_dir is not None:
            return load_model(self.download(name, alias_or_version, cache_dir) / MODEL_FILE)
        with tempfile.TemporaryDirectory(prefix="pearl-model-") as tmp:
            return load_model(self.download(name, alias_or_version, Path(tmp)) / MODEL_FILE)


# -- a worker's local copies of registered versions ----------------------------------------------------------
def model_dir(cache_root: Path, name: str, version: str | int) -> Path:
    return Path(cache_root) / name / f"v{version}"


def load_registered(tracking_uri: str, name: str, version: str | int, cache_root: Path) -> LandcoverModel:
    """A registered version (its `model/model.pt`), downloaded once into `cache_root` and reused after."""
    local = model_dir(cache_root, name, version)
    if not (local / READY_FILE).is_file():
        downloaded = ModelRegistry(tracking_uri).download(name, version, local)
        found = next(downloaded.rglob(MODEL_FILE), None)
        if found is None:
            raise FileNotFoundError(f"{model_uri(name, version)} has no {MODEL_FILE} in its artifacts")
        (local / READY_FILE).write_text(str(found.relative_to(local)))
    return load_model(local / (local / READY_FILE).read_text())


def find_replay(tracking_uri: str, name: str, version: str | int, cache_root: Path) -> ReplaySet | None:
    """The replay set a starter version logged next to its model.pt (None for versions without one)."""
    load_registered(tracking_uri, name, version, cache_root)  # downloads the version folder once
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


# -- the review app's checkpoints ------------------------------------------------------------------------------
def review_model_name(project_name: str) -> str:
    """Registered-model name of a review-app project's checkpoints: `pearl-review-<slug of the project name>`."""
    return "pearl-review-" + (re.sub(r"[^a-z0-9]+", "-", project_name.lower()).strip("-") or "project")


def log_checkpoint(
    tracking_uri: str,
    project_name: str,
    checkpoint_name: str,
    version: versions.ModelVersion,
    labels: gpd.GeoDataFrame | None,
) -> str:
    """Log a saved checkpoint to MLflow (run with lineage + checkpoint artifacts) and register it as a version of
    `review_model_name(project_name)`; returns the registered version number."""
    if not mlflow_reachable(tracking_uri):
        raise ConnectionError(f"MLflow is not reachable at {tracking_uri}")
    run_id = log_version(version, tracking_uri=tracking_uri, labels=labels, tags={"pearl.checkpoint": checkpoint_name})
    registered = ModelRegistry(tracking_uri).register(
        review_model_name(project_name),
        run_id,
        artifact_path=CHECKPOINT_ARTIFACT_DIR,
        tags={"pearl.checkpoint": checkpoint_name, TAG_VERSION: version.id},
    )
    return str(registered.version)
