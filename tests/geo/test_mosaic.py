"""The one mosaic (GDAL GTI): exact pixels on one grid, newest on top, masks, other grids, lazy index files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.transform import from_origin

from pearl_pipelines.geo.cog import write_cog
from pearl_pipelines.geo.mosaic import (
    GTI_SUFFIX,
    Grid,
    MosaicError,
    one_grid_mosaic,
    open_sources,
    read_mosaic,
    sources_under,
    union_bounds,
    write_index,
)

UTM = CRS.from_epsg(26918)
X0, Y0 = 500_000.0, 4_400_000.0


def _image(seed: int, height: int = 20, width: int = 20) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 255, size=(4, height, width), dtype=np.uint8)


def _cog(path: Path, data: np.ndarray, col: int, row: int, *, res: float = 1.0, **kwargs: object) -> Path:
    """A COG whose top-left pixel is at (col, row) of the 1 m grid anchored at (X0, Y0)."""
    return write_cog(
        path, data, crs=kwargs.pop("crs", UTM), transform=from_origin(X0 + col, Y0 - row, res, res), **kwargs
    )


def _grid(width: int, height: int, col: int = 0, row: int = 0) -> Grid:
    return Grid(UTM, from_origin(X0 + col, Y0 - row, 1.0, 1.0), width, height)


def test_sources_on_one_grid_are_copied_exactly_and_gaps_are_masked(tmp_path: Path) -> None:
    west, east = _image(1), _image(2)
    sources = open_sources(
        [("west", _cog(tmp_path / "w.tif", west, 0, 0)), ("east", _cog(tmp_path / "e.tif", east, 25, 5))]
    )
    mosaic = read_mosaic(sources, _grid(45, 25), bands=4)
    assert mosaic.sources == ["west", "east"]
    np.testing.assert_array_equal(mosaic.data[:, 0:20, 0:20], west)
    np.testing.assert_array_equal(mosaic.data[:, 5:25, 25:45], east)
    expected_valid = np.zeros((25, 45), dtype=bool)
    expected_valid[0:20, 0:20] = expected_valid[5:25, 25:45] = True
    np.testing.assert_array_equal(mosaic.valid, expected_valid)
    assert not mosaic.data[:, ~mosaic.valid].any(), "uncovered pixels are 0, not leftovers"


def test_overlaps_take_the_newest_valid_pixel(tmp_path: Path) -> None:
    older, newer = _image(3), _image(4)
    half = np.zeros((20, 20), dtype=bool)
    half[:, :10] = True  # the newer item's east half is masked (e.g. a collar)
    nodata_item = np.full((4, 20, 20), 7, dtype=np.uint8)
    nodata_item[:, :, 10:] = 0  # and an item with a nodata value instead of a mask
    sources = open_sources(
        [
            ("newer", _cog(tmp_path / "new.tif", newer, 5, 0, mask=half)),
            ("older", _cog(tmp_path / "old.tif", older, 0, 0)),
            ("oldest", _cog(tmp_path / "nodata.tif", nodata_item, 0, 20, nodata=0)),
        ]
    )
    mosaic = read_mosaic(sources, _grid(25, 40), bands=4)
    np.testing.assert_array_equal(mosaic.data[:, :20, 5:15], newer[:, :, :10])  # newest wins where it is valid
    np.testing.assert_array_equal(mosaic.data[:, :20, 0:5], older[:, :, :5])
    np.testing.assert_array_equal(mosaic.data[:, :20, 15:20], older[:, :, 15:])  # older shows under the mask
    assert not mosaic.valid[:20, 20:].any(), "masked and uncovered: invalid"
    assert (mosaic.data[:, 20:, :10] == 7).all() and mosaic.valid[20:, :10].all()
    assert not mosaic.valid[20:, 10:].any(), "the nodata item's nodata pixels are invalid"


def test_a_source_hidden_under_an_opaque_newer_one_is_left_out(tmp_path: Path) -> None:
    cover, under = _image(5), _image(6)
    sources = open_sources(
        [("cover", _cog(tmp_path / "cover.tif", cover, 0, 0)), ("under", _cog(tmp_path / "under.tif", under, 0, 0))]
    )
    grid = _grid(10, 10, col=5, row=5)
    assert [s.id for s in sources_under(sources, grid)] == ["cover"]
    mosaic = read_mosaic(sources, grid, bands=4)
    assert mosaic.sources == ["cover"] and mosaic.valid.all()
    np.testing.assert_array_equal(mosaic.data, cover[:, 5:15, 5:15])
    far = open_sources([("far", _cog(tmp_path / "far.tif", under, 1000, 1000))])
    empty = read_mosaic(far, grid, bands=4)
    assert empty.sources == [] and not empty.valid.any() and not empty.data.any()


def test_sources_on_other_grids_are_resampled_onto_the_mosaic_grid(tmp_path: Path) -> None:
    flat = np.full((4, 10, 10), 80, dtype=np.uint8)
    coarse = _cog(tmp_path / "coarse.tif", flat, 0, 0, res=2.0)  # 2 m pixels over 20 x 20 m
    shifted = _cog(tmp_path / "shifted.tif", flat + 20, 30, 0, res=1.0)
    shifted_phase = write_cog(tmp_path / "phase.tif", flat + 40, crs=UTM, transform=from_origin(X0 + 50.5, Y0, 1, 1))
    sources = open_sources([("coarse", coarse), ("shifted", shifted), ("phase", shifted_phase)])
    mosaic = read_mosaic(sources, _grid(70, 20), bands=4)
    assert (mosaic.data[:, :20, :20][:, mosaic.valid[:20, :20]] == 80).all() and mosaic.valid[1:19, 1:19].all()
    assert (mosaic.data[:, :10, 30:40] == 100).all()
    assert (mosaic.data[:, 1:9, 52:60] == 120).all(), "half-pixel shift: resampled, constant stays constant"
    assert not mosaic.valid[:, 22:28].any() and not mosaic.valid[12:, 32:].any(), "no source there"
    assert mosaic.grid.transform.a == 1.0 and mosaic.data.shape == (4, 20, 70), "the grid asked for is kept"


def test_grid_covering_snaps_outward_to_the_source_pixels() -> None:
    like = from_origin(X0, Y0, 0.5, 0.5)
    grid = Grid.covering((X0 + 1.2, Y0 - 3.1, X0 + 2.6, Y0 - 0.9), UTM, like)
    assert grid.transform == Affine(0.5, 0, X0 + 1.0, 0, -0.5, Y0 - 0.5)
    assert (grid.width, grid.height) == (4, 6)
    assert tuple(grid.bounds) == (X0 + 1.0, Y0 - 3.5, X0 + 3.0, Y0 - 0.5)


def test_index_file_is_a_lazy_raster_any_reader_opens(tmp_path: Path) -> None:
    a, b = _image(7), _image(8)
    sources = open_sources([("a", _cog(tmp_path / "a.tif", a, 0, 0)), ("b", _cog(tmp_path / "b.tif", b, 20, 0))])
    grid = Grid.covering(union_bounds(sources, UTM), UTM, sources[0].transform)
    index = write_index(sources, grid, tmp_path / f"m{GTI_SUFFIX}")
    with rasterio.open(index) as src:
        assert (src.width, src.height, src.count, src.crs) == (40, 20, 4, UTM)
        assert src.transform == grid.transform
        window = rasterio.windows.Window(15, 5, 10, 10)  # across the seam: read without loading the rest
        np.testing.assert_array_equal(src.read(window=window), np.concatenate([a[:, 5:15, 15:], b[:, 5:15, :5]], 2))
    with pytest.raises(MosaicError, match=GTI_SUFFIX):
        write_index(sources, grid, tmp_path / "m.vrt")


def test_one_grid_mosaic_draws_later_tiles_on_top_and_refuses_mixed_crs(tmp_path: Path) -> None:
    first, second = _image(9), _image(10)
    paths = [_cog(tmp_path / "1.tif", first, 0, 0), _cog(tmp_path / "2.tif", second, 19, 0)]  # one shared column
    with rasterio.open(one_grid_mosaic(paths, tmp_path / f"t{GTI_SUFFIX}")) as src:
        data = src.read()
        assert src.dataset_mask().all()
    np.testing.assert_array_equal(data[:, :, :19], first[:, :, :19])
    np.testing.assert_array_equal(data[:, :, 19:], second)
    other = _cog(tmp_path / "3.tif", first, 40, 0, crs=CRS.from_epsg(32618))
    with pytest.raises(MosaicError, match="not on the grid"):
        one_grid_mosaic([paths[0], other], tmp_path / f"x{GTI_SUFFIX}")
