"""COG writing: valid COGs, explicit band semantics (NIR is not alpha), colour tables, masks, tags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

from pearl_pipelines.geo.cog import RGBN_DESCRIPTIONS, validate_cog, write_cog

CRS = "EPSG:26918"
TRANSFORM = from_origin(376000, 4316000, 1.0, 1.0)


def _rgbn(height: int = 600, width: int = 700) -> np.ndarray:
    rng = np.random.default_rng(0)
    data = rng.integers(1, 255, size=(4, height, width), dtype=np.uint8)
    data[3, :100] = 0  # dark NIR (water): must stay valid, not be read as transparent
    return data


def test_rgbn_cog_is_valid_and_nir_is_not_alpha(tmp_path: Path) -> None:
    data = _rgbn()
    path = write_cog(tmp_path / "rgbn.tif", data, crs=CRS, transform=TRANSFORM, descriptions=RGBN_DESCRIPTIONS)

    valid, errors, _ = validate_cog(path)
    assert valid, errors
    with rasterio.open(path) as src:
        assert src.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined)
        assert src.descriptions == RGBN_DESCRIPTIONS
        assert src.overviews(1), "a 600 x 700 COG should carry overviews"
        assert (src.dataset_mask() == 255).all(), "band 4 acted as alpha and masked dark NIR pixels"
        np.testing.assert_array_equal(src.read(), data)


def test_mask_round_trips(tmp_path: Path) -> None:
    data = _rgbn(300, 300)
    mask = np.ones((300, 300), dtype=bool)
    mask[:, :40] = False
    path = write_cog(tmp_path / "masked.tif", data, crs=CRS, transform=TRANSFORM, mask=mask)

    assert validate_cog(path)[0]
    with rasterio.open(path) as src:
        np.testing.assert_array_equal(src.dataset_mask() > 0, mask)
        np.testing.assert_array_equal(src.read()[:, mask], data[:, mask])


def test_class_raster_keeps_colour_table_nodata_and_tags(tmp_path: Path) -> None:
    classes = np.arange(300 * 300, dtype=np.uint8).reshape(300, 300) % 4
    classes[0, 0] = 255
    colormap = {0: (0, 0, 255, 255), 1: (0, 128, 0, 255), 2: (200, 200, 0, 255), 3: (128, 128, 128, 255)}
    path = write_cog(
        tmp_path / "classes.tif",
        classes,
        crs=CRS,
        transform=TRANSFORM,
        nodata=255,
        colormap=colormap,
        tags={"class_schema": "chesapeake4", "pearl:model": "v3"},
        overview_resampling="mode",
    )

    assert validate_cog(path)[0]
    with rasterio.open(path) as src:
        assert src.count == 1 and src.nodata == 255
        assert src.colorinterp == (ColorInterp.palette,)
        written = src.colormap(1)
        assert all(written[k] == v for k, v in colormap.items())
        assert src.tags()["class_schema"] == "chesapeake4"
        assert src.tags()["pearl_model"] == "v3", "GDAL would split 'pearl:model' at the colon"
        np.testing.assert_array_equal(src.read(1), classes)


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_non_uint8_cog_is_valid(tmp_path: Path, dtype: str) -> None:
    data = (np.arange(2 * 64 * 64).reshape(2, 64, 64) % 1000).astype(dtype)
    path = write_cog(tmp_path / f"{dtype}.tif", data, crs=CRS, transform=TRANSFORM)
    assert validate_cog(path)[0]
    with rasterio.open(path) as src:
        assert src.dtypes == (dtype, dtype)
        np.testing.assert_array_equal(src.read(), data)


def test_validate_cog_rejects_a_plain_striped_geotiff(tmp_path: Path) -> None:
    path = tmp_path / "plain.tif"
    profile = {"driver": "GTiff", "count": 1, "height": 1024, "width": 1024, "dtype": "uint8", "crs": CRS}
    with rasterio.open(path, "w", transform=TRANSFORM, **profile) as dst:
        dst.write(np.zeros((1, 1024, 1024), dtype=np.uint8))
    valid, errors, _ = validate_cog(path)
    assert not valid and errors
