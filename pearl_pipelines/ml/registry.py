"""Thin helpers around `mlflow.MlflowClient` for the model registry: register, alias, load.

A registered version's source is the run's `model/` artifact folder, which holds one self-describing
`model.pt` (see `models.save_model`) and optional extras (the replay set). Promotion moves aliases
(`starter`, `champion`); MLflow stages are deprecated. The Dagster `MlflowRegistry` resource wraps this.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from pearl_pipelines.ml.models import LandcoverModel, load_model

MODEL_ARTIFACT_PATH = "model"  # run artifact folder that a model version points at
MODEL_FILE = "model.pt"


def model_uri(name: str, alias_or_version: str | int) -> str:
    """`models:/name@alias` for an alias, `models:/name/3` for a version number."""
    ref = str(alias_or_version)
    return f"models:/{name}/{ref}" if ref.isdigit() else f"models:/{name}@{ref}"


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
