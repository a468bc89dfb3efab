"""Worker helpers and entrypoint: mosaics, cache windows, held-out labels, file layout, usage errors.

The tasks themselves run through Pipes in tests/defs (test_e2e.py: local subprocess; test_compute_kmock.py:
as a fake Kubernetes pod).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import torch
from affine import Affine
from shapely.geometry import Point

from pearl_pipelines.geo.cog import write_cog
from pearl_pipelines.geo.grid import tile_geometry
from pearl_pipelines.geo.mosaic import GTI_SUFFIX, one_grid_mosaic
from pearl_pipelines.layout import CLASSES_FILE, prediction_is_fresh, write_prediction_meta
from pearl_pipelines.ml.embeddings import EmbeddingCache
from pearl_pipelines.settings import REPO_ROOT
from pearl_pipelines.worker.engine import cache_view, cache_window, holdout_mask

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


def test_cache_view_is_the_tile_window_of_an_aoi_cache(tmp_path: Path) -> None:
    from rasterio.warp import transform_bounds

    from pearl_pipelines.geo.grid import get_tms, parse_tile_key

    key = "15-9427-12525"
    west, south, east, north = transform_bounds("EPSG:4326", CRS, *get_tms().bounds(parse_tile_key(key)))
    origin = (west - 100, north + 100)  # the AOI cache reaches 100 m past the tile's north-west corner
    height, width = int(north - south) + 200, int(east - west) + 200
    cache = EmbeddingCache.create(
        tmp_path / "cache",
        crs=CRS,
        transform=Affine(1, 0, *origin[:1], 0, -1, origin[1]),
        height=height,
        width=width,
        channels=2,
        backbone_digest="bb-test",
    )
    cache.write_block(0, 0, torch.arange(height * width * 2, dtype=torch.float32).reshape(height, width, 2) % 97)
    cache.flush()
    cache = EmbeddingCache.open(tmp_path / "cache")
    window = cache_window(cache, tile_geometry(key))
    assert window is not None
    r0, c0, h, w = window
    assert 95 <= r0 <= 101 and 95 <= c0 <= 101  # the tile starts ~100 px in
    view = cache_view(cache, window)
    assert view.shape == (h, w)
    assert np.array_equal(view.array[0, 0], cache.array[r0, c0])
    x, y = view.transform @ (0, 0)
    assert (x, y) == cache.transform @ (c0, r0)


def test_holdout_is_stable_and_about_the_requested_fraction() -> None:
    labels = gpd.GeoDataFrame(
        {"label_id": range(1, 401), "class_name": ["water"] * 400}, geometry=[Point(0, 0)] * 400, crs="EPSG:4326"
    )
    mask = holdout_mask(labels, 0.2)
    assert 0.14 < mask.mean() < 0.26
    # A label keeps its fate as labels are added: the comparison with earlier versions stays fair.
    more = gpd.GeoDataFrame(
        {"label_id": range(1, 501), "class_name": ["water"] * 500}, geometry=[Point(0, 0)] * 500, crs="EPSG:4326"
    )
    assert np.array_equal(holdout_mask(more, 0.2)[:400], mask)
    assert not holdout_mask(labels.iloc[:5], 0.2).any()  # too few labels: nothing held out


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
