from __future__ import annotations

import numpy as np
import pytest
from affine import Affine

from pearl_pipelines.ml.tiling import (
    ArraySource,
    Tiling,
    blend_weights_1d,
    fitted_grid,
    grid_anchor,
    read_reflected,
    reflect_indices,
    window_starts,
)


@pytest.mark.parametrize("tiling", [Tiling(64, 4, 8), Tiling(128, 8, 0), Tiling(96, 0, 16), Tiling(512, 8, 16)])
@pytest.mark.parametrize("anchor", [0, 7, -1234567])
def test_blend_weights_sum_to_one_everywhere(tiling: Tiling, anchor: int) -> None:
    lo, hi = -37, 700
    total = np.zeros(hi - lo)
    w1 = blend_weights_1d(tiling)
    for start in window_starts(lo, hi, tiling, anchor):
        a, b = max(start, lo), min(start + tiling.window, hi)
        total[a - lo : b - lo] += w1[a - start : b - start]
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


@pytest.mark.parametrize("size", [1, 150, 416, 1000, 1001, 2500])
@pytest.mark.parametrize("corner", [0, 13, 517])
def test_fitted_grid_covers_a_region_with_few_windows_in_the_global_phase(size: int, corner: int) -> None:
    base, multiple, max_window, global_anchor = Tiling(512, 32, 16), 32, 768, (-1234567, 89)
    tiling, anchor = fitted_grid(base, (corner, corner, size, size // 2 + 1), multiple, max_window, global_anchor)
    assert anchor is not None and tiling.window % multiple == 0 and tiling.window <= max_window
    assert (tiling.margin, tiling.fade) == (base.margin, base.fade)
    w1 = blend_weights_1d(tiling)
    fitted_px, grid_px = tiling.window**2, base.window**2
    for axis, (lo, hi) in enumerate([(corner, corner + size), (corner, corner + size // 2 + 1)]):
        starts = window_starts(lo, hi, tiling, anchor[axis])
        total = np.zeros(hi - lo)
        for start in starts:
            a, b = max(start, lo), min(start + tiling.window, hi)
            total[a - lo : b - lo] += w1[a - start : b - start]
        np.testing.assert_allclose(total, 1.0, atol=1e-6)  # a partition of unity over the region
        # The global grid's phase: origins are multiples of gcd(stride, multiple) in global pixels, as j * stride is.
        assert all((start + global_anchor[axis]) % np.gcd(base.stride, multiple) == 0 for start in starts)
        # As few windows as windows of max_window px would need (size: the longer axis).
        assert len(starts) <= max(1, -(-(size + 16 + 15) // (max_window - 80)))
        fitted_px *= len(starts)
        grid_px *= len(window_starts(lo, hi, base, global_anchor[axis]))
    assert fitted_px <= grid_px or size < base.window  # fewer pixels than the global grid's windows


def test_a_cropping_tiling_stays_on_the_global_grid() -> None:
    tiling = Tiling(64, 8, 0, crop=True)
    assert fitted_grid(tiling, (5, 5, 300, 300), 1, 768, (0, 0)) == (tiling, None)


def test_window_starts_sit_on_the_global_grid() -> None:
    tiling = Tiling(64, 4, 8)
    starts = window_starts(100, 300, tiling, anchor=1000)
    assert np.all((starts + 1000) % tiling.stride == 0)
    # a sub-range uses a subset of the same windows
    assert set(window_starts(150, 200, tiling, anchor=1000)) <= set(starts)


def test_grid_anchor_counts_pixels_from_the_crs_origin() -> None:
    assert grid_anchor(Affine(1, 0, 500_123, 0, -1, 4_400_457)) == (-4_400_457, 500_123)
    assert grid_anchor(Affine(0.6, 0, 60, 0, -0.6, 600)) == (-1000, 100)


def test_reflect_indices_mirror_without_repeating_the_edge() -> None:
    assert reflect_indices(-3, 8, 5).tolist() == [3, 2, 1, 0, 1, 2, 3, 4]
    assert reflect_indices(3, 5, 5).tolist() == [3, 4, 3, 2, 1]
    assert reflect_indices(-2, 3, 1).tolist() == [0, 0, 0]


def test_read_reflected_pads_by_mirroring() -> None:
    image = np.arange(2 * 4 * 5, dtype=np.uint8).reshape(2, 4, 5)
    block = read_reflected(ArraySource(image), -1, 6, 3, 4)
    np.testing.assert_array_equal(block, image[:, [1, 0, 1, 2, 3, 2]][:, :, [3, 4, 3, 2]])


def test_tiling_rejects_windows_too_small_for_their_overlap() -> None:
    with pytest.raises(ValueError, match="too small"):
        Tiling(window=32, margin=8, fade=8)
