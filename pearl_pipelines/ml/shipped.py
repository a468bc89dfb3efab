"""Shipped starter weights: the default recipes' trained models, small enough to ship with the code.

Training the 9-class U-Net starter from scratch takes ~15 min on 2 CPU cores without native bfloat16 (and
~8 min with it), so a first run that trained it could not show a map within 15 minutes on a typical laptop.
`assets/starters/<schema>-<arch>.pt` holds the weights that `pearl starter --schema all --ship` trained with
the default recipe (seed 0) on the synthetic `train` regions, as float16 (the models compute in float32;
rounding the weights moves holdout macro F1 by < 0.001). Registering a shipped starter still evaluates it
on the holdout region, rebuilds its replay set from the train regions and logs a full MLflow run, so the
F1 a user sees is measured on their machine, never copied from the file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from pearl_pipelines.ml.models import LandcoverModel, ModelSpec, read_model_file

SHIPPED_DIR = "starters"  # under the assets directory


def shipped_path(assets_dir: Path, schema_id: str, arch: str) -> Path:
    return assets_dir / SHIPPED_DIR / f"{schema_id}-{arch}.pt"


def require_shipped(assets_dir: Path, schema_id: str, arch: str) -> Path:
    """The shipped file of (schema, arch), or FileNotFoundError saying what to do instead."""
    path = shipped_path(assets_dir, schema_id, arch)
    if not path.is_file():
        raise FileNotFoundError(f"no shipped {schema_id} {arch} starter at {path}; train it instead (source: train)")
    return path


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def export_shipped(model: LandcoverModel, path: Path, provenance: dict[str, Any]) -> Path:
    """Write `model` as float16 weights + spec + provenance (recipe, precision, holdout F1, steps)."""
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"spec": model.spec.model_dump(mode="json", by_alias=True), "state_dict": state, "provenance": provenance}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_shipped(path: Path) -> tuple[LandcoverModel, dict[str, Any]]:
    """The float32 model of a shipped file and its provenance; a clear error for a file that is not one."""
    try:
        payload = read_model_file(path)  # weights_only: tensors and plain values, never code
        model = LandcoverModel(ModelSpec.model_validate(payload["spec"]))
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()})
    except (OSError, KeyError, RuntimeError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path} is not a shipped starter model (spec + float16 state dict): {exc}") from exc
    model.eval()
    return model, dict(payload.get("provenance", {}))
