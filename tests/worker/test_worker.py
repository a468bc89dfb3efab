"""Worker helpers and entrypoint: mosaics, file layout, usage errors (cache windows, held-out labels: tests/ml).

The tasks themselves run through Pipes in tests/defs (test_e2e.py: local subprocess; test_compute_kmock.py:
as a fake Kubernetes pod).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from pearl_pipelines.geo.cog import write_cog
from pearl_pipelines.geo.mosaic import GTI_SUFFIX, one_grid_mosaic
from pearl_pipelines.layout import CLASSES_FILE, prediction_is_fresh, write_prediction_meta
from pearl_pipelines.settings import REPO_ROOT

CRS = "EPSG:32618"


def _cog(path: Path, x0: float, y0: float, value: int, size: int = 16) -> Path:
    data = np.full((4, size, size), value, dtype=np.uint8)
    data[3] = value + 1  # NIR differs, so band order is checked too
    return write_cog(path, data, crs=CRS, transform=Affine(1, 0, x0, 0, -1, y0))


def test_mosaic_of_adjacent_tiles_on_their_grid(tmp_path: Path) -> None:
    left = _cog(tmp_path / "a.tif", 500_000, 4_400_016, 10)
    right = _cog(tmp_path / "b.tif", 500_016, 4_400_016, 20)
    mosaic = one_grid_mosaic([left, right], tmp_path / f"mosaic{GTI_SUFFIX}")
    with rasterio.open(mosaic) as src:
        assert (src.width, src.height, src.count) == (32, 16, 4)
        data = src.read()
    assert (data[0, :, :16] == 10).all() and (data[0, :, 16:] == 20).all()
    assert (data[3, :, :16] == 11).all()


def test_inference_over_a_tile_mosaic_predicts_like_the_single_file(tmp_path: Path) -> None:
    """The worker hands the engine a mosaic of tiles: across the seam it sees what the whole image shows."""
    from pearl_pipelines.ml.inference import predict
    from tests.ml.conftest import ORIGIN, blob_image, tiny_model, write_image

    model, image = tiny_model("fcn"), blob_image(160, 200, seed=1)
    left = write_image(tmp_path / "left.tif", image[:, :, :110])
    right = write_image(tmp_path / "right.tif", image[:, :, 110:], (ORIGIN[0] + 110, ORIGIN[1]))
    mosaic = one_grid_mosaic([left, right], tmp_path / f"tiles{GTI_SUFFIX}")
    whole = predict(model, write_image(tmp_path / "whole.tif", image), tmp_path / "a", device="cpu")
    tiled = predict(model, mosaic, tmp_path / "b", device="cpu")
    with rasterio.open(whole.classes_path) as a, rasterio.open(tiled.classes_path) as b:
        assert a.transform == b.transform
        np.testing.assert_array_equal(b.read(1), a.read(1))


def test_prediction_freshness_follows_the_imagery(tmp_path: Path) -> None:
    image = tmp_path / "image.tif"
    image.write_bytes(b"x")
    out = tmp_path / "prediction"
    out.mkdir()
    assert not prediction_is_fresh(out, image)
    (out / CLASSES_FILE).write_bytes(b"x")
    write_prediction_meta(out, model="models:/m/1", mode="head")
    assert prediction_is_fresh(out, image)
    assert not prediction_is_fresh(out, image, whole_tile=True)  # head-only: the AOI part of the tile
    write_prediction_meta(out, model="models:/m/1", mode="full")
    assert prediction_is_fresh(out, image, whole_tile=True)
    time.sleep(0.01)
    image.write_bytes(b"newer imagery")
    import os

    later = (out / "prediction.json").stat().st_mtime + 5
    os.utime(image, (later, later))
    assert not prediction_is_fresh(out, image)


def test_worker_usage_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pearl_pipelines.worker", "no-such-task"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert "predict" in done.stderr and "retrain" in done.stderr
