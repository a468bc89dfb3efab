"""Synthetic NAIP-like scenes: 1 m pixels, R G B NIR uint8, with Chesapeake 9-class labels.

A scene is drawn in two stages. The layout (what is where: parcels, forests, rivers, streets, houses, crowns)
comes from the seed alone, so labels never depend on the domain `Shift`. The rendering (season, sun, sensor)
turns the layout's material map and surface model into an image: material reflectance from earthlib spectra
(`spectra.py`), mixing and texture fields, hill-shading of crowns and roofs, cast shadows, PSF blur, noise.

Everything is vectorised numpy/scipy; Python loops run over objects (roads, neighbourhoods, sites, shadow
steps), never over pixels.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage as ndi

from pearl_pipelines.geo.spectra import (
    CROP_GREEN,
    CROP_STATE_WEIGHTS,
    LUT_MAX_REFLECTANCE,
    LUT_SIZE,
    VARIANTS,
    Mat,
    class_lut,
    dn_lut,
    material_table,
    mid,
)

F32 = np.float32


@dataclass(frozen=True)
class Shift:
    """Domain shift: season, illumination and sensor response. Labels do not depend on it."""

    season: float = 0.0  # 0 = mid-summer (leaf-on), 1 = late autumn: leaf-off, browner, fields harvested
    gain: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)  # per-band sensor gain (R, G, B, NIR)
    offset: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # per-band additive offset (DN)
    haze: float = 0.0  # extra atmospheric path radiance (0..1): brighter, bluer, lower contrast
    sun_elevation: float = 55.0  # degrees; lower sun, longer shadows
    sun_azimuth: float = 150.0  # degrees clockwise from north (image up); shadows fall on the opposite side
    noise_dn: float = 1.5  # sensor noise, std in DN
    blur: float = 0.5  # PSF, Gaussian sigma in pixels


# Another acquisition: late October, low sun from the south, hazier, a sensor with weaker NIR response
SHIFTED = Shift(
    season=0.65,
    gain=(1.05, 0.97, 0.93, 0.88),
    offset=(5.0, 3.0, 8.0, -3.0),
    haze=0.35,
    sun_elevation=36.0,
    sun_azimuth=170.0,
    noise_dn=2.0,
    blur=0.7,
)


@dataclass
class Scene:
    image: np.ndarray  # uint8 (4, H, W): R, G, B, NIR
    labels: np.ndarray  # uint8 (H, W): chesapeake9 class index


def generate_scene(height: int, width: int, seed: int, shift: Shift | None = None) -> Scene:
    """A height x width (1 m pixels) scene; deterministic for (height, width, seed, shift)."""
    if height < 8 or width < 8:
        raise ValueError(f"scene must be at least 8x8 pixels, got {height}x{width}")
    layout = _layout(height, width, seed)
    image = _render(layout, seed, shift or Shift())
    return Scene(image=image, labels=class_lut()[layout.mat])


# --- small tools -------------------------------------------------------------------------------------------


def _rng(seed: int, part: str) -> np.random.Generator:
    """One random stream per part of the layout, so adding a part does not reshuffle the others."""
    return np.random.default_rng([seed, zlib.crc32(part.encode())])


def _upsample(coarse: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Separable bilinear interpolation of `coarse` at rows ys x columns xs (in coarse-pixel units)."""
    y0 = np.clip(ys.astype(np.int64), 0, coarse.shape[0] - 2)
    x0 = np.clip(xs.astype(np.int64), 0, coarse.shape[1] - 2)
    fy = np.clip(ys - y0, 0, 1).astype(F32)[:, None]
    fx = np.clip(xs - x0, 0, 1).astype(F32)[None, :]
    rows = coarse[y0] * (1 - fy) + coarse[y0 + 1] * fy
    out = rows[:, x0]
    out *= 1 - fx
    out += rows[:, x0 + 1] * fx
    return out


@dataclass
class _Field:
    """A smooth random field stored coarse; expanded to pixels on demand."""

    coarse: np.ndarray
    step: float  # pixels per coarse cell

    def window(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        ys = np.arange(y0, y1, dtype=F32) / self.step
        xs = np.arange(x0, x1, dtype=F32) / self.step
        return _upsample(self.coarse, ys, xs)

    def full(self, h: int, w: int) -> np.ndarray:
        return self.window(0, h, 0, w)

    def at(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        coords = np.stack([np.asarray(y, F32) / self.step, np.asarray(x, F32) / self.step])
        return ndi.map_coordinates(self.coarse, coords, order=1, mode="nearest")


def _field(rng: np.random.Generator, h: int, w: int, step: float, octaves: tuple[tuple[float, float], ...]) -> _Field:
    """Sum of Gaussian-filtered white noise: octaves are (feature size in px, weight); std ~1."""
    shape = (int(h / step) + 3, int(w / step) + 3)
    total = np.zeros(shape, F32)
    for size, weight in octaves:
        layer = ndi.gaussian_filter(rng.standard_normal(shape).astype(F32), max(size / step / 2.5, 0.6))
        total += weight * layer / max(float(layer.std()), 1e-6)
    return _Field(total / max(float(total.std()), 1e-6), step)


def _noise1d(rng: np.random.Generator, n: int, size: float) -> np.ndarray:
    """1-D smooth noise with features ~size samples, std 1."""
    x = ndi.gaussian_filter1d(rng.standard_normal(n + 8 * int(size)), size / 2.5, mode="wrap")[:n]
    return (x / max(float(x.std()), 1e-6)).astype(F32)


def _grid(h: int, w: int, y0: int = 0, x0: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Broadcastable pixel-centre coordinates: ys (h, 1), xs (1, w)."""
    ys = np.arange(y0, y0 + h, dtype=F32)[:, None] + F32(0.5)
    xs = np.arange(x0, x0 + w, dtype=F32)[None, :] + F32(0.5)
    return ys, xs


def _base(mat: np.ndarray) -> np.ndarray:
    return mat // VARIANTS


def _lut(values: dict[Mat, float], default: float = 0.0, dtype: type = F32) -> np.ndarray:
    """(256,) per-material-id lookup from per-base values."""
    lut = np.full(256, default, dtype)
    for base, value in values.items():
        lut[mid(base) : mid(base) + VARIANTS] = value
    return lut


# --- linear features: rivers, streams, roads, shorelines --------------------------------------------------


@dataclass
class _Curve:
    """A meandering line: lateral offset of its centreline along a straight axis, and a width profile."""

    cx: float
    cy: float
    cos: float
    sin: float
    u0: float
    centre: np.ndarray  # centreline offset (px) at u = u0 + i
    norm: np.ndarray  # 1 / sqrt(1 + slope^2): offsets -> perpendicular distance
    width: np.ndarray
    variant: int = 0

    def distance(self, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Signed distance (px) from the centreline and the local width, at broadcast ys, xs."""
        dx, dy = xs - F32(self.cx), ys - F32(self.cy)
        u = dx * F32(self.cos) + dy * F32(self.sin)
        i = np.clip((u - F32(self.u0)).astype(np.int32), 0, len(self.centre) - 1)
        del u
        v = dy * F32(self.cos) - dx * F32(self.sin)
        v -= self.centre[i]
        v *= self.norm[i]
        return v, self.width[i]

    def point(self, t: float) -> tuple[float, float, float]:
        """(y, x, tangent angle) at fraction t of the profile."""
        i = int(np.clip(t, 0, 1) * (len(self.centre) - 1))
        u, v = self.u0 + i, float(self.centre[i])
        x = self.cx + u * self.cos - v * self.sin
        y = self.cy + u * self.sin + v * self.cos
        slope = float(self.centre[min(i + 1, len(self.centre) - 1)] - self.centre[max(i - 1, 0)]) / 2
        return y, x, math.atan2(self.sin, self.cos) + math.atan(slope)


def _curve(
    rng: np.random.Generator,
    h: int,
    w: int,
    width: float,
    meanders: tuple[tuple[float, float], ...] = (),
    width_var: float = 0.0,
    angle: float | None = None,
    through: tuple[float, float] | None = None,
) -> _Curve:
    """A curve across the scene; meanders are (wavelength px, amplitude px)."""
    diag = math.hypot(h, w)
    n = int(2 * diag) + 4
    angle = rng.uniform(0, math.pi) if angle is None else angle
    cy, cx = through if through is not None else (rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w)
    centre = np.zeros(n, F32)
    for wavelength, amplitude in meanders:
        centre += F32(amplitude) * _noise1d(rng, n, wavelength / 2)
    centre -= centre[n // 2]
    slope = np.gradient(centre)
    widths = F32(width) * np.exp(F32(width_var) * _noise1d(rng, n, 150.0))
    norm = (1.0 / np.sqrt(1.0 + slope**2)).astype(F32)
    return _Curve(cx, cy, math.cos(angle), math.sin(angle), -n / 2, centre, norm, widths.astype(F32))


# --- the layout ------------------------------------------------------------------------------------------


@dataclass
class _Layout:
    mat: np.ndarray  # uint8 (H, W) material id (spectra.mid)
    dsm: np.ndarray  # float32 (H, W) surface height above ground, m (roofs, crowns, shrubs, bridges)
    rows: np.ndarray  # float32 (H, W) relative brightness change from crop rows and tramlines
    mix: np.ndarray  # float32 (H, W) 0..1 blend between a material's two endmembers


@dataclass
class _Ctx:
    """What the layout steps share."""

    h: int
    w: int
    seed: int
    mat: np.ndarray
    dsm: np.ndarray
    rows: np.ndarray
    forest: _Field  # where woods are (>0.35)
    wet: _Field  # low, wet ground: wide marshes
    urban: _Field  # where neighbourhoods go
    roads: list[_Curve]
    rural_roads: list[_Curve]

    @property
    def area_km2(self) -> float:
        return self.h * self.w / 1e6

    def count(self, rng: np.random.Generator, per_km2: float, minimum: int = 0) -> int:
        return max(minimum, int(rng.poisson(per_km2 * self.area_km2)))


def _layout(h: int, w: int, seed: int) -> _Layout:
    rng = _rng(seed, "fields")
    ctx = _Ctx(
        h=h,
        w=w,
        seed=seed,
        mat=np.full((h, w), mid(Mat.MEADOW), np.uint8),
        dsm=np.zeros((h, w), F32),
        rows=np.zeros((h, w), F32),
        forest=_field(rng, h, w, 16, ((600, 1.0), (200, 0.6), (70, 0.25))),
        wet=_field(rng, h, w, 16, ((500, 1.0), (120, 0.4))),
        urban=_field(rng, h, w, 16, ((900, 1.0), (300, 0.4))),
        roads=[],
        rural_roads=[],
    )
    _plan_roads(ctx)
    water = _water_bodies(ctx)
    shore = _ShoreDistance(water > 0)
    _rural(ctx, shore)
    _suburbs(ctx, shore)
    _strip_malls(ctx, shore)
    _farmsteads(ctx, shore)
    _barren_sites(ctx, shore)
    _paint_water(ctx, water)
    _paint_roads(ctx, water)
    del water
    _trees(ctx)
    _shrubs(ctx)
    ctx.rows[~np.isin(_base(ctx.mat), [Mat.CROP, Mat.BARE_SOIL])] = 0  # texture only where fields/sites survived
    mix = _mix_field(ctx, shore)
    return _Layout(ctx.mat, ctx.dsm, ctx.rows, mix)


# --- roads ---------------------------------------------------------------------------------------------------


def _plan_roads(ctx: _Ctx) -> None:
    """Main roads (curved, marked) and straight country roads; painted after water so they bridge it."""
    rng = _rng(ctx.seed, "roads")
    size_km = math.sqrt(ctx.area_km2)
    n_main = max(1, int(rng.poisson(0.9 * size_km + 0.3)))
    for _ in range(n_main):
        road = _curve(rng, ctx.h, ctx.w, rng.uniform(9.0, 13.0), ((1600, 120), (500, 25)))
        road.variant = int(rng.integers(0, VARIANTS))
        ctx.roads.append(road)
    for _ in range(int(rng.poisson(1.0 * size_km))):
        road = _curve(rng, ctx.h, ctx.w, rng.uniform(5.5, 7.0), ((900, 30),))
        road.variant = int(rng.integers(0, VARIANTS))
        ctx.rural_roads.append(road)


def _paint_roads(ctx: _Ctx, water: np.ndarray) -> None:
    ys, xs = _grid(ctx.h, ctx.w)
    verge_over = _lut({Mat.FOREST_FLOOR: 1, Mat.CROP: 1, Mat.SHRUB_GROUND: 1, Mat.MARSH: 1}, dtype=bool)
    for road, marked in [(r, True) for r in ctx.roads] + [(r, False) for r in ctx.rural_roads]:
        d, width = road.distance(ys, xs)
        np.abs(d, out=d)
        half = width / 2
        verge = (d < half + 4.0) & verge_over[ctx.mat]
        ctx.mat[verge] = mid(Mat.MEADOW, 1)
        on_road = d < half
        ctx.mat[on_road] = mid(Mat.ROAD, road.variant)
        bridge = on_road & (water > 0)
        ctx.dsm[bridge] = 4.0
        if marked:
            centre = d < 0.45
            ctx.mat[centre] = mid(Mat.ROAD_MARK, 0)  # yellow
            edge = on_road & (np.abs(d - (half - 0.9)) < 0.4)
            ctx.mat[edge] = mid(Mat.ROAD_MARK, 4)  # white


# --- water -------------------------------------------------------------------------------------------------


def _blob(target: np.ndarray, value: int, rng: np.random.Generator, cy: float, cx: float, r: float, ecc: float) -> None:
    """A lobed, rotated ellipse (pond, lake, site) written into target where it is 0."""
    h, w = target.shape
    angle = rng.uniform(0, math.pi)
    ry, rx = r * ecc, r / ecc
    ext = int(max(ry, rx) * 1.6) + 2
    y0, y1, x0, x1 = max(0, int(cy) - ext), min(h, int(cy) + ext), max(0, int(cx) - ext), min(w, int(cx) + ext)
    if y0 >= y1 or x0 >= x1:
        return
    ys, xs = _grid(y1 - y0, x1 - x0, y0, x0)
    dy, dx = ys - F32(cy), xs - F32(cx)
    u = (dx * F32(math.cos(angle)) + dy * F32(math.sin(angle))) / F32(rx)
    v = (dy * F32(math.cos(angle)) - dx * F32(math.sin(angle))) / F32(ry)
    theta = np.arctan2(v, u)
    edge = np.ones_like(theta)
    for k in (2, 3, 5):
        edge += F32(rng.uniform(0, 0.22 / k**0.5)) * np.cos(k * theta + F32(rng.uniform(0, 2 * math.pi)))
    inside = (u * u + v * v) < edge * edge
    window = target[y0:y1, x0:x1]
    window[inside & (window == 0)] = value


def _water_bodies(ctx: _Ctx) -> np.ndarray:
    """uint8 (H, W): 0 land, else 1 + water variant. Rivers, streams, a bay edge, lakes, ponds."""
    rng = _rng(ctx.seed, "water")
    h, w = ctx.h, ctx.w
    water = np.zeros((h, w), np.uint8)
    ys, xs = _grid(h, w)
    size_km = math.sqrt(ctx.area_km2)
    curves: list[tuple[_Curve, float]] = []
    if rng.random() < 0.75:
        river = _curve(rng, h, w, rng.uniform(14, 34), ((700, 140), (260, 45)), width_var=0.3)
        curves.append((river, 1.0))
    for _ in range(int(rng.poisson(1.2 * size_km))):
        curves.append((_curve(rng, h, w, rng.uniform(3.0, 6.0), ((400, 70), (120, 12)), width_var=0.25), 1.0))
    for curve, _ in curves:
        d, width = curve.distance(ys, xs)
        water[(np.abs(d) < width / 2) & (water == 0)] = 1 + int(rng.choice([1, 1, 0, 2]))
    if min(h, w) >= 600 and rng.random() < 0.35:
        _bay(rng, water, ys, xs)
    del ys, xs
    lakes = [(50.0, 170.0, 1.3)] * ctx.count(rng, 0.5)
    ponds = [(14.0, 45.0, 0.0)] * ctx.count(rng, 2.5, minimum=1 if ctx.area_km2 >= 0.25 else 0)
    for r_min, r_max, ecc in lakes + ponds:
        for _ in range(8):  # a few tries to find a spot away from roads
            cy, cx, r = rng.uniform(0.05, 0.95) * h, rng.uniform(0.05, 0.95) * w, rng.uniform(r_min, r_max)
            if _clear_of_roads(ctx, cy, cx, 1.6 * r + 15):
                variant = int(rng.choice([0, 2, 2, 1]))
                _blob(water, 1 + variant, rng, cy, cx, r, ecc or rng.uniform(1.0, 1.5))
                break
    return water


def _clear_of_roads(ctx: _Ctx, y: float, x: float, clearance: float) -> bool:
    """Lakes and ponds keep away from roads (a road across a lake would need a causeway)."""
    for road in ctx.roads + ctx.rural_roads:
        d, _ = road.distance(np.array([[y]], F32), np.array([[x]], F32))
        if abs(float(d[0, 0])) < clearance:
            return False
    return True


def _bay(rng: np.random.Generator, water: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> None:
    """Open water along one scene edge with an irregular shoreline (Chesapeake tidal shore)."""
    h, w = water.shape
    side = int(rng.integers(0, 4))
    depth = rng.uniform(0.1, 0.25) * (h if side in (0, 2) else w)
    angle, through = {
        0: (0.0, (depth, w / 2)),
        1: (math.pi / 2, (h / 2, w - depth)),
        2: (math.pi, (h - depth, w / 2)),
        3: (3 * math.pi / 2, (h / 2, depth)),
    }[side]
    shore = _curve(rng, h, w, 1.0, ((900, 0.08 * depth + 40), (250, 30), (60, 6)), angle=angle, through=through)
    d, _ = shore.distance(ys, xs)
    water[(d < 0) & (water == 0)] = 1 + 1  # turbid


class _ShoreDistance:
    """Distance to water on land and to land in water, on a 4 m grid (full-resolution EDT is too slow)."""

    step = 4

    def __init__(self, water: np.ndarray) -> None:
        h, w = water.shape
        s = self.step
        padded = np.zeros((-(-h // s) * s, -(-w // s) * s), bool)
        padded[:h, :w] = water
        blocks = padded.reshape(padded.shape[0] // s, s, padded.shape[1] // s, s)
        share = blocks.mean(axis=(1, 3))
        self.any_water = bool(share.any())
        wet = share >= 0.5
        big = F32(1e4)
        self.land = (ndi.distance_transform_edt(~wet) * s).astype(F32) if wet.any() else np.full(wet.shape, big, F32)
        self.water = (ndi.distance_transform_edt(wet) * s).astype(F32)
        self.h, self.w = h, w

    def _expand(self, grid: np.ndarray) -> np.ndarray:
        ys = (np.arange(self.h, dtype=F32) + F32(0.5)) / self.step - F32(0.5)
        xs = (np.arange(self.w, dtype=F32) + F32(0.5)) / self.step - F32(0.5)
        return _upsample(grid, ys, xs)

    def on_land(self) -> np.ndarray:
        return self._expand(self.land)

    def in_water(self) -> np.ndarray:
        return self._expand(self.water)

    def at(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        coords = np.stack([np.asarray(y, F32) / self.step - 0.5, np.asarray(x, F32) / self.step - 0.5])
        return ndi.map_coordinates(self.land, coords, order=1, mode="nearest")


def _paint_water(ctx: _Ctx, water: np.ndarray) -> None:
    wet = water > 0
    ctx.mat[wet] = mid(Mat.WATER, 0) + (water[wet] - 1)
    ctx.dsm[wet] = 0.0


# --- rural land: parcels, woods, riparian buffers, marshes, beaches ------------------------------------------


@dataclass
class _Parcels:
    pid: np.ndarray  # int32 parcel index (into the per-parcel arrays)
    edge: np.ndarray  # float32 distance to the parcel boundary, px
    u: np.ndarray  # float32 along-strip coordinate (row texture)
    v: np.ndarray


def _parcel_frame(rng: np.random.Generator, ctx: _Ctx, n_max: int) -> tuple[_Parcels, np.ndarray, np.ndarray]:
    """Field parcels on a rotated grid: strips of random width, cut into parcels of random length.

    Returns the parcels and, per parcel, its centre (y, x).
    """
    h, w = ctx.h, ctx.w
    diag = math.hypot(h, w)
    angle = rng.uniform(-math.pi / 4, math.pi / 4)
    c, s = F32(math.cos(angle)), F32(math.sin(angle))
    ys, xs = _grid(h, w)
    dx, dy = xs - F32(w / 2), ys - F32(h / 2)
    u = dx * c + dy * s
    v = dy * c - dx * s
    edges = np.cumsum(np.r_[-diag / 2 - 200, rng.uniform(90, 330, int(diag / 60) + 4)]).astype(F32)
    n_strips = len(edges) - 1
    spacing = rng.uniform(70, 300, n_strips).astype(F32)
    shift = rng.uniform(0, 1, n_strips).astype(F32) * spacing
    iu = np.clip(np.searchsorted(edges, u, side="right") - 1, 0, n_strips - 1).astype(np.int32)
    du = np.minimum(u - edges[iu], edges[iu + 1] - u)
    t = v - shift[iu]
    t /= spacing[iu]
    iv = np.floor(t)
    t -= iv
    dv = np.minimum(t, 1 - t) * spacing[iu]
    half_rows = n_max // 2
    iv_idx = np.clip(iv.astype(np.int32) + half_rows, 0, n_max - 1)
    pid = iu * n_max + iv_idx
    # parcel centres
    gu, gv = np.meshgrid(np.arange(n_strips), np.arange(n_max) - half_rows, indexing="ij")
    cu = (edges[gu] + edges[gu + 1]) / 2
    cv = shift[gu] + (gv + 0.5) * spacing[gu]
    cx = w / 2 + cu * float(c) - cv * float(s)
    cy = h / 2 + cu * float(s) + cv * float(c)
    return _Parcels(pid, np.minimum(du, dv), u, v), cy.ravel(), cx.ravel()


def _rural(ctx: _Ctx, shore: _ShoreDistance) -> None:
    rng = _rng(ctx.seed, "rural")
    h, w = ctx.h, ctx.w
    n_max = int(math.hypot(h, w) / 60) + 4
    parcels, cy, cx = _parcel_frame(rng, ctx, n_max)
    n = len(cy)
    woods = ctx.forest.at(cy, cx) > 0.0
    kind = rng.choice(4, n, p=[0.62, 0.22, 0.09, 0.07])  # crop, meadow/hay, old field (shrub), lawn (sports, estate)
    state = rng.choice(VARIANTS, n, p=CROP_STATE_WEIGHTS)
    parcel_mat = np.choose(
        kind,
        [mid(Mat.CROP) + state, mid(Mat.MEADOW) + rng.integers(0, 4, n), mid(Mat.SHRUB_GROUND), mid(Mat.LAWN)],
    ).astype(np.uint8)
    parcel_mat[woods] = mid(Mat.FOREST_FLOOR)
    hedge = rng.random(n) < 0.45

    pid = parcels.pid
    mat = parcel_mat[pid]
    is_crop = _base(mat) == Mat.CROP
    _crop_rows(rng, ctx, parcels, mat, is_crop, n)

    forest_px = ctx.forest.full(h, w)
    mat[forest_px > 1.0] = mid(Mat.FOREST_FLOOR)  # woodlots inside fields, with rounded edges
    del forest_px
    open_land = _base(mat) != Mat.FOREST_FLOOR
    mat[open_land & is_crop & (parcels.edge < 1.6)] = mid(Mat.MEADOW, 2)  # grass margins between fields
    mat[open_land & hedge[pid] & (parcels.edge < 3.5)] = mid(Mat.FOREST_FLOOR)  # hedgerows
    del parcels, open_land, is_crop

    _power_line(rng, ctx, mat)
    _shore_zones(rng, ctx, shore, mat)
    ctx.mat[:] = mat


def _crop_rows(
    rng: np.random.Generator, ctx: _Ctx, parcels: _Parcels, mat: np.ndarray, is_crop: np.ndarray, n: int
) -> None:
    """Row/tillage texture along one parcel axis, and tramlines in green crops."""
    along_u = rng.random(n) < 0.5
    period = rng.uniform(2.5, 7.0, n).astype(F32)
    strength = rng.uniform(0.03, 0.09, n).astype(F32)
    tram = rng.uniform(16, 26, n).astype(F32)
    pid = parcels.pid[is_crop]
    coord = np.where(along_u[pid], parcels.u[is_crop], parcels.v[is_crop])
    rows = strength[pid] * np.sin(coord * (F32(2 * math.pi) / period[pid]))
    green = np.isin(mat[is_crop] % VARIANTS, CROP_GREEN)
    tramline = green & (np.mod(coord, tram[pid]) < 1.3)
    rows[tramline] -= 0.22
    ctx.rows[is_crop] = rows


def _power_line(rng: np.random.Generator, ctx: _Ctx, mat: np.ndarray) -> None:
    """A straight utility corridor kept in shrubs where it crosses woods."""
    if ctx.area_km2 < 0.5 or rng.random() > 0.6:
        return
    line = _curve(rng, ctx.h, ctx.w, rng.uniform(30, 45))
    d, width = line.distance(*_grid(ctx.h, ctx.w))
    corridor = (np.abs(d) < width / 2) & (_base(mat) == Mat.FOREST_FLOOR)
    mat[corridor] = mid(Mat.SHRUB_GROUND, 1)


def _shore_zones(rng: np.random.Generator, ctx: _Ctx, shore: _ShoreDistance, mat: np.ndarray) -> None:
    """Riparian woods along the water, emergent marsh at its margin, beaches here and there."""
    if not shore.any_water:
        return
    h, w = ctx.h, ctx.w
    dist = shore.on_land()
    buffer = _field(rng, h, w, 16, ((300, 1.0), (80, 0.5))).full(h, w)
    riparian = dist < 25 + 22 * buffer
    mat[riparian] = mid(Mat.FOREST_FLOOR)
    # marshes where the ground is low and wet; elsewhere the woods reach the bank
    wet = ctx.wet.full(h, w)
    marsh_width = np.clip(35 * wet + 12 * buffer - 8, 0, 90)
    marsh = dist < marsh_width
    mat[marsh] = mid(Mat.MARSH) + (np.abs(buffer[marsh] * 3).astype(np.uint8) % VARIANTS)
    del wet, marsh_width, marsh
    beach_field = _field(rng, h, w, 16, ((250, 1.0),)).full(h, w)
    beach = (dist < np.minimum(2 + 3 * beach_field, 7)) & (beach_field > 1.4)
    mat[beach] = mid(Mat.SAND) + np.uint8(rng.integers(0, VARIANTS))


# --- suburbs: streets, lots, houses ----------------------------------------------------------------------


_GABLE, _HIP = 0, 1
_ROOF_BASES = np.array([Mat.ROOF_SHINGLE, Mat.ROOF_TILE, Mat.ROOF_METAL, Mat.ROOF_CLAY, Mat.ROOF_FLAT])
_ROOF_SHARE = (0.68, 0.12, 0.12, 0.04, 0.04)


def _suburbs(ctx: _Ctx, shore: _ShoreDistance) -> None:
    rng = _rng(ctx.seed, "suburbs")
    n = ctx.count(rng, 2.0, minimum=1 if ctx.area_km2 >= 0.5 else 0)
    placed = 0
    for _ in range(n * 4):
        if placed >= n:
            break
        if ctx.roads and rng.random() < 0.8:
            road = ctx.roads[int(rng.integers(0, len(ctx.roads)))]
            y, x, angle = road.point(rng.uniform(0.3, 0.7))
            half_v = rng.uniform(90, 260)
            side = rng.choice([-1, 1])
            offset = half_v + rng.uniform(15, 40)
            y, x = y + side * offset * math.cos(angle), x - side * offset * math.sin(angle)
            angle += rng.normal(0, 0.08)
        else:
            y, x, angle, half_v = rng.uniform(0, ctx.h), rng.uniform(0, ctx.w), rng.uniform(0, math.pi), 200.0
        if not (0 <= y < ctx.h and 0 <= x < ctx.w) or ctx.urban.at(np.array([y]), np.array([x]))[0] < -0.6:
            continue
        _neighbourhood(ctx, rng, shore, y, x, angle, rng.uniform(140, 420), half_v)
        placed += 1


@dataclass
class _Window:
    """A rotated frame clipped to the scene: local coordinates u (along streets), v of every pixel."""

    y0: int
    y1: int
    x0: int
    x1: int
    u: np.ndarray
    v: np.ndarray


def _window(ctx: _Ctx, cy: float, cx: float, angle: float, half_u: float, half_v: float) -> _Window | None:
    ext = (
        abs(half_u * math.cos(angle)) + abs(half_v * math.sin(angle)),
        abs(half_u * math.sin(angle)) + abs(half_v * math.cos(angle)),
    )
    x0, x1 = max(0, int(cx - ext[0]) - 1), min(ctx.w, int(cx + ext[0]) + 2)
    y0, y1 = max(0, int(cy - ext[1]) - 1), min(ctx.h, int(cy + ext[1]) + 2)
    if x0 >= x1 or y0 >= y1:
        return None
    ys, xs = _grid(y1 - y0, x1 - x0, y0, x0)
    dx, dy = xs - F32(cx), ys - F32(cy)
    c, s = F32(math.cos(angle)), F32(math.sin(angle))
    return _Window(y0, y1, x0, x1, dx * c + dy * s, dy * c - dx * s)


def _to_image(cy: float, cx: float, angle: float, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c, s = math.cos(angle), math.sin(angle)
    return cy + u * s + v * c, cx + u * c - v * s


def _neighbourhood(
    ctx: _Ctx, rng: np.random.Generator, shore: _ShoreDistance, cy: float, cx: float, angle: float, hu: float, hv: float
) -> None:
    """A street grid with two rows of lots per block; houses, garages, driveways, sidewalks, sheds."""
    street_w = rng.uniform(7.0, 9.0)
    block_u = rng.uniform(150, 260)
    block_v = rng.uniform(80, 105)
    lots_per_block = max(2, round((block_u - street_w) / rng.uniform(20, 34)))
    lot_w = (block_u - street_w) / lots_per_block
    depth = block_v - street_w
    win = _window(ctx, cy, cx, angle, hu, hv)
    if win is None:
        return
    u, v = win.u + F32(hu), win.v + F32(hv)  # 0..2hu, 0..2hv
    n_bu, n_bv = int(2 * hu / block_u) + 1, int(2 * hv / block_v) + 1

    # per lot: centre, and whether it can be built (inside, dry, clear of main roads and other built land)
    bu, bv, row, li = np.meshgrid(
        np.arange(n_bu), np.arange(n_bv), np.arange(2), np.arange(lots_per_block), indexing="ij"
    )
    lot_u = bu * block_u + street_w + (li + 0.5) * lot_w
    lot_v = bv * block_v + street_w + np.where(row == 1, 0.75, 0.25) * depth
    ly, lx = _to_image(cy, cx, angle, lot_u - hu, lot_v - hv)
    inside = ((lot_u - hu) / hu) ** 4 + ((lot_v - hv) / hv) ** 4 < 0.85
    on_scene = (ly >= 0) & (ly < ctx.h) & (lx >= 0) & (lx < ctx.w)
    iy, ix = np.clip(ly.astype(int), 0, ctx.h - 1), np.clip(lx.astype(int), 0, ctx.w - 1)
    free = np.isin(_base(ctx.mat[iy, ix]), [Mat.CROP, Mat.MEADOW, Mat.FOREST_FLOOR, Mat.SHRUB_GROUND, Mat.LAWN])
    dry = shore.at(ly, lx) > 30
    clear = np.ones_like(dry)
    for road in ctx.roads + ctx.rural_roads:
        dist, width = road.distance(ly.astype(F32), lx.astype(F32))
        clear &= np.abs(dist) > width / 2 + 22
    valid = (inside & on_scene & free & dry & clear).ravel()

    # per-pixel block, lot, and position inside the lot
    iu = np.floor(u / F32(block_u))
    pu = u - iu * F32(block_u)
    iv = np.floor(v / F32(block_v))
    pv = v - iv * F32(block_v)
    in_hood = ((win.u / F32(hu)) ** 4 + (win.v / F32(hv)) ** 4) < 1
    street = in_hood & ((pv < street_w) | (pu < street_w))
    r = pv - F32(street_w)
    back_row = r >= depth / 2
    d = np.where(back_row, F32(depth) - r, r)  # distance from the lot's street edge
    s = pu - F32(street_w)
    li_px = np.clip((s / F32(lot_w)).astype(np.int32), 0, lots_per_block - 1)
    sl = s - (li_px + F32(0.5)) * F32(lot_w)  # along the street, from the lot centre
    iu_i = np.clip(iu.astype(np.int32), 0, n_bu - 1)
    iv_i = np.clip(iv.astype(np.int32), 0, n_bv - 1)
    lot = ((iu_i * n_bv + iv_i) * 2 + back_row) * lots_per_block + li_px
    in_lot = in_hood & ~street & valid[lot]
    del pu, pv, r, s, li_px

    mat = ctx.mat[win.y0 : win.y1, win.x0 : win.x1]
    dsm = ctx.dsm[win.y0 : win.y1, win.x0 : win.x1]
    street_ok = street & np.isin(_base(mat), [Mat.CROP, Mat.MEADOW, Mat.FOREST_FLOOR, Mat.SHRUB_GROUND, Mat.LAWN])
    mat[street_ok] = mid(Mat.ROAD, int(rng.integers(0, VARIANTS)))
    commercial = rng.random(n_bu * n_bv) < 0.1
    building = rng.random() < 0.2
    block = iu_i * n_bv + iv_i
    comm_px = in_lot & commercial[block]
    sidewalks = rng.random() < 0.5
    _lots(ctx, rng, mat, dsm, in_lot & ~comm_px, lot, d, sl, lot_w, len(valid), building, bu.ravel(), sidewalks)
    _commercial(
        rng,
        mat,
        dsm,
        comm_px,
        pu_block=u - iu * F32(block_u) - F32(street_w),
        pv_block=v - iv * F32(block_v) - F32(street_w),
        block=block,
        size=(block_u - street_w, depth),
        n_blocks=n_bu * n_bv,
    )


def _lots(
    ctx: _Ctx,
    rng: np.random.Generator,
    mat: np.ndarray,
    dsm: np.ndarray,
    px: np.ndarray,
    lot: np.ndarray,
    d: np.ndarray,
    sl: np.ndarray,
    lot_w: float,
    n: int,
    building: bool,
    lot_bu: np.ndarray,
    sidewalks: bool,
) -> None:
    """Houses on lots: every parameter is drawn per lot and gathered per pixel."""
    hw = np.minimum(rng.uniform(10, 19, n), lot_w - 6).astype(F32)
    hd = rng.uniform(8, 14, n).astype(F32)
    setback = rng.uniform(7, 14, n).astype(F32)
    jx = (rng.uniform(-1, 1, n) * np.maximum(lot_w - hw - 8, 0) / 2).astype(F32)
    side = rng.choice(np.array([-1, 1], F32), n)
    garage = rng.random(n) < 0.55
    roof = mid(0) + _ROOF_BASES[rng.choice(5, n, p=_ROOF_SHARE)] * VARIANTS + rng.integers(0, VARIANTS, n)
    hip = rng.random(n) < 0.35
    eave = rng.choice(np.array([3.2, 5.8], F32), n, p=[0.4, 0.6])
    pitch = rng.uniform(0.35, 0.65, n).astype(F32)
    drive_mat = np.where(rng.random(n) < 0.7, mid(Mat.CONCRETE), mid(Mat.PAVEMENT)) + rng.integers(0, VARIANTS, n)
    lawn_mat = mid(Mat.LAWN) + rng.integers(0, VARIANTS - 1, n)
    shed = rng.random(n) < 0.3
    shed_x = rng.uniform(-1, 1, n).astype(F32) * F32(lot_w / 2 - 4)
    occupied = rng.random(n) < 0.94
    # a neighbourhood being built: some blocks are bare soil, houses only partly up
    under_construction = np.zeros(n, bool)
    if building:
        cut = rng.uniform(0.5, 0.9) * lot_bu.max()
        under_construction = lot_bu >= cut
        occupied &= ~under_construction | (rng.random(n) < 0.4)

    L = lot[px]
    dd, ss = d[px], sl[px] - jx[L]
    w2, d2 = hw[L] / 2, hd[L] / 2
    dc = setback[L] + d2
    house = occupied[L] & (np.abs(ss) < w2) & (np.abs(dd - dc) < d2)
    gx = side[L] * (w2 + 3.2)
    has_garage = occupied[L] & garage[L]
    garage_px = has_garage & (np.abs(ss - gx) < 3.2) & (dd > setback[L] + 1) & (dd < setback[L] + 7.5)
    drive_x = np.where(has_garage, gx, side[L] * (w2 + 1.8))
    drive_w = np.where(has_garage, F32(2.7), F32(1.6))
    drive_end = np.where(has_garage, setback[L] + 1, setback[L] + hd[L] * 0.7)
    drive = occupied[L] & (np.abs(ss - drive_x) < drive_w) & (dd < drive_end)
    shed_px = occupied[L] & shed[L] & (np.abs(sl[px] - shed_x[L]) < 1.6) & (np.abs(dd - dc - d2 - 7) < 2.0)

    ground = np.where(under_construction[L], mid(Mat.BARE_SOIL, 2), lawn_mat[L]).astype(np.uint8)
    ground[(dd < 2.0) & ~under_construction[L]] = mid(Mat.LAWN, VARIANTS - 1)  # tree lawn between curb and walk
    values = np.select(
        [house, garage_px, shed_px, drive],
        [roof[L], roof[L], mid(Mat.ROOF_METAL, 3), drive_mat[L]],
        ground,
    ).astype(np.uint8)
    if sidewalks:
        values[(dd > 2.0) & (dd < 3.4) & ~house] = mid(Mat.CONCRETE, int(rng.integers(0, VARIANTS)))
    mat[px] = values

    # roofs: gable ridges along the long side, or hips; garages and sheds low
    across = np.abs(dd - dc)
    ridge_along = hw[L] >= hd[L]
    gable = np.where(ridge_along, d2 - across, w2 - np.abs(ss))
    hipped = np.minimum(d2 - across, w2 - np.abs(ss))
    roof_h = eave[L] + pitch[L] * np.maximum(np.where(hip[L], hipped, gable), 0)
    heights = np.select([house, garage_px, shed_px], [roof_h, 2.8 + 0.5 * (3.2 - np.abs(ss - gx)), F32(2.3)], F32(0))
    dsm[px] = heights


def _commercial(
    rng: np.random.Generator,
    mat: np.ndarray,
    dsm: np.ndarray,
    px: np.ndarray,
    pu_block: np.ndarray,
    pv_block: np.ndarray,
    block: np.ndarray,
    size: tuple[float, float],
    n_blocks: int,
) -> None:
    """A block of big flat-roofed buildings in a parking lot with stall lines and planted edges."""
    if not px.any():
        return
    su, sv = size
    bw = rng.uniform(0.25, 0.6, n_blocks) * su
    bd = rng.uniform(0.3, 0.55, n_blocks) * sv
    bx = rng.uniform(0.2, 0.8, n_blocks) * su
    height = rng.uniform(6, 13, n_blocks).astype(F32)
    roof = mid(Mat.ROOF_FLAT) + rng.integers(0, VARIANTS, n_blocks)
    B = block[px]
    s, r = pu_block[px], pv_block[px]
    bldg = (np.abs(s - bx[B]) < bw[B] / 2) & (np.abs(r - sv * 0.6) < bd[B] / 2)
    edge = (s < 3) | (r < 3) | (s > su - 3) | (r > sv - 3)
    stall = (np.mod(s, 2.8) < 0.9) & ((np.mod(r, 18.0) < 5.5) | (np.mod(r, 18.0) > 12.5))
    values = np.select(
        [bldg, edge, stall],
        [roof[B], mid(Mat.LAWN, VARIANTS - 1), mid(Mat.PAVEMENT_MARK, 5)],
        mid(Mat.PAVEMENT, 2),
    ).astype(np.uint8)
    # rooftop units: small bright boxes
    units = bldg & (np.mod(s, 17.0) < 2.5) & (np.mod(r, 13.0) < 2.5)
    values[units] = mid(Mat.ROOF_METAL, 6)
    mat[px] = values
    dsm[px] = np.where(bldg, height[B] + np.where(units, F32(1.5), F32(0)), F32(0))


def _stamp(
    ctx: _Ctx,
    cy: float,
    cx: float,
    angle: float,
    half_u: float,
    half_v: float,
    material: int,
    height: float = 0.0,
    pitch: float = 0.0,
    where: Callable[[np.ndarray], np.ndarray] | None = None,
) -> None:
    """A rotated rectangle of one material; with a height, a gable roof (ridge along u) or a flat one."""
    win = _window(ctx, cy, cx, angle, half_u, half_v)
    if win is None:
        return
    inside = (np.abs(win.u) < half_u) & (np.abs(win.v) < half_v)
    mat = ctx.mat[win.y0 : win.y1, win.x0 : win.x1]
    if where is not None:
        inside &= where(mat)
    mat[inside] = material
    if height:
        roof = F32(height) + F32(pitch) * np.maximum(F32(half_v) - np.abs(win.v), 0)
        ctx.dsm[win.y0 : win.y1, win.x0 : win.x1][inside] = roof[inside]


_RURAL = np.array([Mat.CROP, Mat.MEADOW, Mat.FOREST_FLOOR, Mat.SHRUB_GROUND, Mat.LAWN])


def _is_rural(mat: np.ndarray) -> np.ndarray:
    return np.isin(_base(mat), _RURAL)


def _site_ok(ctx: _Ctx, shore: _ShoreDistance, y: float, x: float, clearance: float, open_land: bool = False) -> bool:
    """Whether (y, x) is on rural land (open land: not in the woods) at least `clearance` from water."""
    if not (0 <= y < ctx.h and 0 <= x < ctx.w) or not _is_rural(ctx.mat[int(y), int(x)]):
        return False
    if open_land and _base(ctx.mat[int(y), int(x)]) == Mat.FOREST_FLOOR:
        return False
    return bool(shore.at(np.array([y]), np.array([x]))[0] > clearance)


def _strip_malls(ctx: _Ctx, shore: _ShoreDistance) -> None:
    """Shops along main roads: a parking lot in front, a flat-roofed building behind."""
    rng = _rng(ctx.seed, "malls")
    for road in ctx.roads:
        for _ in range(int(rng.poisson(0.8 * math.sqrt(ctx.area_km2)))):
            y, x, angle = road.point(rng.uniform(0.25, 0.75))
            side = rng.choice([-1, 1])
            lot_d, bldg_d, length = rng.uniform(25, 50), rng.uniform(18, 35), rng.uniform(50, 140)
            off = float(road.width[len(road.width) // 2]) / 2 + 6
            ny, nx = side * math.cos(angle), -side * math.sin(angle)  # unit normal away from the road
            py, px = y + ny * (off + lot_d / 2), x + nx * (off + lot_d / 2)
            if not _site_ok(ctx, shore, py, px, 40):
                continue
            _stamp(ctx, py, px, angle, length / 2, lot_d / 2, mid(Mat.PAVEMENT, int(rng.integers(0, VARIANTS))))
            for k in np.arange(-length / 2 + 3, length / 2 - 2, 2.8):
                sy, sx = py + k * math.sin(angle), px + k * math.cos(angle)
                _stamp(ctx, sy, sx, angle, 0.45, lot_d / 2 - 7, mid(Mat.PAVEMENT_MARK, 5))
            by, bx = y + ny * (off + lot_d + bldg_d / 2), x + nx * (off + lot_d + bldg_d / 2)
            _stamp(
                ctx,
                by,
                bx,
                angle,
                length / 2,
                bldg_d / 2,
                mid(Mat.ROOF_FLAT, int(rng.integers(0, VARIANTS))),
                rng.uniform(5, 9),
            )


def _farmsteads(ctx: _Ctx, shore: _ShoreDistance) -> None:
    """Farmhouses with barns, a gravel yard and a lawn, along country roads."""
    rng = _rng(ctx.seed, "farms")
    for road in ctx.rural_roads + ctx.roads:
        for _ in range(int(rng.poisson(1.0 * math.sqrt(ctx.area_km2)))):
            y, x, angle = road.point(rng.uniform(0.2, 0.8))
            side = rng.choice([-1, 1])
            ny, nx = side * math.cos(angle), -side * math.sin(angle)
            dist = float(road.width[0]) / 2 + rng.uniform(25, 45)
            fy, fx = y + ny * dist, x + nx * dist
            if not _site_ok(ctx, shore, fy, fx, 50):
                continue
            rural = _is_rural
            _stamp(ctx, fy, fx, angle, 45, 35, mid(Mat.LAWN, int(rng.integers(0, 6))), where=rural)
            _stamp(
                ctx,
                fy + ny * 30,
                fx + nx * 30,
                angle,
                28,
                18,
                mid(Mat.BARE_SOIL, int(rng.integers(0, VARIANTS))),
                where=rural,
            )
            drive_len = dist
            _stamp(
                ctx,
                y + ny * drive_len / 2,
                x + nx * drive_len / 2,
                angle + math.pi / 2,
                drive_len / 2,
                1.8,
                mid(Mat.BARE_SOIL, 1),
                where=rural,
            )
            roof = mid(_ROOF_BASES[int(rng.choice(3, p=[0.6, 0.1, 0.3]))], int(rng.integers(0, VARIANTS)))
            _stamp(ctx, fy, fx, angle, rng.uniform(6, 9), rng.uniform(4.5, 6.5), roof, 5.5, 0.55)
            for k in range(int(rng.integers(1, 4))):
                by, bx = (
                    fy + ny * (28 + 6 * k) + math.sin(angle) * (k * 22 - 22),
                    fx + nx * (28 + 6 * k) + math.cos(angle) * (k * 22 - 22),
                )
                _stamp(
                    ctx,
                    by,
                    bx,
                    angle + rng.normal(0, 0.03),
                    rng.uniform(8, 16),
                    rng.uniform(5, 9),
                    mid(Mat.ROOF_METAL, int(rng.integers(0, VARIANTS))),
                    4.5,
                    0.35,
                )


def _barren_sites(ctx: _Ctx, shore: _ShoreDistance) -> None:
    """Construction sites, borrow pits, bare lots: irregular bare soil with vehicle tracks."""
    rng = _rng(ctx.seed, "barren")
    n = ctx.count(rng, 1.0, minimum=1 if ctx.area_km2 >= 0.5 else 0)
    for _ in range(n * 6):
        if n <= 0:
            break
        y, x = rng.uniform(0, ctx.h), rng.uniform(0, ctx.w)
        if not _site_ok(ctx, shore, y, x, 40, open_land=True):
            continue
        n -= 1
        r = rng.uniform(25, 60)
        win = _window(ctx, y, x, rng.uniform(0, math.pi), r * 1.6, r * 1.6)
        if win is None:
            continue
        mask = np.zeros((win.y1 - win.y0, win.x1 - win.x0), np.uint8)
        _blob(mask, 1, rng, y - win.y0, x - win.x0, r, rng.uniform(1.0, 1.6))
        mat = ctx.mat[win.y0 : win.y1, win.x0 : win.x1]
        inside = (mask > 0) & _is_rural(mat)
        mat[inside] = mid(Mat.BARE_SOIL, int(rng.integers(0, VARIANTS)))
        _site_texture(rng, ctx, win, inside)


def _site_texture(rng: np.random.Generator, ctx: _Ctx, win: _Window, inside: np.ndarray) -> None:
    """Graded patches, wheel tracks and spoil heaps (heaps get shading and shadows from the surface model)."""
    h, w = inside.shape
    rows = ctx.rows[win.y0 : win.y1, win.x0 : win.x1]
    patches = _field(rng, h, w, 4, ((10, 0.6), (35, 1.0))).full(h, w)
    rows[inside] = F32(0.09) * patches[inside]
    for _ in range(int(rng.integers(2, 5))):
        a, spacing = rng.uniform(0, math.pi), rng.uniform(9, 30)
        along = win.u * F32(math.cos(a)) + win.v * F32(math.sin(a))
        across = win.v * F32(math.cos(a)) - win.u * F32(math.sin(a))
        wobble = F32(rng.uniform(2, 8)) * np.sin(along / F32(rng.uniform(25, 60)))
        track = inside & (np.abs(np.mod(across + wobble, spacing) - spacing / 2) < 0.9)
        track &= np.abs(across) < rng.uniform(10, 50)
        rows[track] -= F32(0.12)
    dsm = ctx.dsm[win.y0 : win.y1, win.x0 : win.x1]
    for _ in range(int(rng.integers(0, 6))):
        cu, cv, r, top = rng.uniform(-25, 25), rng.uniform(-25, 25), rng.uniform(2, 6), rng.uniform(1, 3)
        heap = np.maximum(1 - ((win.u - F32(cu)) ** 2 + (win.v - F32(cv)) ** 2) / F32(r * r), 0) * F32(top)
        np.maximum(dsm, np.where(inside, heap, F32(0)), out=dsm)


# --- vegetation structure: crowns and shrubs ------------------------------------------------------------


def _crowns(
    rng: np.random.Generator,
    density: np.ndarray,
    cell: int,
    radius: tuple[float, float],
    height: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Crown surface (m, <= 0 outside crowns) and crown variant, for one crown candidate per cell.

    `density` (ny, nx) is the chance that a cell holds a crown. Each crown is a spheroid cap on a trunk; the
    scene is viewed as (ny, cell, nx, cell) blocks so every neighbour offset is a broadcast, not a gather.
    """
    ny, nx = density.shape
    present = rng.random((ny, nx)) < density
    jy = rng.uniform(0.15, 0.85, (ny, nx)) * cell
    jx = rng.uniform(0.15, 0.85, (ny, nx)) * cell
    rad = rng.uniform(*radius, (ny, nx))
    top = rng.uniform(*height, (ny, nx))
    variant = rng.integers(0, VARIANTS, (ny, nx)).astype(np.uint8)

    def pad(a: np.ndarray, fill: float) -> np.ndarray:
        return np.pad(a, 1, constant_values=fill)

    jy_p, jx_p, rad_p, variant_p = pad(jy, 0), pad(jx, 0), pad(rad, 1), pad(variant, 0)
    inv_r2 = pad(np.where(present, 1.0 / rad**2, 1e6), 1e6)  # absent cells: no crown anywhere
    base_p = pad(top - rad, 0)
    ly = (np.arange(cell, dtype=F32) + F32(0.5))[None, :, None, None]
    lx = (np.arange(cell, dtype=F32) + F32(0.5))[None, None, None, :]
    best = np.full((ny, cell, nx, cell), -1.0, F32)
    best_var = np.zeros((ny, cell, nx, cell), np.uint8)
    for oy in (-1, 0, 1):
        for ox in (-1, 0, 1):
            sl = (slice(1 + oy, 1 + oy + ny), slice(1 + ox, 1 + ox + nx))

            def take(a: np.ndarray) -> np.ndarray:
                return a[sl].astype(F32).reshape(ny, 1, nx, 1)  # noqa: B023 - used inside this iteration

            dy2 = (take(jy_p) + F32(oy * cell) - ly) ** 2
            dx2 = (take(jx_p) + F32(ox * cell) - lx) ** 2
            q = dy2 + dx2
            q *= take(inv_r2)
            np.subtract(1, q, out=q)
            inside = q > 0
            np.sqrt(np.maximum(q, 0, out=q), out=q)
            q *= take(rad_p)
            q += take(base_p)
            q[~inside] = -1
            better = q > best
            np.copyto(best, q, where=better)
            np.copyto(best_var, np.broadcast_to(take(variant_p).astype(np.uint8), best_var.shape), where=better)
    return best.reshape(ny * cell, nx * cell), best_var.reshape(ny * cell, nx * cell)


def _cell_density(mat: np.ndarray, cell: int, lut: np.ndarray) -> np.ndarray:
    """Crown chance per cell, read from the material at each cell centre."""
    h, w = mat.shape
    ys = np.minimum(np.arange(cell // 2, -(-h // cell) * cell, cell), h - 1)
    xs = np.minimum(np.arange(cell // 2, -(-w // cell) * cell, cell), w - 1)
    return lut[mat[ys[:, None], xs[None, :]]]


_TREE_DENSITY = _lut(
    {Mat.FOREST_FLOOR: 0.96, Mat.LAWN: 0.13, Mat.MEADOW: 0.008, Mat.SHRUB_GROUND: 0.05, Mat.MARSH: 0.02}
)
_TREE_DENSITY[mid(Mat.LAWN, VARIANTS - 1)] = 0.55  # street trees
_TREE_DENSITY[mid(Mat.MEADOW, 1)] = 0.0  # road verges are mown
_UNDER_CROWNS = _lut(
    {
        m: 1
        for m in (Mat.FOREST_FLOOR, Mat.LAWN, Mat.MEADOW, Mat.SHRUB_GROUND, Mat.MARSH, Mat.CROP, Mat.ROAD, Mat.CONCRETE)
    },
    dtype=bool,
)
_SHRUB_DENSITY = _lut({Mat.SHRUB_GROUND: 0.5, Mat.MEADOW: 0.015, Mat.MARSH: 0.03})
_SHRUB_DENSITY[mid(Mat.MEADOW, 1)] = 0.0
_UNDER_SHRUBS = _lut({Mat.SHRUB_GROUND: 1, Mat.MEADOW: 1, Mat.MARSH: 1}, dtype=bool)


def _trees(ctx: _Ctx) -> None:
    rng = _rng(ctx.seed, "trees")
    cell = 6
    density = _cell_density(ctx.mat, cell, _TREE_DENSITY)
    top, variant = _crowns(rng, density, cell, radius=(2.6, 5.2), height=(12.0, 26.0))
    top, variant = top[: ctx.h, : ctx.w], variant[: ctx.h, : ctx.w]
    # leaf clumps: small bumps on the canopy surface make the crown texture
    top = top + F32(0.5) * rng.standard_normal(top.shape, dtype=F32)
    crown = (top > 1.0) & _UNDER_CROWNS[ctx.mat]
    ctx.mat[crown] = mid(Mat.TREE) + variant[crown]
    np.copyto(ctx.dsm, top, where=crown)


def _shrubs(ctx: _Ctx) -> None:
    rng = _rng(ctx.seed, "shrubs")
    cell = 3
    density = _cell_density(ctx.mat, cell, _SHRUB_DENSITY)
    rows, cols = np.nonzero(density > 0)
    if len(rows) == 0:
        return
    r0, r1, c0, c1 = max(rows.min() - 1, 0), rows.max() + 2, max(cols.min() - 1, 0), cols.max() + 2
    top, variant = _crowns(rng, density[r0:r1, c0:c1], cell, radius=(0.9, 2.4), height=(1.2, 4.0))
    y0, x0 = r0 * cell, c0 * cell
    y1, x1 = min(y0 + top.shape[0], ctx.h), min(x0 + top.shape[1], ctx.w)
    top, variant = top[: y1 - y0, : x1 - x0], variant[: y1 - y0, : x1 - x0]
    mat = ctx.mat[y0:y1, x0:x1]
    shrub = (top > 0.3) & _UNDER_SHRUBS[mat]
    mat[shrub] = mid(Mat.SHRUB) + variant[shrub]
    np.copyto(ctx.dsm[y0:y1, x0:x1], top, where=shrub)


def _mix_field(ctx: _Ctx, shore: _ShoreDistance) -> np.ndarray:
    """Blend between each material's two endmembers: patchy on land, shallowness in water."""
    rng = _rng(ctx.seed, "mix")
    mix = _field(rng, ctx.h, ctx.w, 4, ((10, 0.5), (40, 1.0), (150, 0.8))).full(ctx.h, ctx.w)
    mix *= F32(0.3)
    mix += F32(0.5)
    np.clip(mix, 0, 1, out=mix)
    water = _base(ctx.mat) == Mat.WATER
    if water.any():
        depth = shore.in_water()[water]
        mix[water] = np.clip(1 - depth / 6, 0, 1) * 0.6
    return mix


# --- rendering -------------------------------------------------------------------------------------------

_DIFFUSE = np.array([0.22, 0.24, 0.34, 0.3], F32)  # skylight share per band: what is left in shadow


def _sun(shift: Shift) -> tuple[float, float, float]:
    """(dy, dx, tan elevation): image-plane unit step towards the sun (y grows southwards)."""
    az = math.radians(shift.sun_azimuth)
    return -math.cos(az), math.sin(az), math.tan(math.radians(shift.sun_elevation))


def _direct_light(dsm: np.ndarray, shift: Shift) -> np.ndarray:
    """Direct sunlight relative to flat open ground: hill-shaded crowns/roofs, 0 in cast shadows."""
    sy, sx, tan_el = _sun(shift)
    el = math.radians(shift.sun_elevation)
    gy, gx = np.gradient(dsm)
    np.clip(gy, -3, 3, out=gy)
    np.clip(gx, -3, 3, out=gx)
    # n = (-gx, -gy, 1)/|n|, sun = (cos(el) sx, cos(el) sy, sin(el)); relative to flat ground: / sin(el)
    light = gx * F32(-math.cos(el) * sx / math.sin(el))
    light -= gy * F32(math.cos(el) * sy / math.sin(el))
    light += 1
    light /= np.sqrt(1 + gx * gx + gy * gy)
    del gx, gy
    np.clip(light, 0, 2.0, out=light)
    light *= 1 - _cast_shadow(dsm, sy, sx, tan_el)
    return light


def _cast_shadow(dsm: np.ndarray, sy: float, sx: float, tan_el: float) -> np.ndarray:
    """Soft shadow mask: a pixel is shaded if the surface towards the sun rises above the sun ray."""
    h, w = dsm.shape
    top = float(dsm.max())
    shadow = np.zeros((h, w), bool)
    if top <= 0.5:
        return shadow.astype(F32)
    reach = int(math.ceil(top / max(tan_el, 0.05))) + 1
    seen = set()
    for t in range(1, reach + 1):
        oy, ox = int(round(t * sy)), int(round(t * sx))
        if (oy, ox) in seen or abs(oy) >= h or abs(ox) >= w:
            continue
        seen.add((oy, ox))
        dist = math.hypot(oy, ox)
        # compare dsm[p + o] with dsm[p] + dist * tan
        src = dsm[max(oy, 0) : h + min(oy, 0), max(ox, 0) : w + min(ox, 0)]
        dst = (slice(max(-oy, 0), h + min(-oy, 0)), slice(max(-ox, 0), w + min(-ox, 0)))
        shadow[dst] |= (src - F32(dist * tan_el)) > dsm[dst] + F32(0.3)
    soft = ndi.uniform_filter(shadow.astype(F32), 2)
    return soft


def _render(layout: _Layout, seed: int, shift: Shift) -> np.ndarray:
    mat = layout.mat
    h, w = mat.shape
    table = material_table(seed, round(float(shift.season), 6))
    lut = dn_lut(shift.gain, shift.offset, shift.haze)
    rng = _rng(seed, "render")
    texture = ndi.gaussian_filter(rng.standard_normal((h, w), dtype=F32), 0.8)
    texture *= F32(1 / 0.35)  # back to ~unit std after the blur
    shade = table.texture[mat] * texture
    del texture
    shade += 1
    shade += layout.rows
    light = _direct_light(layout.dsm, shift)
    diffuse = np.clip(_DIFFUSE + F32(0.15 * shift.haze), 0, 1)
    noise_rng = np.random.default_rng([seed, 0xA015E, round(shift.noise_dn * 1000)])
    image = np.empty((4, h, w), np.uint8)
    scale = F32((LUT_SIZE - 1) / LUT_MAX_REFLECTANCE)
    for band in range(4):
        a = table.a[:, band][mat]
        refl = table.b[:, band][mat]
        refl -= a
        refl *= layout.mix
        refl += a
        del a
        refl *= shade
        refl *= F32(diffuse[band]) + F32(1 - diffuse[band]) * light
        if shift.blur > 0:
            refl = ndi.gaussian_filter(refl, shift.blur, truncate=2.5)
        refl *= scale
        np.clip(refl, 0, LUT_SIZE - 1, out=refl)
        dn = lut[band][refl.astype(np.int32)]
        del refl
        dn += noise_rng.standard_normal((h, w), dtype=F32) * F32(shift.noise_dn)
        np.clip(dn + F32(0.5), 0, 255, out=dn)
        image[band] = dn.astype(np.uint8)
    return image
