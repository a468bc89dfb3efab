"""The starter models a new project can begin with, by name, with their holdout macro F1.

What is known is shown, and nothing here fails: the MLflow registry when it answers (the registered version and
its run's `holdout_macro_f1`), else the server's local copy of the starter (`pearl starter` writes the F1 into
the model file), else the shipped weights' provenance (assets/starters: not usable until `pearl starter` registers
them). Model files are read as data (`read_model_file`: tensors and plain values only), once per file version.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from pearl_pipelines.classes import load_schema
from pearl_pipelines.geo.regions import LABEL_SCHEMAS
from pearl_pipelines.ml.models import MODEL_FILE, read_model_file
from pearl_pipelines.ml.refs import model_uri, starter_model_name
from pearl_pipelines.settings import Settings
from review_app.schemas import StarterOut

log = logging.getLogger(__name__)
STARTER_ALIAS = "starter"  # the alias `pearl starter` gives (ml/starter.py)
F1_KEY = "holdout_macro_f1"  # in a local model file's extra, a shipped file's provenance and the run's metrics
MLFLOW_PROBE_S = 0.5  # the page waits for this list: a dead tracking server costs at most this

_read_lock = threading.Lock()
_file_f1: dict[tuple[Path, int], float | None] = {}  # (file, mtime_ns) -> F1 found in it


def _f1_in_file(path: Path, *keys: str) -> float | None:
    """The holdout F1 stored in a model file's `keys` section (extra, provenance), read once per file version."""
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return None
    with _read_lock:
        if (path, stamp) in _file_f1:
            return _file_f1[path, stamp]
        try:
            payload = read_model_file(path)
            found: Any = next((payload[k][F1_KEY] for k in keys if F1_KEY in (payload.get(k) or {})), None)
            f1 = float(found) if isinstance(found, int | float) else None
        except (OSError, ValueError, TypeError) as exc:
            log.warning("starter model file %s unreadable: %s", path, exc)
            f1 = None
        _file_f1[path, stamp] = f1
        return f1


def _from_registry(settings: Settings, name: str) -> tuple[str, float | None] | None:
    """(version, F1) of the starter alias in MLflow; None when MLflow does not answer or has no such model."""
    from pearl_pipelines.ml.lineage import ModelRegistry
    from pearl_pipelines.ml.tracking import mlflow_reachable

    uri = settings.resolved_mlflow_uri
    if not mlflow_reachable(uri, timeout=MLFLOW_PROBE_S):
        return None
    try:
        registry = ModelRegistry(uri)
        version = registry.get_version(name, STARTER_ALIAS)
        if version is None:
            return None
        f1 = registry.client.get_run(version.run_id).data.metrics.get(F1_KEY) if version.run_id else None
        return str(version.version), f1
    except Exception as exc:  # the list shows what is known: a registry error leaves the local figures
        log.warning("starter %s: MLflow at %s: %s", name, uri, exc)
        return None


def list_starters(settings: Settings) -> list[StarterOut]:
    """Every starter schema's model: registered, stored on this server, shipped only, or nothing yet."""
    from pearl_pipelines.ml.base_model import local_model_dirs
    from pearl_pipelines.ml.shipped import shipped_path
    from pearl_pipelines.ml.starter import DEFAULT_ARCH

    out = []
    for schema_id in LABEL_SCHEMAS:
        name = starter_model_name(schema_id)
        ref = model_uri(name, STARTER_ALIAS)
        schema = load_schema(schema_id, settings.assets_dir)
        titles = [c.title for c in schema.classes]
        common: dict[str, Any] = {"name": name, "base_model": ref, "class_schema_id": schema_id, "class_titles": titles}
        registered = _from_registry(settings, name)
        local = next((d / MODEL_FILE for d in local_model_dirs(ref, settings) if (d / MODEL_FILE).is_file()), None)
        shipped = shipped_path(settings.assets_dir, schema_id, DEFAULT_ARCH[schema_id])
        if registered is not None:
            version, f1 = registered
            out.append(StarterOut(**common, holdout_f1=f1, available=True, source="registry", version=version))
        elif local is not None:
            out.append(StarterOut(**common, holdout_f1=_f1_in_file(local, "extra"), available=True, source="local"))
        elif shipped.is_file():
            f1 = _f1_in_file(shipped, "provenance")
            out.append(StarterOut(**common, holdout_f1=f1, available=False, source="shipped"))
        else:
            out.append(StarterOut(**common, holdout_f1=None, available=False, source="none"))
    return out
