"""Window layout for seamless, position-independent sliding-window inference.

Windows sit on one global grid: their origins are multiples of the stride in the pixel space of the
raster's CRS (pixel index = coordinate / resolution), never relative to an AOI corner. A pixel's
prediction therefore depends only on where it is, not on which area it was predicted as part of: tiles of
a regional map join without seams.

An AOI of a mapping session is one area on its own, and there the global grid is wasteful: a 1 km^2 AOI
straddles 3-4 windows of 512 px per axis, ~3x its pixels. `fitted_grid` lays the fewest windows (at most
`max_window` px) that cover one region exactly, starting at its corner: ~1.5x its pixels for 1 km^2.

Each window's output is weighted by a separable kernel that is zero in the outer `margin` pixels
(where zero padding inside the network corrupts the output), one in the middle, and cross-fades
linearly over `fade` pixels. Neighbouring windows overlap by `2 * margin + fade`, which makes the
weights a partition of unity: every pixel's weights sum to exactly one, so no normalisation pass
is needed and accumulation can stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from affine import Affine


@dataclass(frozen=True)
class Tiling:
    """Window size, ignored edge margin and cross-fade width, in pixels.

    `crop`: run only the part of a window that the area needs (plus the margin). Exact for backbones
    with a finite receptive field no wider than the margin (FCN), where a pixel's output does not depend
    on the window around it, and it saves up to half the work on small areas. Not for backbones with
    window-wide statistics (U-Net's GroupNorm), whose outputs near an area's edge would then depend on it.
    """

    window: int = 512
    margin: int = 8
    fade: int = 16
    crop: bool = False

    def __post_init__(self) -> None:
        if self.margin < 0 or self.fade < 0:
            raise ValueError(f"margin and fade must be >= 0, got margin={self.margin}, fade={self.fade}")
        if self.window < 2 * self.overlap:
            raise ValueError(
                f"window {self.window} is too small for margin {self.margin} and fade {self.fade}: "
                f"it must be at least 2 * (2 * margin + fade) = {2 * self.overlap}"
            )

    @property
    def overlap(self) -> int:
        return 2 * self.margin + self.fade

    @property
    def stride(self) -> int:
        return self.window - self.overlap


def default_tiling(backbone: object, window: int = 512, fit: tuple[int, int] | None = None) -> Tiling:
    """Margin from the backbone's receptive field where it is finite (FCN); a generous one otherwise (U-Net).

    `fit=(height, width)` shrinks the window for a small image (e.g. a training tile) to what covers it.
    """
    receptive = getattr(backbone, "receptive_field", None)
    multiple = getattr(backbone, "multiple", 1)
    if receptive and multiple == 1:  # exact windows: nothing to cross-fade, crop edge windows
        margin, fade, crop = max(8, math.ceil(receptive / 2)), 0, True
    else:
        margin, fade, crop = 32, 16, False
    if fit is not None:
        window = min(window, max(max(fit) + 2 * margin, 2 * (2 * margin + fade)))
    return Tiling(window=math.ceil(window / multiple) * multiple, margin=margin, fade=fade, crop=crop)


def blend_weights_1d(tiling: Tiling) -> np.ndarray:
    """(window,) float32: 0 in the margins, linear ramps of `fade` pixels, 1 in the middle."""
    w, m, f = tiling.window, tiling.margin, tiling.fade
    weights = np.zeros(w, dtype=np.float32)
    weights[m + f : w - m - f] = 1.0
    if f:
        ramp = (np.arange(f, dtype=np.float32) + 0.5) / f
        weights[m : m + f] = ramp
        weights[w - m - f : w - m] = ramp[::-1]
    return weights


def blend_kernel(tiling: Tiling) -> np.ndarray:
    """(window, window) float32 separable blending kernel."""
    w1 = blend_weights_1d(tiling)
    return np.outer(w1, w1)


def grid_anchor(transform: Affine) -> tuple[int, int]:
    """Global pixel index (row, col) of the raster's pixel (0, 0): pixels counted from the CRS origin."""
    if transform.b or transform.d:  # rotated grids have no shared origin to anchor to
        return 0, 0
    return round(transform.f / transform.e), round(transform.c / transform.a)


def fitted_grid(
    tiling: Tiling, region: tuple[int, int, int, int], multiple: int, max_window: int, anchor: tuple[int, int]
) -> tuple[Tiling, tuple[int, int] | None]:
    """(tiling, anchor) of the fewest windows of at most `max_window` px that cover `region` (row0, col0, height,
    width; local pixels) with weight one, starting at its corner. `anchor` is the raster's global grid anchor
    (`grid_anchor`): window origins keep the global grid's phase (multiples of gcd(stride, multiple)), so a
    strided feature (ImageNet features at stride 16) samples the same pixels as on the global grid. Tilings that
    crop (exact, finite receptive field) waste nothing on the global grid: they stay on it (anchor None)."""
    if tiling.crop:
        return tiling, None
    m, f = tiling.margin, tiling.fade
    align = math.gcd(tiling.stride, multiple)
    lead = m + f  # a window's pixels before its first fully weighted one
    # Per axis: how far window 0's origin moves back (towards the region's corner) to keep the grid's phase.
    shifts = [(lo - lead + a) % align for lo, a in zip(region[:2], anchor, strict=True)]
    lengths = [size + shift for size, shift in zip(region[2:], shifts, strict=True)]
    # n windows of side w (stride w - 2m - f) fully weight n * w - n * (2m + f) - f pixels from the first.
    need = max(lengths) + f
    n = max(math.ceil(need / max(max_window - 2 * m - f, 1)), 1)
    side = math.ceil(need / n) + 2 * m + f
    side = max(math.ceil(side / multiple) * multiple, math.ceil(2 * tiling.overlap / multiple) * multiple)
    origins = [lo - lead - shift for lo, shift in zip(region[:2], shifts, strict=True)]
    return Tiling(window=side, margin=m, fade=f, crop=False), (-origins[0], -origins[1])


def window_starts(lo: int, hi: int, tiling: Tiling, anchor: int) -> np.ndarray:
    """Local origins of the grid windows whose weighted part overlaps the local pixel range [lo, hi).

    Window j has global origin j * stride; locally that is j * stride - anchor.
    """
    s, w, m = tiling.stride, tiling.window, tiling.margin
    first = math.ceil((lo - w + m + 1 + anchor) / s)
    last = math.floor((hi - m - 1 + anchor) / s)
    return np.arange(first, last + 1, dtype=np.int64) * s - anchor


def reflect_indices(start: int, size: int, n: int) -> np.ndarray:
    """Indices start..start+size-1 folded into [0, n) by mirror reflection (edge pixel not repeated)."""
    idx = np.arange(start, start + size, dtype=np.int64)
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= n, period - idx, idx)


class PixelSource(Protocol):
    """Anything that can hand out in-bounds (bands, h, w) uint8 blocks."""

    height: int
    width: int

    def read_block(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray: ...


class ArraySource:
    """In-memory (bands, H, W) image, e.g. a training tile."""

    def __init__(self, image: np.ndarray) -> None:
        self.image = image
        self.height, self.width = image.shape[1:]

    def read_block(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        return self.image[:, row0:row1, col0:col1]


class RasterSource:
    """The first `bands` bands of an open rasterio dataset (COG, VRT mosaic, ...)."""

    def __init__(self, dataset: object, bands: int) -> None:
        self.dataset = dataset
        self.indexes = list(range(1, bands + 1))
        self.height, self.width = dataset.height, dataset.width  # type: ignore[attr-defined]

    def read_block(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        from rasterio.windows import Window

        window = Window(col0, row0, col1 - col0, row1 - row0)
        return self.dataset.read(self.indexes, window=window)  # type: ignore[attr-defined]


def read_reflected(source: PixelSource, row0: int, rows: int, col0: int, cols: int) -> np.ndarray:
    """(bands, rows, cols) starting at (row0, col0), mirrored where it hangs over the raster's edges.

    One contiguous read of the in-bounds span; reflection is a gather only when an edge is crossed,
    and depends only on the raster edges, so it is the same whichever area is being predicted.
    """
    ri = reflect_indices(row0, rows, source.height)
    ci = reflect_indices(col0, cols, source.width)
    r_lo, r_hi, c_lo, c_hi = int(ri.min()), int(ri.max()) + 1, int(ci.min()), int(ci.max()) + 1
    block = source.read_block(r_lo, r_hi, c_lo, c_hi)
    inside_rows = row0 >= 0 and row0 + rows <= source.height
    inside_cols = col0 >= 0 and col0 + cols <= source.width
    if not inside_rows:
        block = block[:, ri - r_lo]
    if not inside_cols:
        block = block[:, :, ci - c_lo]
    return np.ascontiguousarray(block)
