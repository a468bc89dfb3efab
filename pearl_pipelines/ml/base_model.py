"""A project's base model: the frozen backbone + starter head and its replay set, from the MLflow registry or,
when MLflow is down or lacks it, from the local copies under PEARL_HOME/models (the review app works offline).

MLflow is imported only when a base model is looked for there: the review app starts without it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pearl_pipelines.ml.models import MODEL_FILE, LandcoverModel, load_model, save_model
from pearl_pipelines.ml.refs import PREFIX, model_uri, parse_model_uri
from pearl_pipelines.ml.replay import REPLAY_FILE, ReplaySet
from pearl_pipelines.ml.versions import ModelVersion
from pearl_pipelines.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class BaseModel:
    """The frozen backbone + starter head, and the replay set it was trained with (if the registry has one)."""

    model: LandcoverModel
    replay: ReplaySet | None
    source: str  # `models:/name/N` when it came from the registry, else the file it was read from

    def save(self, directory: Path) -> None:
        save_model(self.model, directory / MODEL_FILE, extra={"source": self.source})
        if self.replay is not None:
            self.replay.save(directory / REPLAY_FILE)

    @classmethod
    def load(cls, directory: Path) -> BaseModel:
        replay = ReplaySet.load(directory / REPLAY_FILE) if (directory / REPLAY_FILE).is_file() else None
        return cls(load_model(directory / MODEL_FILE), replay, str(directory))

    def root_version(self) -> ModelVersion:
        """The starter head as the first version of a project (no parent)."""
        return ModelVersion.from_model(self.model)


def local_model_dirs(ref: str, settings: Settings) -> list[Path]:
    """Folders under PEARL_HOME/models that may hold `ref` (model.pt + replay.npz) when MLflow is down:
    the starter models' local copies (`ml.starter.starter_dir`, default architecture first), then <name>/<alias>."""
    from pearl_pipelines.ml.starter import DEFAULT_ARCH, RECIPES, starter_dir, starter_model_name

    name, alias = parse_model_uri(ref)
    recipes = sorted(RECIPES, key=lambda key: key[1] != DEFAULT_ARCH.get(key[0]))
    starters = [starter_dir(settings, schema, arch) for schema, arch in recipes if starter_model_name(schema) == name]
    return [*starters, settings.models_dir / name / alias, settings.models_dir / name]


def load_base_model(ref: str, settings: Settings) -> tuple[BaseModel | None, str]:
    """The project's base model from the MLflow registry, else from PEARL_HOME/models; (None, why) if neither."""
    if not ref.startswith(PREFIX):  # a file or folder under PEARL_HOME/models (or absolute)
        path = Path(ref) if Path(ref).is_absolute() else settings.models_dir / ref
        folder = path if path.is_dir() else path.parent
        if (folder / MODEL_FILE).is_file() or path.is_file():
            model = load_model(path if path.is_file() else folder / MODEL_FILE)
            replay = ReplaySet.load(folder / REPLAY_FILE) if (folder / REPLAY_FILE).is_file() else None
            return BaseModel(model, replay, str(path)), ""
        return None, f"no model file at {path}"
    from pearl_pipelines.ml.registry import ModelRegistry
    from pearl_pipelines.ml.tracking import mlflow_reachable

    name, alias = parse_model_uri(ref)
    uri = settings.resolved_mlflow_uri
    if mlflow_reachable(uri):
        try:
            registry = ModelRegistry(uri)
            version = str(registry.resolve(name, alias).version)
            folder = registry.download(name, version, settings.models_dir / "mlflow" / name / alias)
            base = load_base_model(str(folder / MODEL_FILE), settings)[0]
            if base is not None:  # the version it resolved to: what the Dagster loop names this backbone's files by
                base.source = model_uri(name, version)
            return base, ""
        except Exception as exc:  # missing alias, artifact store trouble: fall back to a local copy, say why
            log.warning("base model %s not loadable from MLflow at %s: %s", ref, uri, exc)
    for folder in local_model_dirs(ref, settings):
        if (folder / MODEL_FILE).is_file():
            return load_base_model(str(folder / MODEL_FILE), settings)
    return None, (
        f"no model yet: {ref} is not in MLflow at {uri} and there is no local copy under {settings.models_dir}. "
        "Train the starter model (`make demo` does), then reload this page"
    )
