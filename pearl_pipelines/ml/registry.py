"""Registered versions on a worker's disk: download once, compose a head with its base, read the replay set.

A registered version's source is the run's `model/` artifact folder, which holds one self-describing
`model.pt` (see `models.save_model`) and optional extras (the replay set), or a head-only checkpoint whose
lineage names its base (`ml.lineage`). Promotion moves aliases (`starter`, `champion`); MLflow stages are
deprecated. References are parsed in `ml.refs`; registering, look-ups and aliases are `ml.lineage`'s.
"""

from __future__ import annotations

import threading
from pathlib import Path

from pearl_pipelines.ml import versions
from pearl_pipelines.ml.lineage import MODEL_ARTIFACT_PATH, ModelRegistry, register_version  # noqa: F401  (re-exported)
from pearl_pipelines.ml.models import MODEL_FILE, LandcoverModel, load_model, save_model
from pearl_pipelines.ml.refs import model_uri, parse_model_uri
from pearl_pipelines.ml.replay import REPLAY_FILE, ReplaySet

READY_FILE = ".complete"  # in a downloaded version's folder: the download finished (holds model.pt's path)


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
                base_uri = registry.lineage(name, version).base_model
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
    version_id = ModelRegistry(tracking_uri).version_id(name, version)
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
