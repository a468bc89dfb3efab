"""Ingest: real Rotterdam imagery (B, G, R, NIR float64) into the local catalog, served and read back as tiles.

Synthetic GeoTIFFs written by `_geotiff` cover the band-order rules, dtypes and every IngestError.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from PIL import Image
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

from pearl_pipelines.geo import ingest as ingest_module
from pearl_pipelines.geo.catalog import load_collection_items
from pearl_pipelines.geo.cog import RGBN_DESCRIPTIONS, validate_cog
from pearl_pipelines.geo.grid import aoi_to_tile_keys
from pearl_pipelines.geo.ingest import IngestError, ingest_files, parse_band_map, stretch_to_uint8
from pearl_pipelines.geo.stac import StacCatalog
from pearl_pipelines.geo.stac_server import StacServer
from pearl_pipelines.geo.tiles import read_tile, write_tile_cog
from tests.conftest import free_port
from tests.data.rotterdam import ROTTERDAM_BAND_MAP, require_rotterdam_images

CRS = "EPSG:26918"


def _geotiff(path: Path, data: np.ndarray, *, crs: str | None = CRS, **options: object) -> Path:
    """A plain (non-COG) GeoTIFF, as a user would bring it. `options`: nodata, descriptions, colorinterp, tags."""
    descriptions = options.pop("descriptions", None)
    colorinterp = options.pop("colorinterp", None)
    tags = options.pop("tags", None)
    profile = {"driver": "GTiff", "count": data.shape[0], "height": data.shape[1], "width": data.shape[2]}
    profile |= {"dtype": data.dtype.name, "crs": crs, "transform": from_origin(376000, 4316000, 1.0, 1.0)}
    if data.shape[0] > 1:
        profile["photometric"] = "MINISBLACK"
    with rasterio.open(path, "w", **(profile | options)) as dst:
        dst.write(data)
        for i, desc in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, desc)
        if colorinterp:
            dst.colorinterp = colorinterp
        if tags:
            dst.update_tags(**tags)
    return path


def _distinct_bands(count: int = 4, dtype: str = "uint8", size: int = 64) -> np.ndarray:
    """Band i holds values 10*i + a small ramp, so any band mix-up is visible in the output."""
    ramp = np.arange(size * size).reshape(size, size) % 7
    return np.stack([10 * (i + 1) + ramp for i in range(count)]).astype(dtype)


def _source_valid(pixels: np.ndarray) -> np.ndarray:
    return (pixels != 0).any(axis=0)  # Rotterdam declares no nodata; its collar is 0 in every band


# --- the real Rotterdam images, end to end ----------------------------------------------------------------


@dataclass
class Rotterdam:
    sources: list[Path]
    catalog_dir: Path
    items: list[pystac.Item]
    server: StacServer


@pytest.fixture(scope="module")
def rotterdam(pearl_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rotterdam]:
    sources = require_rotterdam_images()
    catalog_dir = tmp_path_factory.mktemp("rotterdam_catalog")
    items = ingest_files(sources, catalog_dir, "rotterdam", band_map=ROTTERDAM_BAND_MAP)
    with StacServer(catalog_dir, port=free_port()) as server:
        yield Rotterdam(sources, catalog_dir, items, server)


def test_items_keep_the_native_grid_and_mask_the_collar(rotterdam: Rotterdam) -> None:
    assert [item.id for item in rotterdam.items] == ["ms1", "ms2", "ms3"]
    for item, source in zip(rotterdam.items, rotterdam.sources, strict=True):
        path = item.assets["image"].href
        assert validate_cog(path)[0]
        with rasterio.open(source) as src, rasterio.open(path) as out:
            assert out.crs == src.crs and out.transform == src.transform and out.shape == src.shape
            assert out.dtypes == ("uint8",) * 4 and out.descriptions == RGBN_DESCRIPTIONS
            assert out.colorinterp[3] != ColorInterp.alpha
            np.testing.assert_array_equal(out.dataset_mask() > 0, _source_valid(src.read()))
        assert item.properties["pearl:source"] == {"file": source.name, "bands": list(ROTTERDAM_BAND_MAP)}
    with rasterio.open(rotterdam.items[1].assets["image"].href) as out:
        assert 0.5 < (out.dataset_mask() > 0).mean() < 0.8, "ms2 has a nodata collar about a third of its area"


def test_red_band_is_source_band_3_with_a_2_98_percentile_stretch(rotterdam: Rotterdam) -> None:
    for item, source in zip(rotterdam.items, rotterdam.sources, strict=True):
        with rasterio.open(source) as src, rasterio.open(item.assets["image"].href) as out:
            pixels, rgbn = src.read(), out.read()
        valid = _source_valid(pixels)
        stretch = item.properties["pearl:stretch"]
        assert stretch["method"] == "percentile" and stretch["percentiles"] == [2.0, 98.0]
        for out_band, src_band in enumerate(ROTTERDAM_BAND_MAP):
            values = pixels[src_band - 1][valid]
            low, high = np.percentile(values, [2, 98])
            assert (stretch["low"][out_band], stretch["high"][out_band]) == pytest.approx((low, high))
            expected = np.clip(np.round((values - low) * 255 / (high - low)), 0, 255).astype(np.uint8)
            np.testing.assert_array_equal(rgbn[out_band][valid], expected)
        assert (rgbn[:, ~valid] == 0).all()


def test_search_tile_and_natural_colours(rotterdam: Rotterdam, tmp_path: Path) -> None:
    ms1 = rotterdam.items[0]
    catalog = StacCatalog(url=rotterdam.server.url, collections=["rotterdam"], local_root=rotterdam.catalog_dir)
    found = catalog.search(bbox=ms1.bbox)
    assert [item.id for item in found] == ["ms1"]
    assert catalog.search(bbox=[4.0, 40.0, 4.1, 40.1]) == []

    # Cut every tile over ms1 from the API's answer, write it as a COG, and paste the COGs back together.
    keys = aoi_to_tile_keys(ms1.geometry)
    assert len(keys) >= 2, "ms1 straddles a z15 tile edge: the paste below checks both sides"
    sources = [(item.id, href) for item, href in catalog.image_hrefs(found)]
    with rasterio.open(ms1.assets["image"].href) as src:
        image, image_valid, grid = src.read(), src.dataset_mask() > 0, src.transform
    pasted = np.zeros_like(image)
    pasted_valid = np.zeros_like(image_valid)
    for key in keys:
        tile = read_tile(key, sources)
        path = write_tile_cog(tile, tmp_path / f"{key}.tif")
        assert validate_cog(path)[0]
        # The tile is on ms1's own pixel grid: ms1 sits at a whole-pixel offset, its pixels copied exactly.
        col = (grid.c - tile.transform.c) / grid.a
        row = (grid.f - tile.transform.f) / grid.e
        assert abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6
        row, col = round(row), round(col)
        height, width = tile.valid.shape
        r0, r1, c0, c1 = max(row, 0), min(row + 300, height), max(col, 0), min(col + 300, width)
        in_tile, in_image = np.s_[r0:r1, c0:c1], np.s_[r0 - row : r1 - row, c0 - col : c1 - col]
        assert tile.valid.sum() == tile.valid[in_tile].sum(), "only ms1 lies in these tiles"
        with rasterio.open(path) as written:
            assert written.descriptions == RGBN_DESCRIPTIONS
            assert written.colorinterp[3] != ColorInterp.alpha
            assert tile.valid.all() or written.dataset_mask().min() == 0, "uncovered pixels are masked"
            pasted[(slice(None), *in_image)] = written.read()[(slice(None), *in_tile)]
            pasted_valid[in_image] = written.dataset_mask()[in_tile] > 0
    np.testing.assert_array_equal(pasted_valid, image_valid)
    np.testing.assert_array_equal(pasted, image)
    red, blue, nir = (pasted[i].astype(int) for i in (0, 2, 3))

    with rasterio.open(rotterdam.sources[0]) as src:
        b, g, r, n = src.read().astype(float)  # Rotterdam's order: blue, green, red, NIR
    ndvi = (n - r) / (n + r + 1e-9)
    vegetation = ndvi > 0.5
    assert vegetation.mean() > 0.2, "ms1 is a park and gardens"
    assert (nir[vegetation] > red[vegetation]).mean() > 0.98
    # Orange clay roofs: red well above blue and green, not vegetation. Wrong band order turns them blue.
    roofs = (r > 1.5 * b) & (r > 1.2 * g) & (ndvi < 0.2) & (r > 100)
    assert roofs.sum() > 1000
    assert (red[roofs] > blue[roofs]).mean() > 0.9
    swapped = stretch_to_uint8(np.stack([b, r]), *_stretch_of(b, r)).astype(int)  # read as R, G, B would be
    assert (swapped[0][roofs] < swapped[1][roofs]).mean() > 0.9


def _stretch_of(*bands: np.ndarray) -> tuple[list[float], list[float]]:
    lows, highs = zip(*(np.percentile(band[band > 0], [2, 98]) for band in bands), strict=True)
    return list(lows), list(highs)


def test_true_colour_rendering_looks_like_imagery(rotterdam: Rotterdam, tmp_path: Path) -> None:
    """A quick-look PNG (what a person checks by eye) and the statistics of a natural-colour scene."""
    with rasterio.open(rotterdam.items[0].assets["image"].href) as src:
        rgb = np.moveaxis(src.read([1, 2, 3]), 0, -1)
    Image.fromarray(rgb).save(tmp_path / "ms1_true_colour.png")
    green, blue = rgb[..., 1].astype(int), rgb[..., 2].astype(int)
    # Vegetation-rich suburb: green is the brightest band more often than blue; not a colour-swapped scene.
    assert (green > blue).mean() > 0.5
    assert 40 < rgb.mean() < 160 and rgb.std() > 30  # neither flat nor saturated


# --- band order ----------------------------------------------------------------------------------------


def _ingest_one(path: Path, catalog_dir: Path, **kwargs: object) -> tuple[pystac.Item, np.ndarray, np.ndarray]:
    (item,) = ingest_files([path], catalog_dir, "synthetic", **kwargs)  # type: ignore[arg-type]
    with rasterio.open(item.assets["image"].href) as out:
        return item, out.read(), out.dataset_mask() > 0


def test_band_descriptions_saying_blue_first_are_honoured(tmp_path: Path) -> None:
    data = _distinct_bands()
    path = _geotiff(tmp_path / "bgrn.tif", data, descriptions=["Blue", "green", "RED", "near-infrared"])
    item, rgbn, _ = _ingest_one(path, tmp_path / "catalog")
    assert item.properties["pearl:source"]["bands"] == [3, 2, 1, 4]
    np.testing.assert_array_equal(rgbn, data[[2, 1, 0, 3]])
    assert item.properties["pearl:stretch"]["method"] == "none"  # uint8 is copied, not stretched


def test_three_named_bands_pin_down_the_fourth(tmp_path: Path) -> None:
    data = _distinct_bands()
    path = _geotiff(tmp_path / "nrgb.tif", data, descriptions=["", "red", "green", "blue"])
    item, rgbn, _ = _ingest_one(path, tmp_path / "catalog")
    assert item.properties["pearl:source"]["bands"] == [2, 3, 4, 1]
    np.testing.assert_array_equal(rgbn, data[[1, 2, 3, 0]])


@pytest.mark.parametrize(
    "colorinterp",
    [None, [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined]],
    ids=["undescribed", "naip-like"],
)
def test_plain_four_band_file_is_rgbn(tmp_path: Path, colorinterp: list[ColorInterp] | None) -> None:
    data = _distinct_bands()
    item, rgbn, valid = _ingest_one(_geotiff(tmp_path / "rgbn.tif", data, colorinterp=colorinterp), tmp_path / "c")
    assert item.properties["pearl:source"]["bands"] == [1, 2, 3, 4]
    np.testing.assert_array_equal(rgbn, data)
    assert valid.all()


def test_band_four_flagged_alpha_needs_an_explicit_map(tmp_path: Path) -> None:
    data = _distinct_bands()
    data[3, :10] = 0  # dark NIR that an alpha reading would mask
    alpha = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    path = _geotiff(tmp_path / "rgba.tif", data, colorinterp=alpha)
    with pytest.raises(IngestError, match=r"alpha band.*--bands"):
        ingest_files([path], tmp_path / "catalog", "synthetic")
    _, rgbn, valid = _ingest_one(path, tmp_path / "catalog", band_map=(1, 2, 3, 4))
    np.testing.assert_array_equal(rgbn, data)
    assert valid.all(), "NIR taken as NIR must not mask pixels"


def test_five_band_file_with_a_map(tmp_path: Path) -> None:
    data = _distinct_bands(count=5)
    _, rgbn, _ = _ingest_one(_geotiff(tmp_path / "five.tif", data), tmp_path / "catalog", band_map=(5, 3, 2, 4))
    np.testing.assert_array_equal(rgbn, data[[4, 2, 1, 3]])


# --- dtypes, nodata, metadata ----------------------------------------------------------------------------


def test_uint16_with_nodata_is_stretched_over_valid_pixels(tmp_path: Path) -> None:
    data = (_distinct_bands(dtype="uint16") * 100).astype(np.uint16)
    data[:, :, :8] = 0  # declared nodata
    data[0, 20, 20] = 60000  # a hot pixel: clipped, does not squash the stretch
    path = _geotiff(tmp_path / "u16.tif", data, nodata=0, tags={"TIFFTAG_DATETIME": "2021:08:03 10:30:00"})
    item, rgbn, valid = _ingest_one(path, tmp_path / "catalog")
    assert not valid[:, :8].any() and valid[:, 8:].all()
    stretch = item.properties["pearl:stretch"]
    assert stretch["source_dtype"] == "uint16"
    assert stretch["low"][0] == pytest.approx(np.percentile(data[0][:, 8:], 2))
    assert rgbn[0, 20, 20] == 255 and 0 < np.median(rgbn[0][valid]) < 255
    assert item.datetime == dt.datetime(2021, 8, 3, 10, 30, tzinfo=dt.UTC)


def test_float_nan_is_nodata_and_datetime_argument_wins(tmp_path: Path) -> None:
    data = _distinct_bands(dtype="float32") / 100
    data[2, :5] = np.nan
    when = dt.datetime(2020, 6, 1, 12, tzinfo=dt.UTC)
    item, _, valid = _ingest_one(_geotiff(tmp_path / "f32.tif", data), tmp_path / "catalog", datetime=when)
    assert not valid[:5].any() and valid[5:].all()
    assert item.datetime == when


def test_parse_band_map() -> None:
    assert parse_band_map("3,2,1,4") == (3, 2, 1, 4)
    assert parse_band_map(" 3, 2 ,1,4") == (3, 2, 1, 4)
    for bad in ("3,2,1", "a,b,c,d", "3,2,1,4,5", "-1,2,3,4"):
        with pytest.raises(IngestError, match="3,2,1,4"):
            parse_band_map(bad)


# --- errors ----------------------------------------------------------------------------------------------


def _text_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.tif"
    path.write_text("not an image\n")
    return path


def _png_without_georef(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize(
    ("make", "kwargs", "message"),
    [
        (lambda d: d / "missing.tif", {}, "file not found"),
        (_text_file, {}, "not a raster GDAL can read"),
        (_png_without_georef, {}, "no coordinate reference system"),
        (lambda d: _geotiff(d / "nocrs.tif", _distinct_bands(), crs=None), {}, "no coordinate reference system"),
        (lambda d: _geotiff(d / "rgb.tif", _distinct_bands(3)), {}, r"has 3 band\(s\).*--bands 3,2,1,4"),
        (lambda d: _geotiff(d / "rgbn.tif", _distinct_bands()), {"band_map": (5, 2, 1, 4)}, "band 5 .* out of range"),
        (lambda d: _geotiff(d / "rgbn.tif", _distinct_bands()), {"band_map": (0, 2, 1, 4)}, "band 0 .* out of range"),
        (lambda d: _geotiff(d / "c.tif", _distinct_bands(dtype="complex64")), {}, "complex64 is not supported"),
        (lambda d: _geotiff(d / "nan.tif", np.full((4, 8, 8), np.nan, np.float32)), {}, "every pixel is nodata"),
        (lambda d: _geotiff(d / "zero.tif", np.zeros((4, 8, 8), np.uint16)), {}, "every pixel is nodata"),
        (
            lambda d: _geotiff(d / "dup.tif", _distinct_bands(), descriptions=["red", "red", "blue", "nir"]),
            {},
            "repeat a band role",
        ),
        (
            lambda d: _geotiff(d / "bg.tif", _distinct_bands(), descriptions=["blue", "green", "", ""]),
            {},
            r"contradict.*band 1 = blue.*--bands",
        ),
    ],
    ids=[
        "missing",
        "text",
        "png",
        "no-crs",
        "3-bands",
        "band-too-high",
        "band-zero",
        "complex",
        "all-nan",
        "all-zero",
        "duplicate-roles",
        "contradicting-descriptions",
    ],
)
def test_ingest_errors(tmp_path: Path, make, kwargs: dict[str, object], message: str) -> None:  # type: ignore[no-untyped-def]
    path = make(tmp_path)
    with pytest.raises(IngestError, match=message) as excinfo:
        ingest_files([path], tmp_path / "catalog", "mine", **kwargs)  # type: ignore[arg-type]
    assert str(path) in str(excinfo.value), "the message names the file"
    assert not (tmp_path / "catalog" / "mine" / "collection.json").exists()


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match=r"four 1-based band numbers.*--bands 3,2,1,4"):
        ingest_files([tmp_path / "x.tif"], tmp_path, "mine", band_map=(1, 2, 3))
    with pytest.raises(IngestError, match="collection id"):
        ingest_files([tmp_path / "x.tif"], tmp_path, "My Imagery!")
    with pytest.raises(IngestError, match="no files"):
        ingest_files([], tmp_path, "mine")


def test_same_file_name_twice_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    paths = [_geotiff(tmp_path / d / "img.tif", _distinct_bands()) for d in ("a", "b")]
    with pytest.raises(IngestError, match="would both become item 'img'"):
        ingest_files(paths, tmp_path / "catalog", "mine")


# --- the catalog is never damaged ------------------------------------------------------------------------


def _snapshot(collection_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(collection_dir)): p.read_bytes() for p in sorted(collection_dir.rglob("*")) if p.is_file()
    }


def test_collections_grow_and_failures_leave_them_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog_dir = tmp_path / "catalog"
    first = _geotiff(tmp_path / "first.tif", _distinct_bands())
    second = _geotiff(tmp_path / "second.tif", _distinct_bands() + 1)
    ingest_files([first], catalog_dir, "mine")
    collection_dir = catalog_dir / "mine"
    before = _snapshot(collection_dir)

    # Validation failure: a good file next to a bad one writes nothing.
    with pytest.raises(IngestError):
        ingest_files([second, _text_file(tmp_path)], catalog_dir, "mine")
    assert _snapshot(collection_dir) == before

    # Failure while writing (after validation passed): staged files are dropped, the catalog is untouched.
    calls = {"n": 0}
    real_write_cog = ingest_module.write_cog

    def failing_write_cog(*args: object, **kwargs: object) -> Path:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real_write_cog(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ingest_module, "write_cog", failing_write_cog)
    third = _geotiff(tmp_path / "third.tif", _distinct_bands() + 2)
    with pytest.raises(OSError, match="disk full"):
        ingest_files([second, third], catalog_dir, "mine")
    monkeypatch.undo()
    assert _snapshot(collection_dir) == before
    assert not list(collection_dir.glob(".ingest-*"))

    # Failure while saving the collection, with an item being replaced: the old item folder comes back.
    def failing_save(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ingest_module, "save_collection", failing_save)
    with pytest.raises(OSError, match="disk full"):
        ingest_files([first, second], catalog_dir, "mine")
    with pytest.raises(OSError, match="disk full"):
        ingest_files([first], catalog_dir, "brand-new")
    monkeypatch.undo()
    assert _snapshot(collection_dir) == before
    assert not (catalog_dir / "brand-new").exists()

    # Success adds to the collection; re-ingesting a file replaces its item.
    ingest_files([second], catalog_dir, "mine")
    ingest_files([first], catalog_dir, "mine", datetime=dt.datetime(2022, 1, 1, tzinfo=dt.UTC))
    items = {item.id: item for item in load_collection_items(catalog_dir, "mine")}
    assert set(items) == {"first", "second"}
    assert items["first"].datetime == dt.datetime(2022, 1, 1, tzinfo=dt.UTC)
    collection = pystac.Collection.from_file(str(collection_dir / "collection.json"))
    assert collection.extent.spatial.bboxes[0] == pytest.approx(list(items["first"].bbox), abs=1e-6)


def test_adding_to_a_collection_keeps_its_description(tmp_path: Path) -> None:
    """Adding own imagery to an existing collection keeps the collection's description and items."""
    catalog_dir = tmp_path / "catalog"
    ingest_files([_geotiff(tmp_path / "base.tif", _distinct_bands())], catalog_dir, "region")
    description = pystac.Collection.from_file(str(catalog_dir / "region" / "collection.json")).description
    shutil.copy(tmp_path / "base.tif", tmp_path / "extra.tif")
    ingest_files([tmp_path / "extra.tif"], catalog_dir, "region")
    collection = pystac.Collection.from_file(str(catalog_dir / "region" / "collection.json"))
    assert collection.description == description
    assert {item.id for item in collection.get_items()} == {"base", "extra"}
