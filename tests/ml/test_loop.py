"""The label-to-map loop API (`ml.loop`): windows of a cache, windowed re-prediction, the one evaluate function."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.windows import Window
from shapely.geometry import Point

from pearl_pipelines.classes import ClassSchema
from pearl_pipelines.geo.grid import tile_geometry
from pearl_pipelines.ml.embeddings import EmbeddingCache
from pearl_pipelines.ml.errors import RetrainError
from pearl_pipelines.ml.loop import evaluate, holdout_mask, repredict
from pearl_pipelines.ml.metrics import compute_metrics
from pearl_pipelines.ml.retrain import evolve_schema
from pearl_pipelines.ml.versions import ModelVersion
from tests.ml.conftest import CRS, ORIGIN, pixel_xy

HEIGHT, WIDTH, CHANNELS = 70, 90, 6


def _cache(directory: Path, height: int = HEIGHT, width: int = WIDTH, origin=ORIGIN, seed: int = 0) -> EmbeddingCache:
    cache = EmbeddingCache.create(
        directory,
        crs=CRS,
        transform=Affine(1, 0, origin[0], 0, -1, origin[1]),
        height=height,
        width=width,
        channels=CHANNELS,
        backbone_digest="bb-test",
    )
    block = torch.from_numpy(np.random.default_rng(seed).normal(3.0, 1.0, (height, width, CHANNELS)).astype(np.float32))
    valid = np.ones((height, width), bool)
    valid[:5, :7] = False  # some nodata, so the valid mask is windowed too
    cache.write_block(0, 0, block, valid)
    cache.flush()
    return EmbeddingCache.open(directory)


def _version(schema: ClassSchema, spatial: bool = False, seed: int = 1) -> ModelVersion:
    rng = np.random.default_rng(seed)
    k = len(schema)
    extra = {}
    if spatial:  # two local heads, centred inside the cache: the blend depends on where each pixel is
        centres = np.array([[ORIGIN[0] + 20, ORIGIN[1] - 15], [ORIGIN[0] + 70, ORIGIN[1] - 50]])
        extra = {
            "centres": centres,
            "local_weight": rng.normal(size=(2, k, CHANNELS)),
            "local_bias": rng.normal(size=(2, k)),
            "bandwidth": np.array(15.0),
        }
    return ModelVersion(
        id="v-test",
        parent_id=None,
        base_model_id="bb-test",
        schema=schema,
        weight=rng.normal(size=(k, CHANNELS)),
        bias=rng.normal(size=k),
        strategy="test",
        head_extra=extra,
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> EmbeddingCache:
    return _cache(tmp_path_factory.mktemp("loop") / "cache")


# -- windows ------------------------------------------------------------------------------------------------------
def test_a_window_is_a_view_with_its_own_transform(cache: EmbeddingCache) -> None:
    view = cache.window(Window(col_off=10, row_off=20, width=30, height=15))
    assert view.shape == (15, 30) and view.view
    assert np.shares_memory(view.array, cache.array)  # memmap slices, no copy
    assert np.array_equal(view.array[0, 0], cache.array[20, 10]) and np.array_equal(
        view.valid, cache.valid[20:35, 10:40]
    )
    assert view.transform @ (0, 0) == cache.transform @ (10, 20)
    with pytest.raises(ValueError, match="read-only"):
        view.flush()  # would overwrite the whole cache's metadata
    with pytest.raises(ValueError, match="not inside"):
        cache.window(Window(80, 0, 20, 10))


def test_lonlat_window_is_the_tile_window_of_an_aoi_cache(tmp_path: Path) -> None:
    from rasterio.warp import transform_bounds

    from pearl_pipelines.geo.grid import get_tms, parse_tile_key

    key = "15-9427-12525"
    west, south, east, north = transform_bounds("EPSG:4326", CRS, *get_tms().bounds(parse_tile_key(key)))
    # The AOI cache reaches 100 m past the tile's north-west corner.
    aoi = _cache(tmp_path / "cache", int(north - south) + 200, int(east - west) + 200, (west - 100, north + 100))
    window = aoi.lonlat_window(tile_geometry(key))
    assert window is not None
    assert 95 <= window.row_off <= 101 and 95 <= window.col_off <= 101  # the tile starts ~100 px in
    view = aoi.window(window)
    assert np.array_equal(view.array[0, 0], aoi.array[int(window.row_off), int(window.col_off)])
    assert aoi.lonlat_window((0.0, 0.0, 0.001, 0.001)) is None  # far away: no window
    # Bounds over the cache's north-west corner: the window is cropped to the cache.
    x0, y0 = aoi.transform @ (0, 0)
    corner = transform_bounds(CRS, "EPSG:4326", x0 - 20, y0 - 10, x0 + 10, y0 + 20)
    partial = aoi.lonlat_window(corner)
    assert partial is not None and (partial.row_off, partial.col_off) == (0, 0)
    assert 10 <= partial.height <= 13 and 10 <= partial.width <= 13  # 10 m, plus what reprojecting bounds adds


# -- windowed re-prediction ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("spatial", [False, True], ids=["linear", "spatial"])
def test_repredicting_a_window_is_that_window_of_the_full_map(
    cache: EmbeddingCache, tmp_path: Path, schema4: ClassSchema, spatial: bool
) -> None:
    version = _version(schema4, spatial)
    full = repredict(cache, version, schema4, tmp_path / "full")
    window = Window(col_off=13, row_off=2, width=41, height=37)  # crosses the nodata corner
    part = repredict(cache.directory, version, schema4, tmp_path / "part", window=window)
    assert (part.height, part.width) == (37, 41)
    for name in ("classes_path", "confidence_path"):
        with rasterio.open(getattr(full, name)) as a, rasterio.open(getattr(part, name)) as b:
            assert b.transform == a.window_transform(window) and b.crs == a.crs
            np.testing.assert_array_equal(b.read(1), a.read(1, window=window))


# -- evaluation ---------------------------------------------------------------------------------------------------
def _labels(cache: EmbeddingCache, version: ModelVersion, n: int = 60, seed: int = 2) -> gpd.GeoDataFrame:
    """Points on valid pixels, labelled with a mix of what the head predicts there and something else."""
    rng = np.random.default_rng(seed)
    rows, cols = rng.integers(5, HEIGHT, n), rng.integers(7, WIDTH, n)
    x = np.asarray(cache.array[rows, cols], np.float32) + cache.offset
    predicted = version.logits(x, cache.xy(rows, cols)).argmax(axis=1)
    truth = np.where(rng.random(n) < 0.6, predicted, rng.integers(0, len(version.schema), n))
    xs, ys = pixel_xy(rows, cols)
    return gpd.GeoDataFrame(
        {"class_name": [version.schema.names[i] for i in truth], "label_id": range(n)},
        geometry=[Point(a, b) for a, b in zip(xs, ys, strict=True)],
        crs=CRS,
    )


def test_evaluate_is_the_metrics_of_the_head_on_the_labelled_pixels(
    cache: EmbeddingCache, schema4: ClassSchema
) -> None:
    version = _version(schema4)
    labels = _labels(cache, version)
    rows, cols = (
        np.floor(ORIGIN[1] - labels.geometry.y).astype(int),
        np.floor(labels.geometry.x - ORIGIN[0]).astype(int),
    )
    x = np.asarray(cache.array[rows, cols], np.float32) + cache.offset
    expected = compute_metrics(
        np.array([schema4.index(n) for n in labels["class_name"]]),
        version.logits(x).argmax(axis=1),
        schema4.names,
        method="holdout:labels (never trained on)",
    )
    # The review app passes cache folders; the champion gate open caches and its held-out labels: one function.
    assert evaluate(version, schema4, [cache.directory], labels) == expected
    assert evaluate(version, schema4, [cache], labels) == expected
    held_out = holdout_mask(labels, 0.3)
    assert evaluate(version, schema4, [cache.directory], labels[held_out]) == evaluate(
        version, schema4, [cache], labels[held_out]
    )
    assert evaluate(version, schema4, [cache], labels.iloc[:0]) is None  # no held-out labels: nothing to compare
    far = labels.set_geometry(labels.geometry.translate(10_000, 0))
    assert evaluate(version, schema4, [cache], far) is None  # no label on any cache


def test_evaluate_matches_classes_by_index_on_the_project_schema(cache: EmbeddingCache, schema4: ClassSchema) -> None:
    version = _version(schema4)
    labels = _labels(cache, version)
    base = evaluate(version, schema4, [cache], labels)
    assert base is not None
    # A renamed class is the same class (same index, same pixel value): the numbers do not change.
    old = schema4.names[1]
    renamed = evolve_schema(schema4, rename={old: "renamed"})
    relabelled = labels.assign(class_name=labels["class_name"].replace(old, "renamed"))
    report = evaluate(version, renamed, [cache], relabelled)
    assert report is not None and report.macro_f1 == base.macro_f1 and report.confusion == base.confusion
    # A class added since the version was fit is never predicted by it: its labels count as errors.
    grown = evolve_schema(schema4, add={"solar_panel": "#ffaa00"})
    with_new = labels.assign(class_name=["solar_panel"] * 5 + labels["class_name"].tolist()[5:])
    report = evaluate(version, grown, [cache], with_new)
    assert report is not None and report.class_names == grown.names
    assert report.support[4] == 5 and report.recall[4] == 0 and not any(row[4] for row in report.confusion)
    # A label of a class the schema does not have is an error, not a silent miss.
    with pytest.raises(RetrainError, match="solar_panel"):
        evaluate(version, schema4, [cache], with_new)
    # A version with more classes than the schema cannot be scored on it.
    with pytest.raises(RetrainError, match="fewer than"):
        evaluate(_version(grown), schema4, [cache], labels)


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
