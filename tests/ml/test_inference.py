from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
import torch
from affine import Affine
from shapely.geometry import Point, box

from pearl_pipelines.classes import NODATA_CLASS
from pearl_pipelines.geo.cog import validate_cog, write_cog
from pearl_pipelines.ml.inference import Region, WindowPlan, inference_copy, predict, run_windows
from pearl_pipelines.ml.models import LandcoverModel
from pearl_pipelines.ml.outputs import CONFIDENCE_NODATA
from pearl_pipelines.ml.tiling import ArraySource, Tiling, default_tiling
from tests.ml.conftest import CRS, ORIGIN, tiny_model, write_image

SMALL = Tiling(window=64, margin=6, fade=8)


def read(path: Path) -> tuple[np.ndarray, rasterio.Affine]:
    with rasterio.open(path) as src:
        return src.read(1), src.transform


def offset(inner: rasterio.Affine, outer: rasterio.Affine) -> tuple[int, int]:
    return round((inner.f - outer.f) / outer.e), round((inner.c - outer.c) / outer.a)


def engine_probs(model: LandcoverModel, image: np.ndarray, region: Region, tiling: Tiling, anchor=(0, 0)):
    """Softmax probabilities of `region` straight from the engine (no uint8 rounding)."""
    net = inference_copy(model, torch.device("cpu"))
    k = len(model.spec.schema)
    out = np.full((region.height, region.width, k), np.nan, dtype=np.float32)

    def sink(row: int, col: int, block: torch.Tensor) -> None:
        h, w = block.shape[:2]
        out[row - region.row0 : row - region.row0 + h, col - region.col0 : col - region.col0 + w] = torch.softmax(
            block, dim=-1
        ).numpy()

    plan = WindowPlan.build(region, tiling, anchor, band_cols=4 * tiling.stride)
    with torch.inference_mode():
        run_windows(ArraySource(image), plan, net, k, sink, device=torch.device("cpu"), batch_size=3)
    assert not np.isnan(out).any()
    return out


@pytest.mark.parametrize(("arch", "crop"), [("fcn", False), ("fcn", True), ("unet", False)])
def test_prediction_is_position_independent(arch: str, crop: bool, image_array: np.ndarray) -> None:
    model = tiny_model(arch)
    tiling = Tiling(window=64, margin=8, fade=0 if crop else 8, crop=crop)
    full = engine_probs(model, image_array, Region(0, 0, 300, 380), tiling, anchor=(11, 5))
    part = engine_probs(model, image_array, Region(97, 131, 71, 90), tiling, anchor=(11, 5))
    np.testing.assert_allclose(part, full[97:168, 131:221], atol=1e-5)
    np.testing.assert_array_equal(part.argmax(-1), full[97:168, 131:221].argmax(-1))


def test_fcn_windows_are_seamless(fcn: LandcoverModel, image_array: np.ndarray) -> None:
    """With margin >= receptive field, windowed FCN logits equal one forward pass over the whole image."""
    full = engine_probs(fcn, image_array, Region(0, 0, 300, 380), SMALL)
    with torch.inference_mode():
        direct = torch.softmax(fcn(torch.from_numpy(image_array)[None]), dim=1)[0].permute(1, 2, 0).numpy()
    edge = 6  # the raster's own border is padded differently (mirror vs zeros)
    np.testing.assert_allclose(full[edge:-edge, edge:-edge], direct[edge:-edge, edge:-edge], atol=1e-5)


def test_aoi_prediction_matches_the_same_pixels_of_a_larger_run(
    fcn: LandcoverModel, image_path: Path, tmp_path: Path
) -> None:
    whole = predict(fcn, image_path, tmp_path / "whole", tiling=SMALL, device="cpu")
    aoi = box(ORIGIN[0] + 120.4, ORIGIN[1] - 230.2, ORIGIN[0] + 251.7, ORIGIN[1] - 101.9)
    part = predict(fcn, image_path, tmp_path / "part", aoi=aoi, tiling=SMALL, device="cpu", batch_size=2)
    big, big_t = read(whole.classes_path)
    small, small_t = read(part.classes_path)
    r, c = offset(small_t, big_t)
    inside = small != NODATA_CLASS  # bbox pixels whose centre is outside the AOI are nodata
    assert inside.mean() > 0.95
    np.testing.assert_array_equal(small[inside], big[r : r + small.shape[0], c : c + small.shape[1]][inside])
    conf_big, _ = read(whole.confidence_path)
    conf_small, _ = read(part.confidence_path)
    window = conf_big[r : r + small.shape[0], c : c + small.shape[1]].astype(int)
    assert np.abs(conf_small.astype(int) - window)[inside].max() <= 1


def test_grid_is_anchored_to_the_crs_not_the_file(fcn: LandcoverModel, image_array: np.ndarray, tmp_path: Path) -> None:
    """A crop saved as its own file (origin shifted by a non-stride amount) predicts the same interior pixels."""
    whole_path = write_image(tmp_path / "whole.tif", image_array)
    crop_path = write_image(tmp_path / "crop.tif", image_array[:, 37:250, 53:330], (ORIGIN[0] + 53, ORIGIN[1] - 37))
    whole, _ = read(predict(fcn, whole_path, tmp_path / "a", tiling=SMALL, device="cpu").classes_path)
    crop, _ = read(predict(fcn, crop_path, tmp_path / "b", tiling=SMALL, device="cpu").classes_path)
    m = SMALL.window  # away from the crop's own raster edges
    np.testing.assert_array_equal(crop[m:-m, m:-m], whole[37 + m : 250 - m, 53 + m : 330 - m])


def test_vrt_mosaic_predicts_like_the_single_file(fcn: LandcoverModel, image_array: np.ndarray, tmp_path: Path) -> None:
    left = write_image(tmp_path / "left.tif", image_array[:, :, :190])
    right = write_image(tmp_path / "right.tif", image_array[:, :, 190:], (ORIGIN[0] + 190, ORIGIN[1]))
    sources = "".join(
        f"""<SimpleSource><SourceFilename relativeToVRT="1">{path.name}</SourceFilename><SourceBand>{b}</SourceBand>
        <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="300"/><DstRect xOff="{x}" yOff="0" xSize="{w}" ySize="300"/>
        </SimpleSource>"""
        for path, x, w in ((left, 0, 190), (right, 190, 190))
        for b in [0]
    )
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}">' + sources.replace("<SourceBand>0<", f"<SourceBand>{b}<")
        + "</VRTRasterBand>"
        for b in range(1, 5)
    )  # fmt: skip
    with rasterio.open(left) as src:
        srs, t = src.crs.to_wkt(), src.transform
    vrt = tmp_path / "mosaic.vrt"
    vrt.write_text(
        f'<VRTDataset rasterXSize="380" rasterYSize="300"><SRS>{srs}</SRS>'
        f"<GeoTransform>{t.c}, {t.a}, 0, {t.f}, 0, {t.e}</GeoTransform>{bands}</VRTDataset>"
    )
    single, _ = read(
        predict(fcn, write_image(tmp_path / "one.tif", image_array), tmp_path / "a", device="cpu").classes_path
    )
    mosaic, _ = read(predict(fcn, vrt, tmp_path / "b", device="cpu").classes_path)
    np.testing.assert_array_equal(mosaic, single)


def test_output_is_a_valid_cog_with_colours_and_nodata_outside_the_aoi(
    fcn: LandcoverModel, image_path: Path, tmp_path: Path
) -> None:
    circle = Point(ORIGIN[0] + 150, ORIGIN[1] - 120).buffer(80)
    calls: list[tuple[int, int]] = []
    result = predict(
        fcn, image_path, tmp_path, aoi=circle, tiling=SMALL, device="cpu", progress=lambda d, t: calls.append((d, t))
    )
    for path in (result.classes_path, result.confidence_path):
        valid, errors, _ = validate_cog(path)
        assert valid, errors
    with rasterio.open(result.classes_path) as src:
        classes = src.read(1)
        assert src.nodata == NODATA_CLASS
        assert src.colormap(1)[2] == fcn.spec.schema.colormap()[2]
        assert src.tags()["classes"] == ",".join(fcn.spec.schema.names)
        rows, cols = np.mgrid[: src.height, : src.width]
        xs, ys = src.xy(rows.ravel(), cols.ravel())
    with rasterio.open(result.confidence_path) as src:
        confidence = src.read(1)
        assert src.nodata == CONFIDENCE_NODATA
    inside = shapely.contains_xy(circle, np.asarray(xs), np.asarray(ys)).reshape(classes.shape)
    assert np.all(classes[~inside] == NODATA_CLASS) and np.all(confidence[~inside] == CONFIDENCE_NODATA)
    assert np.all(classes[inside] < len(fcn.spec.schema)) and np.all(confidence[inside] >= 255 // 4)
    assert len(np.unique(classes[inside])) > 1
    assert calls[-1][0] == calls[-1][1] == result.windows and [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_narrow_column_bands_change_nothing(fcn: LandcoverModel, image_path: Path, tmp_path: Path) -> None:
    wide = predict(fcn, image_path, tmp_path / "wide", tiling=SMALL, device="cpu")
    narrow = predict(fcn, image_path, tmp_path / "narrow", tiling=SMALL, device="cpu", buffer_mb=0.01)
    assert narrow.windows > wide.windows  # windows on band edges run twice
    np.testing.assert_array_equal(read(narrow.classes_path)[0], read(wide.classes_path)[0])


def test_aoi_in_another_crs(fcn: LandcoverModel, image_path: Path, tmp_path: Path) -> None:
    from pyproj import Transformer

    to_lonlat = Transformer.from_crs("EPSG:32618", "EPSG:4326", always_xy=True)
    utm = box(ORIGIN[0] + 50, ORIGIN[1] - 150, ORIGIN[0] + 150, ORIGIN[1] - 50)
    aoi = shapely.transform(utm, lambda xy: np.column_stack(to_lonlat.transform(xy[:, 0], xy[:, 1])))
    result = predict(fcn, image_path, tmp_path, aoi=aoi, aoi_crs="EPSG:4326", device="cpu", show_progress=True)
    assert 99 <= result.height <= 102 and 99 <= result.width <= 102


def test_bad_aoi_and_imagery_are_refused(fcn: LandcoverModel, image_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="do not intersect"):
        predict(fcn, image_path, tmp_path, aoi=box(0, 0, 10, 10), device="cpu")
    rgb = write_image(tmp_path / "rgb.tif", np.zeros((3, 64, 64), np.uint8))
    with pytest.raises(ValueError, match="needs 4 uint8 bands"):
        predict(fcn, rgb, tmp_path, device="cpu")


def test_default_tiling_follows_the_backbone(fcn: LandcoverModel, unet: LandcoverModel) -> None:
    assert default_tiling(fcn.backbone).margin >= fcn.backbone.receptive_field // 2
    assert default_tiling(unet.backbone).window % unet.backbone.multiple == 0


def test_pixels_without_imagery_are_nodata(fcn: LandcoverModel, image_array: np.ndarray, tmp_path: Path) -> None:
    covered = np.ones(image_array.shape[1:], bool)
    covered[:, :100] = False  # e.g. the collar of a scene, or a gap in a mosaic
    path = write_cog(
        tmp_path / "masked.tif", image_array, crs=CRS, transform=Affine(1, 0, ORIGIN[0], 0, -1, ORIGIN[1]), mask=covered
    )
    classes, _ = read(predict(fcn, path, tmp_path / "out", device="cpu").classes_path)
    assert np.all(classes[:, :100] == NODATA_CLASS) and np.all(classes[:, 100:] != NODATA_CLASS)
