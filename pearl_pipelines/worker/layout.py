"""File layout under PEARL_HOME shared by the Dagster side and the worker (no heavy imports here)."""

from __future__ import annotations

import json
from pathlib import Path

from pearl_pipelines.geo.tile_paths import tile_dir

CLASSES_FILE = "classes.tif"
CONFIDENCE_FILE = "confidence.tif"
PREDICTION_META = "prediction.json"


def model_slug(name: str, version: str | int) -> str:
    """Folder-safe id of a registered model version: predictions of different models never overwrite each other."""
    return f"{name}-v{version}"


def prediction_dir(home: Path, slug: str, key: str) -> Path:
    return tile_dir(Path(home) / "predictions" / slug, key)


def write_prediction_meta(out_dir: Path, **meta: object) -> None:
    (Path(out_dir) / PREDICTION_META).write_text(json.dumps(meta, indent=2, default=str))


def prediction_is_fresh(out_dir: Path, image_path: Path, *, whole_tile: bool = False) -> bool:
    """A tile's prediction exists, is complete (meta written last) and is newer than the tile's imagery.

    `whole_tile`: only a full-inference prediction counts (a head-only one covers just the AOI part of a tile).
    """
    meta = Path(out_dir) / PREDICTION_META
    if not meta.is_file() or not (Path(out_dir) / CLASSES_FILE).is_file():
        return False
    if whole_tile and json.loads(meta.read_text()).get("mode") != "full":
        return False
    return not Path(image_path).is_file() or meta.stat().st_mtime >= Path(image_path).stat().st_mtime
