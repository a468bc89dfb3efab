"""A PEARL_HOME for the `predict-aoi` task, made by code: a tiny model, its head version, a small image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import rasterio
from rasterio.warp import transform_bounds
from shapely.geometry import box, mapping

from pearl_pipelines.ml.models import save_model
from pearl_pipelines.ml.versions import ModelVersion
from tests.ml.conftest import CRS, blob_image, tiny_model, write_image

SIZE = 900  # pixels a side: several 512 px windows


def build_aoi_home(home: Path) -> Path:
    model = tiny_model("fcn")
    save_model(model, home / "models" / "base" / "model.pt")
    ModelVersion.from_model(model, "v-test").save(home / "models" / "v1")
    write_image(home / "imagery.tif", blob_image(SIZE, SIZE, seed=3))
    return home


def aoi_extras(home: Path) -> dict[str, Any]:
    """The task's extras, paths relative to PEARL_HOME as the review app passes them; the AOI is the whole image."""
    with rasterio.open(home / "imagery.tif") as src:
        lonlat = transform_bounds(CRS, "EPSG:4326", *src.bounds)
    return {
        "base_model": "models/base/model.pt",
        "version_dir": "models/v1",
        "imagery": "imagery.tif",
        "aoi": mapping(box(*lonlat)),
        "out_dir": "out",
        "embeddings_dir": "cache",
        "model_id": "v-test",
        "progress_interval_s": 0,
    }


def check_messages(messages: list[Any]) -> dict[str, Any]:
    """Progress in order, each window once, then the summary (returned)."""
    progress = [m for m in messages if m["kind"] == "progress"]
    assert len(progress) >= 3
    done = [m["done"] for m in progress]
    assert done == sorted(done) and len(set(done)) == len(done)
    assert done[-1] == progress[-1]["total"]
    summary = messages[-1]
    assert summary["kind"] == "summary"
    assert summary["windows"] == progress[-1]["total"]
    return summary


def check_outputs(home: Path) -> None:
    with rasterio.open(home / "out" / "classes.tif") as classes:
        assert classes.read(1).size > 0.8 * SIZE * SIZE
    assert (home / "cache" / "embeddings.json").is_file()
