"""The first block of a new AOI (ml/preview.py): one grid window near the view, its pixels those of the full pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform as transform_xy
from shapely.geometry import Polygon, box

from pearl_pipelines.classes import NODATA_CLASS
from pearl_pipelines.ml.inference import aoi_windows, predict
from pearl_pipelines.ml.preview import first_block, predict_first_block
from pearl_pipelines.ml.tiling import Tiling, default_tiling
from tests.ml.conftest import CRS, ORIGIN, tiny_model

# A slanted quadrilateral over most of the 380 x 300 px test image (1 m pixels, north up).
X0, Y0 = ORIGIN
AOI = Polygon([(X0 + 13.3, Y0 - 20.7), (X0 + 350.2, Y0 - 8.1), (X0 + 371.5, Y0 - 288.4), (X0 + 30.9, Y0 - 270.6)])


def read(path: Path) -> tuple[np.ndarray, rasterio.Affine]:
    with rasterio.open(path) as src:
        return src.read(1), src.transform


def lonlat_view(x: float, y: float, half: float = 40.0) -> tuple[float, float, float, float]:
    """A lon/lat view (west, south, east, north) centred on raster-CRS point (x, y)."""
    lons, lats = transform_xy(CRS, "EPSG:4326", [x - half, x + half], [y - half, y + half])
    return lons[0], lats[0], lons[1], lats[1]


@pytest.mark.parametrize("arch", ["fcn", "unet"])
def test_first_block_pixels_are_the_full_pass_pixels(arch: str, image_path: Path, tmp_path: Path) -> None:
    model = tiny_model(arch)
    # FCN: cropped windows on the global grid, no fade; U-Net: whole windows fitted to the AOI, cross-fades.
    base = default_tiling(model, window=64 if arch == "fcn" else 192)
    with rasterio.open(image_path) as dataset:
        tiling, anchor = aoi_windows(model, dataset, AOI, tiling=base, max_window=base.window)
    assert (anchor is None) == (arch == "fcn")
    view = lonlat_view(X0 + 250.0, Y0 - 190.0)
    first = predict_first_block(
        model, image_path, AOI, tmp_path / "first", view=view, tiling=base, max_window=base.window, device="cpu"
    )
    assert first is not None and first.windows == 1  # one window of the full pass's windows
    # The full pass as the worker runs it: embeddings cached (the embed + classify path), the same windows.
    full = predict(
        model,
        image_path,
        tmp_path / "full",
        aoi=AOI,
        tiling=tiling,
        anchor=anchor,
        device="cpu",
        embeddings_dir=tmp_path / "emb",
    )
    for name in ("classes_path", "confidence_path"):
        small, small_t = read(getattr(first, name))
        big, big_t = read(getattr(full, name))
        r, c = round((small_t.f - big_t.f) / big_t.e), round((small_t.c - big_t.c) / big_t.a)
        assert small.shape == (tiling.stride - tiling.fade,) * 2  # the window's core, whole inside this AOI
        np.testing.assert_array_equal(small, big[r : r + small.shape[0], c : c + small.shape[1]])
    classes, transform = read(first.classes_path)
    assert (classes != NODATA_CLASS).all() and len(np.unique(classes)) >= 2
    # The block holds the view's centre, or the centre is in the fade between its core and the next.
    col, row = ~transform @ (X0 + 250.0, Y0 - 190.0)
    f = tiling.fade
    assert -f <= row < classes.shape[0] + f and -f <= col < classes.shape[1] + f


def test_fitted_windows_cover_an_aoi_with_fewer_pixels_than_the_global_grid(image_path: Path, tmp_path: Path) -> None:
    """The full pass of an AOI on its fitted windows computes fewer window pixels than on the global grid and maps
    the same pixels. (Which class a pixel gets depends a little on its window, through the U-Net's statistics and
    the ImageNet features' context: the registered 9-class starter agrees with its global-grid map on 97 % of a
    1 km^2 AOI; this untrained test model's near-tied logits say nothing about that.)"""
    model = tiny_model("unet")
    base = default_tiling(model, window=192)
    with rasterio.open(image_path) as dataset:
        tiling, anchor = aoi_windows(model, dataset, AOI, tiling=base, max_window=base.window)
    grid = predict(model, image_path, tmp_path / "grid", aoi=AOI, tiling=base, device="cpu")
    fitted = predict(model, image_path, tmp_path / "fit", aoi=AOI, tiling=tiling, anchor=anchor, device="cpu")
    assert fitted.windows * tiling.window**2 < grid.windows * base.window**2
    (a, _), (b, _) = read(grid.classes_path), read(fitted.classes_path)
    assert a.shape == b.shape and ((a == NODATA_CLASS) == (b == NODATA_CLASS)).all()
    assert (a != NODATA_CLASS).mean() > 0.8


def test_the_block_is_at_the_aoi_centre_when_the_view_centre_is_outside(image_path: Path) -> None:
    tiling = Tiling(window=64, margin=8, fade=8)
    with rasterio.open(image_path) as dataset:
        outside = lonlat_view(X0 + 5.0, Y0 - 295.0)  # a corner of the image, outside the AOI
        for view in (outside, None):
            block = first_block(dataset, AOI, tiling=tiling, view=view)
            # The core nearest the centre: it holds it, or the centre is in the fade gap beside it.
            assert block is not None and block.distance(AOI.centroid) <= tiling.fade
        # Near the AOI's edge: the block is the part of the AOI in the core there (smaller than the core).
        edge = first_block(dataset, AOI, tiling=tiling, view=lonlat_view(X0 + 40.0, Y0 - 30.0))
        assert edge is not None and AOI.buffer(1e-6).contains(edge) and edge.area < (tiling.stride - tiling.fade) ** 2


def test_a_small_aoi_has_no_first_block(image_path: Path) -> None:
    tiling = Tiling(window=64, margin=8, fade=8)  # cores of 32 x 32 px
    small = box(X0 + 100.0, Y0 - 150.0, X0 + 140.0, Y0 - 110.0)  # 40 x 40 px: a core would be most of it
    with rasterio.open(image_path) as dataset:
        assert first_block(dataset, small, tiling=tiling) is None
        assert first_block(dataset, AOI, tiling=tiling) is not None
