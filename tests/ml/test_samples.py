from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from shapely.geometry import MultiPoint, Point, box

from pearl_pipelines.ml.errors import RetrainError
from pearl_pipelines.ml.samples import SamplingConfig, labels_to_samples
from tests.ml.conftest import CRS, ORIGIN, labels_frame, pixel_box, pixel_xy

TRANSFORM = Affine(1, 0, ORIGIN[0], 0, -1, ORIGIN[1])
SHAPE = (100, 120)


def sample(labels, **config):
    return labels_to_samples(labels, crs=CRS, transform=TRANSFORM, shape=SHAPE, config=SamplingConfig(**config))


def test_points_map_to_their_pixel() -> None:
    xs, ys = pixel_xy(np.array([3, 50, 99]), np.array([7, 0, 119]))
    samples = sample(labels_frame([Point(x, y) for x, y in zip(xs, ys, strict=True)], ["water", "built", "field"]))
    assert samples.rows.tolist() == [3, 50, 99] and samples.cols.tolist() == [7, 0, 119]
    assert samples.class_names.tolist() == ["water", "built", "field"]
    assert samples.groups.tolist() == [0, 1, 2]


def test_polygons_are_rasterised_and_capped() -> None:
    labels = labels_frame([pixel_box(10, 10, 20, 20), pixel_box(40, 40, 80, 90)], ["water", "field"])
    samples = sample(labels, max_pixels_per_polygon=150)
    small, large = samples.groups == 0, samples.groups == 1
    assert small.sum() == 100 and large.sum() == 150  # all 100 pixels of the small one; the large one capped
    assert np.all((samples.rows[large] >= 40) & (samples.rows[large] < 80))
    assert np.all((samples.cols[large] >= 40) & (samples.cols[large] < 90))
    assert len(set(zip(samples.rows[large], samples.cols[large], strict=True))) == 150  # no duplicates


def test_sampling_is_seeded() -> None:
    labels = labels_frame([pixel_box(0, 0, 60, 60)], ["field"])
    a, b, c = sample(labels, seed=1), sample(labels, seed=1), sample(labels, seed=2)
    np.testing.assert_array_equal(a.rows, b.rows)
    assert not np.array_equal(a.rows, c.rows)


def test_sliver_polygon_still_yields_its_pixel() -> None:
    x, y = pixel_xy(np.array([5]), np.array([5]))
    sliver = box(x[0] - 0.45, y[0] + 0.1, x[0] - 0.3, y[0] + 0.2)  # misses every pixel centre
    samples = sample(labels_frame([sliver], ["water"]))
    assert samples.rows.tolist() == [5] and samples.cols.tolist() == [5]


def test_labels_are_reprojected_and_multipoints_exploded() -> None:
    xs, ys = pixel_xy(np.array([10, 20]), np.array([30, 40]))
    labels = labels_frame([MultiPoint(list(zip(xs, ys, strict=True)))], ["built"]).to_crs("EPSG:4326")
    samples = sample(labels)
    assert sorted(zip(samples.rows.tolist(), samples.cols.tolist(), strict=True)) == [(10, 30), (20, 40)]
    assert samples.groups.tolist() == [0, 0]


def test_labels_outside_are_counted_and_all_outside_refused() -> None:
    inside, outside = pixel_xy(np.array([1]), np.array([1])), pixel_xy(np.array([500]), np.array([1]))
    labels = labels_frame([Point(inside[0][0], inside[1][0]), Point(outside[0][0], outside[1][0])], ["water"] * 2)
    assert sample(labels).labels_outside == 1
    with pytest.raises(RetrainError, match="none of the 1 labels falls inside"):
        sample(labels.iloc[[1]])
