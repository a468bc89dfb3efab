"""A project's imagery mosaic: one masked RGBN COG on the newest item's grid, newest on top, clipped to a bbox."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds

from pearl_pipelines.geo.cog import RGBN_DESCRIPTIONS, validate_cog, write_cog
from review_app.imagery import ImageryError, build_mosaic

UTM = "EPSG:26918"
X0, Y0 = 370_000.0, 4_313_000.0


def _item(path: Path, data: np.ndarray, col: int, row: int) -> str:
    return str(write_cog(path, data, crs=UTM, transform=from_origin(X0 + col, Y0 - row, 1.0, 1.0)))


def test_items_are_mosaicked_newest_on_top_with_gaps_masked(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    older = rng.integers(1, 255, (4, 30, 30), dtype=np.uint8)
    newer = rng.integers(1, 255, (4, 30, 30), dtype=np.uint8)
    sources = [("newer", _item(tmp_path / "n.tif", newer, 20, 10)), ("older", _item(tmp_path / "o.tif", older, 0, 0))]
    calls: list[tuple[int, int]] = []
    path = build_mosaic(sources, tmp_path / "mosaic.tif", progress=lambda d, t: calls.append((d, t)))
    assert validate_cog(path)[0] and calls[-1][0] == calls[-1][1]
    with rasterio.open(path) as src:
        assert src.transform == from_origin(X0, Y0, 1.0, 1.0) and (src.width, src.height) == (50, 40)
        assert src.descriptions == RGBN_DESCRIPTIONS and src.colorinterp[3] == ColorInterp.undefined
        assert src.tags()["pearl_sources"] == "newer,older"
        data, valid = src.read(), src.dataset_mask() > 0
    np.testing.assert_array_equal(data[:, 10:40, 20:50], newer)
    np.testing.assert_array_equal(data[:, :10, :30], older[:, :10])
    np.testing.assert_array_equal(data[:, 10:30, :20], older[:, 10:, :20])
    assert not valid[:10, 30:].any() and not valid[30:, :20].any() and valid[10:40, 20:50].all()


def test_the_mosaic_is_clipped_to_the_bbox_on_the_item_grid(tmp_path: Path) -> None:
    image = np.random.default_rng(1).integers(1, 255, (4, 40, 40), dtype=np.uint8)
    sources = [("only", _item(tmp_path / "a.tif", image, 0, 0))]
    clip = transform_bounds(UTM, "EPSG:4326", X0 + 10.3, Y0 - 30.2, X0 + 25.6, Y0 - 5.5)
    with rasterio.open(build_mosaic(sources, tmp_path / "m.tif", clip_lonlat=clip)) as src:
        col, row = round(src.transform.c - X0), round(Y0 - src.transform.f)
        assert src.transform.c - X0 == col and Y0 - src.transform.f == row, "pixels stay on the item grid"
        np.testing.assert_array_equal(src.read(), image[:, row : row + src.height, col : col + src.width])
        assert 9 <= col <= 11 and 4 <= row <= 6 and src.dataset_mask().all()
    with pytest.raises(ImageryError, match="do not overlap"):
        build_mosaic(sources, tmp_path / "x.tif", clip_lonlat=(0.0, 0.0, 0.1, 0.1))


def test_items_without_four_bands_are_refused(tmp_path: Path) -> None:
    rgb = _item(tmp_path / "rgb.tif", np.ones((3, 8, 8), np.uint8), 0, 0)
    with pytest.raises(ImageryError, match="3 bands; RGBN"):
        build_mosaic([("rgb", rgb)], tmp_path / "m.tif")
