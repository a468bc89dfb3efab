"""A project's base model: the frozen backbone + starter head and its replay set, named by a registered model
reference (`models:/name@alias` or `models:/name/N`, never a path: `ml.refs.parse_registered_ref`), fetched from the
MLflow registry or, when MLflow is down or lacks it, from the local copies under PEARL_HOME/models (the review app
works offline).

Projects on one base share one copy on disk, under the registry cache (`Layout.registry_cache`): a registered
version's folder (`<name>/v<N>`, the one Dagster's workers download into too) or, for a local copy, a
content-addressed copy (`<name>/local-<sha256>`) that a later retrain of the starter never overwrites. A project
records which copy it maps with in its base-model folder (`record_project_base`), so it needs no MLflow after the
first load; a project saved before shared copies keeps its own copy there (model.pt), used as it is.

Model files are read as data (`models.load_model`: weights_only), never unpickled as code.

MLflow is imported only when a base model is looked for there: the review app starts without it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pearl_pipelines.layout import Layout
from pearl_pipelines.ml.models import MODEL_FILE, LandcoverModel, load_model, save_model
from pearl_pipelines.ml.refs import model_uri, parse_registered_ref
from pearl_pipelines.ml.replay import REPLAY_FILE, ReplaySet
from pearl_pipelines.ml.versions import ModelVersion
from pearl_pipelines.settings import Settings

log = logging.getLogger(__name__)
POINTER_FILE = "base.json"  # in a project's base-model folder: the shared copy it maps with
LOCAL_COPY_PREFIX = "local-"


@dataclass
class BaseModel:
    """The frozen backbone + starter head, and the replay set it was trained with (if the registry has one)."""

    model: LandcoverModel
    replay: ReplaySet | None
    source: str  # `models:/name/N` when it came from the registry, else where its files are
    folder: Path | None = None  # the folder it was read from (model.pt + replay.npz), if any

    def save(self, directory: Path) -> None:
        save_model(self.model, directory / MODEL_FILE, extra={"source": self.source})
        if self.replay is not None:
            self.replay.save(directory / REPLAY_FILE)

    @classmethod
    def load(cls, directory: Path, source: str | None = None) -> BaseModel:
        """The base model in `directory` (model.pt + optional replay.npz), read without unpickling code."""
        model = load_model(directory / MODEL_FILE)
        replay = ReplaySet.load(directory / REPLAY_FILE) if (directory / REPLAY_FILE).is_file() else None
        return cls(model, replay, str(directory) if source is None else source, directory)

    def root_version(self) -> ModelVersion:
        """The starter head as the first version of a project (no parent)."""
        return ModelVersion.from_model(self.model)


def registry_cache_dir(settings: Settings) -> Path:
    return settings.layout.path(Layout.registry_cache)


def local_model_dirs(ref: str, settings: Settings) -> list[Path]:
    """Folders under PEARL_HOME/models that may hold `ref` (model.pt + replay.npz) when MLflow is down:
    the starter models' local copies (`ml.starter.starter_dir`, default architecture first), then <name>/<alias>.
    ValueError for a `ref` that is not a registered model reference (never a path)."""
    from pearl_pipelines.ml.starter import DEFAULT_ARCH, RECIPES, starter_dir, starter_model_name

    name, alias = parse_registered_ref(ref)
    recipes = sorted(RECIPES, key=lambda key: key[1] != DEFAULT_ARCH.get(key[0]))
    starters = [starter_dir(settings, schema, arch) for schema, arch in recipes if starter_model_name(schema) == name]
    return [*starters, settings.models_dir / name / alias, settings.models_dir / name]


def _digest(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def shared_local_copy(folder: Path, name: str, settings: Settings) -> Path:
    """The copy of a local model folder (model.pt + replay.npz) that projects map with: content-addressed under
    the registry cache, so one copy serves every project on it and a later retrain of `folder` changes none of
    them. The copy appears whole (a folder renamed into place) or not at all."""
    files = [folder / MODEL_FILE, *([folder / REPLAY_FILE] if (folder / REPLAY_FILE).is_file() else [])]
    root = registry_cache_dir(settings) / name
    known = root / f"{LOCAL_COPY_PREFIX}{_digest(*files)}"
    if (known / MODEL_FILE).is_file():
        return known
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".copy-", dir=root))
    try:
        for file in files:
            shutil.copyfile(file, tmp / file.name)
        copy = root / f"{LOCAL_COPY_PREFIX}{_digest(*(tmp / f.name for f in files))}"  # what was copied
        if not (copy / MODEL_FILE).is_file():
            try:
                tmp.rename(copy)
            except OSError:  # another thread or process put the same copy there first
                if not (copy / MODEL_FILE).is_file():
                    raise
        return copy
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_base_model(
    ref: str, settings: Settings, load: Callable[[Path, str], BaseModel] | None = None
) -> tuple[BaseModel | None, str]:
    """The base model `ref` names, from the MLflow registry, else from a local copy under PEARL_HOME/models;
    (None, why) if neither has it. `ref` is a registered model reference (`models:/name@alias`, `models:/name/N`):
    anything else, a path above all, is a ValueError. A model file that is not a valid model is a ValueError too.

    Either way the model is read from its shared copy under the registry cache (`base.folder`), by `load`: by
    default `BaseModel.load`; the review app's model cache passes its own, which shares one loaded model."""
    from pearl_pipelines.ml.tracking import mlflow_reachable

    name, alias = parse_registered_ref(ref)
    read = load or BaseModel.load
    uri = settings.resolved_mlflow_uri
    if mlflow_reachable(uri):
        from pearl_pipelines.ml.registry import ModelRegistry, registered_folder

        try:
            version = str(ModelRegistry(uri).resolve(name, alias).version)
            # The version it resolved to: what the Dagster loop names this backbone's files by.
            return read(
                registered_folder(uri, name, version, registry_cache_dir(settings)), model_uri(name, version)
            ), ""
        except Exception as exc:  # missing alias, artifact store trouble, a bad file: a local copy, say why
            log.warning("base model %s not loadable from MLflow at %s: %s", ref, uri, exc)
    for folder in local_model_dirs(ref, settings):
        if (folder / MODEL_FILE).is_file():
            copy = shared_local_copy(folder, name, settings)
            return read(copy, settings.layout.key(copy)), ""
    log.info("base model %s: not in MLflow at %s, no local copy under %s", ref, uri, settings.models_dir)
    return None, (
        f"no model yet: {ref} is neither in the model registry nor among this server's local models. "
        "Train the starter model (`make demo` does), then reload this page"
    )


# -- the base model a project maps with -------------------------------------------------------------------------
def project_base(settings: Settings, base_dir: Path) -> tuple[Path, str] | None:
    """(folder, source) of the copy a project maps with, from its base-model folder `base_dir`: a copy of its own
    (a project saved before shared copies), else the shared copy it recorded; None before its base was found."""
    if (base_dir / MODEL_FILE).is_file():
        return base_dir, str(base_dir)
    try:
        recorded = json.loads((base_dir / POINTER_FILE).read_text())
        return settings.layout.path(recorded["folder"]), str(recorded["source"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:  # a damaged record: found again from the reference
        log.warning("ignoring %s: %s", base_dir / POINTER_FILE, exc)
        return None


def record_project_base(settings: Settings, base_dir: Path, base: BaseModel) -> None:
    """Record in a project's base-model folder which shared copy it maps with (its folder, as a layout key)."""
    if base.folder is None:
        raise ValueError("only a base model read from a folder can be recorded")
    base_dir.mkdir(parents=True, exist_ok=True)
    tmp = base_dir / f".{POINTER_FILE}.{uuid.uuid4().hex}"
    tmp.write_text(json.dumps({"folder": settings.layout.key(base.folder), "source": base.source}))
    os.replace(tmp, base_dir / POINTER_FILE)


def project_base_file(settings: Settings, base_dir: Path) -> Path:
    """The model file of the base a project maps with (for a worker); FileNotFoundError before it was found."""
    found = project_base(settings, base_dir)
    if found is None or not (found[0] / MODEL_FILE).is_file():
        raise FileNotFoundError("the project's base model has not been found yet")
    return found[0] / MODEL_FILE
