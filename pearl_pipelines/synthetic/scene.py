"""Synthetic NAIP-like scenes: 1 m pixels, R G B NIR uint8, with Chesapeake 9-class labels.

A scene is drawn in two stages. The layout (what is where: parcels, woods, rivers, streets, houses, crowns) comes
from the seed alone, so labels never depend on the domain `Shift`. The rendering (season, sun, sensor) turns the
layout's material map and surface model into an image: material reflectance from earthlib spectra (`spectra.py`),
mixing and texture fields, hill-shading of crowns and roofs, cast shadows, PSF blur and sensor noise.

Everything is vectorised numpy/scipy. Python loops run over objects (roads, neighbourhoods, sites), over row
strips and crown tiles (which bound memory at any scene size), never over pixels.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from pearl_pipelines.synthetic.spectra import (
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
_STRIP = 512  # rows processed at once


@dataclass(frozen=True)
class Shift:
    """Domain shift: season, illumination and sensor response. Labels do not depend on it."""

    season: float = 0.0  # 0 = mid-summer (leaf-on), 1 = late autumn: leaf-off, browner, fields harvested
    gain: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)  # per-band sensor gain (R, G, B, NIR)
    offset: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # per-band additive offset (DN)
    haze: float = 0.0  # extra atmospheric path radiance (0..1): brighter, bluer, lower contrast
    sun_elevation: float = 55.0  # degrees; a lower sun casts longer shadows
    sun_azimuth: float = 150.0  # degrees clockwise from north (image up); shadows fall on the opposite side
    noise_dn: float = 1.5  # sensor noise, std in DN
    blur: float = 0.5  # PSF, Gaussian sigma in pixels


# Another acquisition: late October, low sun from the south, hazier, a sensor with a weaker NIR response
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
    """A height x width scene (1 m pixels); deterministic for (height, width, seed, shift)."""
    if height < 8 or width < 8:
        raise ValueError(f"a scene needs at least 8x8 pixels, got {height}x{width}")
    layout = _layout(height, width, seed)
    image = _render(layout, seed, shift or Shift())
    return Scene(image=image, labels=class_lut()[layout.mat])


# --- small tools -------------------------------------------------------------------------------------------


def _rng(seed: int, part: str) -> np.random.Generator:
    """One random stream per part of the layout, so changing one part does not reshuffle the others."""
    return np.random.default_rng([seed, zlib.crc32(part.encode())])


def _strips(h: int) -> Iterator[tuple[int, int]]:
    for y0 in range(0, h, _STRIP):
        yield y0, min(h, y0 + _STRIP)


def _grid(h: int, w: int, y0: int = 0, x0: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Broadcastable pixel-centre coordinates: ys (h, 1), xs (1, w)."""
    ys = np.arange(y0, y0 + h, dtype=F32)[:, None] + F32(0.5)
    xs = np.arange(x0, x0 + w, dtype=F32)[None, :] + F32(0.5)
    return ys, xs


def _upsample(coarse: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Separable bilinear interpolation of `coarse` at rows ys x columns xs (coarse-pixel units)."""
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
    """A smooth random field, stored coarse and expanded to pixels on demand."""

    coarse: np.ndarray
    step: float  # pixels per coarse cell

    def window(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        ys = np.arange(y0, y1, dtype=F32) / F32(self.step)
        xs = np.arange(x0, x1, dtype=F32) / F32(self.step)
        return _upsample(self.coarse, ys, xs)

    def at(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        coords = np.stack([np.asarray(y, F32) / self.step, np.asarray(x, F32) / self.step])
        return ndi.map_coordinates(self.coarse, coords, order=1, mode="nearest")


def _field(rng: np.random.Generator, h: int, w: int, step: float, octaves: tuple[tuple[float, float], ...]) -> _Field:
    """Sum of Gaussian-filtered white noise; octaves are (feature size px, weight); std ~1."""
    shape = (int(h / step) + 3, int(w / step) + 3)
    total = np.zeros(shape, F32)
    for size, weight in octaves:
        layer = ndi.gaussian_filter(rng.standard_normal(shape).astype(F32), max(size / step / 2.5, 0.6))
        total += F32(weight) * layer / max(float(layer.std()), 1e-6)
    return _Field(total / max(float(total.std()), 1e-6), step)


def _noise1d(rng: np.random.Generator, n: int, size: float) -> np.ndarray:
    """1-D smooth noise with features ~size samples, std 1."""
    x = ndi.gaussian_filter1d(rng.standard_normal(n + 8 * int(size)), size / 2.5, mode="wrap")[:n]
    return (x / max(float(x.std()), 1e-6)).astype(F32)


def _hash01(*keys: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) per integer key tuple, without a random stream (per-stall or per-cell choices)."""
    h = np.zeros(np.broadcast(*keys).shape, np.uint64)
    for k, prime in zip(keys, (0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F), strict=False):
        h ^= np.asarray(k).astype(np.int64).astype(np.uint64) * np.uint64(prime)
        h = (h ^ (h >> np.uint64(15))) * np.uint64(0x2C1B3C6D)
    return ((h >> np.uint64(11)) & np.uint64(0xFFFFF)).astype(F32) / F32(0x100000)


def _base(mat: np.ndarray) -> np.ndarray:
    return mat // VARIANTS


def _lut(values: dict[Mat, float], default: float = 0.0, dtype: type = F32) -> np.ndarray:
    """(256,) per-material-id lookup from per-base values."""
    lut: np.ndarray = np.full(256, default, dtype)
    for base, value in values.items():
        lut[mid(base) : mid(base) + VARIANTS] = value
    return lut


_OPEN = (Mat.CROP, Mat.MEADOW, Mat.SHRUB_GROUND, Mat.LAWN)
_RURAL = (*_OPEN, Mat.FOREST_FLOOR)
_IS_RURAL = _lut(dict.fromkeys(_RURAL, 1), dtype=bool)
_IS_OPEN = _lut(dict.fromkeys(_OPEN, 1), dtype=bool)
_IS_PAVEMENT = _lut({Mat.PAVEMENT: 1}, dtype=bool)
_FARMYARD = _lut(dict.fromkeys((*_RURAL, Mat.BARE_SOIL), 1), dtype=bool)


# --- linear features: rivers, streams, roads, shorelines ---------------------------------------------------


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
        """(y, x, tangent angle) at fraction t along the curve."""
        i = int(np.clip(t, 0, 1) * (len(self.centre) - 1))
        u, v = self.u0 + i, float(self.centre[i])
        x = self.cx + u * self.cos - v * self.sin
        y = self.cy + u * self.sin + v * self.cos
        slope = float(self.centre[min(i + 1, len(self.centre) - 1)] - self.centre[max(i - 1, 0)]) / 2
        return y, x, math.atan2(self.sin, self.cos) + math.atan(slope)

    def distance_at(self, y: float, x: float) -> float:
        d, _ = self.distance(np.array([[y]], F32), np.array([[x]], F32))
        return float(d[0, 0])


def _curve(
    rng: np.random.Generator,
    h: int,
    w: int,
    width: float,
    *,
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


# --- the layout --------------------------------------------------------------------------------------------


class _ShoreDistance:
    """Distance to water on land and to land in water, on a 4 m grid (a full-resolution EDT is too slow)."""

    step = 4

    def __init__(self, water: np.ndarray) -> None:
        h, w = water.shape
        s = self.step
        padded = np.zeros((-(-h // s) * s, -(-w // s) * s), bool)
        padded[:h, :w] = water
        share = padded.reshape(padded.shape[0] // s, s, padded.shape[1] // s, s).mean(axis=(1, 3))
        wet = share > 0  # any water in a cell: streams narrower than a cell still count
        self.any_water = bool(wet.any())
        far = np.full(wet.shape, 1e4, F32)
        self.land = (ndi.distance_transform_edt(~wet) * s).astype(F32) if self.any_water else far
        self.water = (ndi.distance_transform_edt(wet) * s).astype(F32)
        open_water = self.water >= 40  # cores of lakes and the bay: not rivers, streams or ponds
        self.open_water = (ndi.distance_transform_edt(~open_water) * s).astype(F32) if open_water.any() else far
        self.w = w

    def _window(self, grid: np.ndarray, y0: int, y1: int) -> np.ndarray:
        ys = (np.arange(y0, y1, dtype=F32) + F32(0.5)) / F32(self.step) - F32(0.5)
        xs = (np.arange(self.w, dtype=F32) + F32(0.5)) / F32(self.step) - F32(0.5)
        return _upsample(grid, ys, xs)

    def on_land(self, y0: int, y1: int) -> np.ndarray:
        return self._window(self.land, y0, y1)

    def in_water(self, y0: int, y1: int) -> np.ndarray:
        return self._window(self.water, y0, y1)

    def to_open_water(self, y0: int, y1: int) -> np.ndarray:
        return self._window(self.open_water, y0, y1)

    def at(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        coords = np.stack([np.asarray(y, F32) / self.step - 0.5, np.asarray(x, F32) / self.step - 0.5])
        return ndi.map_coordinates(self.land, coords, order=1, mode="nearest")


@dataclass
class _Layout:
    mat: np.ndarray  # uint8 (H, W) material id (spectra.mid)
    dsm: np.ndarray  # float32 (H, W) surface height above ground, m: roofs, crowns, shrubs, heaps, bridges
    rows: np.ndarray  # float16 (H, W) relative brightness change from crop rows, tramlines, wheel tracks
    mix: _Field  # blend between each material's two endmembers (patchiness)
    shore: _ShoreDistance  # water depth proxy: shallow water shows its bottom


@dataclass
class _Ctx:
    """State shared by the layout steps."""

    h: int
    w: int
    seed: int
    mat: np.ndarray
    dsm: np.ndarray
    rows: np.ndarray
    forest: _Field  # woods where > 0
    wet: _Field  # low, wet ground: wide marshes
    urban: _Field  # where neighbourhoods may go
    roads: list[_Curve]  # main roads: curved, marked
    rural_roads: list[_Curve]  # country roads: narrow, unmarked

    @property
    def area_km2(self) -> float:
        return self.h * self.w / 1e6

    def count(self, rng: np.random.Generator, per_km2: float, minimum: int = 0) -> int:
        return max(minimum, int(rng.poisson(per_km2 * self.area_km2)))

    def all_roads(self) -> list[_Curve]:
        return self.roads + self.rural_roads


def _layout(h: int, w: int, seed: int) -> _Layout:
    rng = _rng(seed, "fields")
    ctx = _Ctx(
        h=h,
        w=w,
        seed=seed,
        mat=np.full((h, w), mid(Mat.MEADOW), np.uint8),
        dsm=np.zeros((h, w), F32),
        rows=np.zeros((h, w), np.float16),
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
    _paint_roads(ctx, water, shore)
    del water
    _trees(ctx)
    _shrubs(ctx)
    textured = _lut({Mat.CROP: 1, Mat.BARE_SOIL: 1, Mat.MARSH: 1}, dtype=bool)
    for y0, y1 in _strips(h):
        ctx.rows[y0:y1][~textured[ctx.mat[y0:y1]]] = 0  # row texture only where fields and sites survived
    mix = _field(_rng(seed, "mix"), h, w, 4, ((10, 0.5), (40, 1.0), (150, 0.8)))
    return _Layout(ctx.mat, ctx.dsm, ctx.rows, mix, shore)


# --- roads -------------------------------------------------------------------------------------------------


def _plan_roads(ctx: _Ctx) -> None:
    """Main roads (curved, marked) and straighter country roads; painted after water so they bridge it."""
    rng = _rng(ctx.seed, "roads")
    size_km = math.sqrt(ctx.area_km2)
    for _ in range(max(1, int(rng.poisson(0.9 * size_km + 0.3)))):
        road = _curve(rng, ctx.h, ctx.w, rng.uniform(9.0, 13.0), meanders=((1600, 120), (500, 25)))
        road.variant = int(rng.integers(0, VARIANTS))
        ctx.roads.append(road)
    for _ in range(int(rng.poisson(1.0 * size_km))):
        road = _curve(rng, ctx.h, ctx.w, rng.uniform(5.5, 7.0), meanders=((900, 30),))
        road.variant = int(rng.integers(0, VARIANTS))
        ctx.rural_roads.append(road)


_VERGE_OVER = _lut(dict.fromkeys((Mat.FOREST_FLOOR, Mat.CROP, Mat.SHRUB_GROUND, Mat.MARSH), 1), dtype=bool)


def _paint_roads(ctx: _Ctx, water: np.ndarray, shore: _ShoreDistance) -> None:
    """Asphalt, mown verges, lane lines on main roads; bridges over rivers and streams, none over open water."""
    roads = [(r, True) for r in ctx.roads] + [(r, False) for r in ctx.rural_roads]
    for y0, y1 in _strips(ctx.h):
        ys, xs = _grid(y1 - y0, ctx.w, y0)
        mat, dsm, wet = ctx.mat[y0:y1], ctx.dsm[y0:y1], water[y0:y1] > 0
        open_water = water[y0:y1] > _STILL_WATER
        for road, marked in roads:
            d, width = road.distance(ys, xs)
            np.abs(d, out=d)
            d[open_water] = 1e4  # the road ends at the shore
            half = width / 2
            mat[(d < half + 4.0) & _VERGE_OVER[mat]] = mid(Mat.MEADOW, 1)
            on_road = d < half
            mat[on_road] = mid(Mat.ROAD, road.variant)
            dsm[on_road & wet] = 4.0
            if marked:
                mat[d < 0.45] = mid(Mat.ROAD_MARK, 0)  # yellow centre line
                mat[on_road & (np.abs(d - (half - 0.9)) < 0.4)] = mid(Mat.ROAD_MARK, 4)  # white edge lines


# --- water -------------------------------------------------------------------------------------------------


def _blob(
    target: np.ndarray, value: int, rng: np.random.Generator, *, centre: tuple[float, float], r: float, ecc: float
) -> None:
    """A lobed, rotated ellipse (lake, pond, site) written into `target` (over streams it meets)."""
    h, w = target.shape
    cy, cx = centre
    angle = rng.uniform(0, math.pi)
    ry, rx = r * ecc, r / ecc
    lobes = [(k, rng.uniform(0, 0.22 / k**0.5), rng.uniform(0, 2 * math.pi)) for k in (2, 3, 5)]
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
    for k, amplitude, phase in lobes:
        edge += F32(amplitude) * np.cos(k * theta + F32(phase))
    window = target[y0:y1, x0:x1]
    window[u * u + v * v < edge * edge] = value


def _clear_of_roads(ctx: _Ctx, y: float, x: float, clearance: float) -> bool:
    """Lakes and ponds keep away from roads (a road across a lake would need a causeway)."""
    return all(abs(road.distance_at(y, x)) >= clearance for road in ctx.all_roads())


_STILL_WATER = 3  # water codes: 1 + variant for rivers and streams (bridged), 4 + variant for lakes, ponds, bay


def _water_bodies(ctx: _Ctx) -> np.ndarray:
    """uint8 (H, W): 0 land, else a water code. A river, streams, maybe a bay, lakes and ponds."""
    rng = _rng(ctx.seed, "water")
    h, w = ctx.h, ctx.w
    size_km = math.sqrt(ctx.area_km2)
    curves: list[tuple[_Curve, int]] = []
    if rng.random() < 0.75:
        river = _curve(rng, h, w, rng.uniform(14, 34), meanders=((700, 140), (260, 45)), width_var=0.3)
        curves.append((river, 1))
    for _ in range(int(rng.poisson(1.2 * size_km))):
        stream = _curve(rng, h, w, rng.uniform(3.0, 6.0), meanders=((400, 70), (120, 12)), width_var=0.25)
        curves.append((stream, int(rng.choice([1, 1, 0, 2]))))
    bay = _bay(rng, h, w) if min(h, w) >= 600 and rng.random() < 0.35 else None

    water = np.zeros((h, w), np.uint8)
    for y0, y1 in _strips(h):
        ys, xs = _grid(y1 - y0, w, y0)
        band = water[y0:y1]
        for curve, variant in curves:
            d, width = curve.distance(ys, xs)
            band[(np.abs(d) < width / 2) & (band == 0)] = 1 + variant
        if bay is not None:
            d, _ = bay.distance(ys, xs)
            band[(d < 0) & (band == 0)] = _STILL_WATER + 1 + 1  # turbid estuary

    lakes = [(50.0, 170.0, 1.3)] * ctx.count(rng, 0.5)
    ponds = [(14.0, 45.0, 0.0)] * ctx.count(rng, 2.5, minimum=1 if ctx.area_km2 >= 0.25 else 0)
    for r_min, r_max, ecc in lakes + ponds:
        for _ in range(8):  # a few tries to find a spot away from roads
            cy, cx, r = rng.uniform(0.05, 0.95) * h, rng.uniform(0.05, 0.95) * w, rng.uniform(r_min, r_max)
            on_land = water[min(int(cy), h - 1), min(int(cx), w - 1)] == 0
            if on_land and _clear_of_roads(ctx, cy, cx, 1.6 * r + 15):
                variant = int(rng.choice([0, 2, 2, 1]))
                _blob(water, _STILL_WATER + 1 + variant, rng, centre=(cy, cx), r=r, ecc=ecc or rng.uniform(1.0, 1.5))
                break
    return water


def _bay(rng: np.random.Generator, h: int, w: int) -> _Curve:
    """Shoreline of open water along one scene edge (a Chesapeake tidal shore); water where distance < 0."""
    side = int(rng.integers(0, 4))
    depth = rng.uniform(0.1, 0.25) * (h if side in (0, 2) else w)
    angle, through = {
        0: (0.0, (depth, w / 2)),
        1: (math.pi / 2, (h / 2, w - depth)),
        2: (math.pi, (h - depth, w / 2)),
        3: (3 * math.pi / 2, (h / 2, depth)),
    }[side]
    shore = ((900, 0.08 * depth + 40), (250, 30), (60, 6))
    return _curve(rng, h, w, 1.0, meanders=shore, angle=angle, through=through)


def _paint_water(ctx: _Ctx, water: np.ndarray) -> None:
    for y0, y1 in _strips(ctx.h):
        band = water[y0:y1]
        wet = band > 0
        ctx.mat[y0:y1][wet] = mid(Mat.WATER) + (band[wet] - 1) % _STILL_WATER
        ctx.dsm[y0:y1][wet] = 0.0


# --- rural land: parcels, woods, riparian buffers, marshes, beaches ------------------------------------------


@dataclass
class _Parcels:
    """Field parcels on a rotated grid: strips of random width, cut into parcels of random length."""

    cos: float
    sin: float
    edges: np.ndarray  # strip boundaries along u
    spacing: np.ndarray  # parcel length along v, per strip
    shift: np.ndarray  # parcel offset along v, per strip
    n_rows: int  # parcels per strip (index range)
    cy: np.ndarray  # per parcel: centre
    cx: np.ndarray

    def window(self, y0: int, y1: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Parcel index, distance to the parcel edge, and the along/across coordinates, for rows y0:y1."""
        ys, xs = _grid(y1 - y0, w, y0)
        dx, dy = xs - F32(w / 2), ys - F32(h / 2)
        u = dx * F32(self.cos) + dy * F32(self.sin)
        v = dy * F32(self.cos) - dx * F32(self.sin)
        n_strips = len(self.edges) - 1
        iu = np.clip(np.searchsorted(self.edges, u, side="right") - 1, 0, n_strips - 1).astype(np.int32)
        du = np.minimum(u - self.edges[iu], self.edges[iu + 1] - u)
        t = (v - self.shift[iu]) / self.spacing[iu]
        iv = np.floor(t)
        t -= iv
        edge = np.minimum(du, np.minimum(t, 1 - t) * self.spacing[iu])
        pid = iu * self.n_rows + np.clip(iv.astype(np.int32) + self.n_rows // 2, 0, self.n_rows - 1)
        return pid, edge, u, v


def _plan_parcels(rng: np.random.Generator, h: int, w: int) -> _Parcels:
    diag = math.hypot(h, w)
    angle = rng.uniform(-math.pi / 4, math.pi / 4)
    edges = np.cumsum(np.r_[-diag / 2 - 200, rng.uniform(90, 330, int(diag / 60) + 4)]).astype(F32)
    n_strips = len(edges) - 1
    spacing = rng.uniform(70, 300, n_strips).astype(F32)
    shift = (rng.uniform(0, 1, n_strips) * spacing).astype(F32)
    n_rows = int(diag / 60) + 4
    gu, gv = np.meshgrid(np.arange(n_strips), np.arange(n_rows) - n_rows // 2, indexing="ij")
    cu = (edges[gu] + edges[gu + 1]) / 2
    cv = shift[gu] + (gv + 0.5) * spacing[gu]
    c, s = math.cos(angle), math.sin(angle)
    cx = w / 2 + cu * c - cv * s
    cy = h / 2 + cu * s + cv * c
    return _Parcels(c, s, edges, spacing, shift, n_rows, cy.ravel(), cx.ravel())


@dataclass
class _Crops:
    """Per parcel: material, hedgerow, and row texture (direction, period, strength, tramline spacing)."""

    mat: np.ndarray
    hedge: np.ndarray
    along_u: np.ndarray
    period: np.ndarray
    strength: np.ndarray
    tram: np.ndarray


def _plan_crops(rng: np.random.Generator, ctx: _Ctx, parcels: _Parcels) -> _Crops:
    n = len(parcels.cy)
    kind = rng.choice(4, n, p=[0.62, 0.22, 0.09, 0.07])  # crop, meadow/hay, old field (shrubs), lawn (estate)
    state = rng.choice(VARIANTS, n, p=CROP_STATE_WEIGHTS)
    choices = np.stack(
        [
            mid(Mat.CROP) + state,
            mid(Mat.MEADOW) + rng.integers(0, 4, n),
            np.full(n, mid(Mat.SHRUB_GROUND)),
            np.full(n, mid(Mat.LAWN)),
        ]
    )
    mat = np.take_along_axis(choices, kind[None, :], axis=0)[0].astype(np.uint8)
    mat[ctx.forest.at(parcels.cy, parcels.cx) > 0.0] = mid(Mat.FOREST_FLOOR)
    return _Crops(
        mat=mat,
        hedge=rng.random(n) < 0.45,
        along_u=rng.random(n) < 0.5,
        period=rng.uniform(2.5, 7.0, n).astype(F32),
        strength=rng.uniform(0.03, 0.09, n).astype(F32),
        tram=rng.uniform(16, 26, n).astype(F32),
    )


def _rural(ctx: _Ctx, shore: _ShoreDistance) -> None:
    """Fields, pastures, old fields and woods; hedgerows, woodlots, a power line; then the shore zones."""
    rng = _rng(ctx.seed, "rural")
    h, w = ctx.h, ctx.w
    parcels = _plan_parcels(rng, h, w)
    crops = _plan_crops(rng, ctx, parcels)
    power = _curve(rng, h, w, rng.uniform(30, 45)) if ctx.area_km2 >= 0.5 and rng.random() < 0.6 else None
    shore_fields = _ShoreFields(
        buffer=_field(rng, h, w, 16, ((300, 1.0), (80, 0.5))),
        beach=_field(rng, h, w, 16, ((250, 1.0),)),
        channels=_field(rng, h, w, 4, ((40, 1.0), (14, 0.35))),
    )
    for y0, y1 in _strips(h):
        pid, edge, u, v = parcels.window(y0, y1, w, h)
        mat = crops.mat[pid]
        is_crop = _base(mat) == Mat.CROP
        ctx.rows[y0:y1] = _crop_rows(crops, pid, mat, is_crop, u=u, v=v)  # before _shore_zones adds creeks
        mat[ctx.forest.window(y0, y1, 0, w) > 1.0] = mid(Mat.FOREST_FLOOR)  # woodlots with rounded edges
        open_land = _base(mat) != Mat.FOREST_FLOOR
        mat[open_land & is_crop & (edge < 1.6)] = mid(Mat.MEADOW, 2)  # grass margins between fields
        mat[open_land & crops.hedge[pid] & (edge < 3.5)] = mid(Mat.FOREST_FLOOR)  # hedgerows
        if power is not None:  # a utility corridor kept in shrubs where it crosses woods
            d, width = power.distance(*_grid(y1 - y0, w, y0))
            mat[(np.abs(d) < width / 2) & (_base(mat) == Mat.FOREST_FLOOR)] = mid(Mat.SHRUB_GROUND, 1)
        if shore.any_water:
            _shore_zones(ctx, shore, shore_fields, mat, y0=y0, y1=y1)
        ctx.mat[y0:y1] = mat


def _crop_rows(
    crops: _Crops, pid: np.ndarray, mat: np.ndarray, is_crop: np.ndarray, *, u: np.ndarray, v: np.ndarray
) -> np.ndarray:
    """Row/tillage texture along one parcel axis, and tramlines in green crops."""
    p = pid[is_crop]
    coord = np.where(crops.along_u[p], u[is_crop], v[is_crop])
    rows = np.zeros(pid.shape, F32)
    texture = crops.strength[p] * np.sin(coord * (F32(2 * math.pi) / crops.period[p]))
    green = np.isin(mat[is_crop] % VARIANTS, CROP_GREEN)
    texture[green & (np.mod(coord, crops.tram[p]) < 1.3)] -= F32(0.22)
    rows[is_crop] = texture
    return rows


@dataclass
class _ShoreFields:
    buffer: _Field  # width of riparian woods
    beach: _Field  # where beaches are
    channels: _Field  # its zero crossings meander: tidal creeks in marshes


def _shore_zones(ctx: _Ctx, shore: _ShoreDistance, f: _ShoreFields, mat: np.ndarray, *, y0: int, y1: int) -> None:
    """Riparian woods along the water, marsh at its margin where the ground is low, beaches here and there."""
    dist = shore.on_land(y0, y1)
    buf = f.buffer.window(y0, y1, 0, ctx.w)
    mat[dist < 25 + 22 * buf] = mid(Mat.FOREST_FLOOR)
    marsh = dist < np.clip(25 * ctx.wet.window(y0, y1, 0, ctx.w) + 15 * buf - 15, 0, 50)
    mat[marsh] = mid(Mat.MARSH) + (np.abs(buf[marsh] * 3).astype(np.uint8) % VARIANTS)
    creeks = np.abs(f.channels.window(y0, y1, 0, ctx.w)[marsh])
    ctx.rows[y0:y1][marsh] = np.where(creeks < 0.07, F32(-0.45), F32(0.25) * np.minimum(creeks, 1) - F32(0.1))
    sand = f.beach.window(y0, y1, 0, ctx.w)
    beach = (dist < np.minimum(2 + 3 * sand, 7)) & (sand > 1.2)
    if beach.any():  # beaches face open water, not creeks
        beach &= shore.to_open_water(y0, y1) < 40
    mat[beach] = mid(Mat.SAND, 3)


# --- suburbs: streets, lots, houses ------------------------------------------------------------------------

_ROOF_BASES = np.array([Mat.ROOF_SHINGLE, Mat.ROOF_TILE, Mat.ROOF_METAL, Mat.ROOF_CLAY, Mat.ROOF_FLAT])
_ROOF_SHARE = (0.68, 0.12, 0.12, 0.04, 0.04)


def _suburbs(ctx: _Ctx, shore: _ShoreDistance) -> None:
    """Neighbourhoods, most of them beside a main road and aligned with it."""
    rng = _rng(ctx.seed, "suburbs")
    n = ctx.count(rng, 2.0, minimum=1 if ctx.area_km2 >= 0.5 else 0)
    placed = 0
    for _ in range(n * 8):
        if placed >= n:
            break
        half_v = rng.uniform(90, 260)
        if ctx.roads and rng.random() < 0.8:
            road = ctx.roads[int(rng.integers(0, len(ctx.roads)))]
            y, x, angle = road.point(rng.uniform(0.3, 0.7))
            side, offset = rng.choice([-1, 1]), half_v + rng.uniform(15, 40)
            y, x = y + side * offset * math.cos(angle), x - side * offset * math.sin(angle)
            angle += rng.normal(0, 0.08)
        else:
            y, x, angle = rng.uniform(0, ctx.h), rng.uniform(0, ctx.w), rng.uniform(0, math.pi)
        half_u = rng.uniform(140, 420)
        if not (0 <= y < ctx.h and 0 <= x < ctx.w) or not _IS_RURAL[ctx.mat[int(y), int(x)]]:
            continue
        if placed and ctx.urban.at(np.array([y]), np.array([x]))[0] < -0.6:  # the first one may go anywhere
            continue
        _neighbourhood(ctx, rng, shore, _Frame(y, x, angle, half_u, half_v))
        placed += 1


@dataclass
class _Frame:
    """A rotated rectangle: centre, angle of its u axis, half extents."""

    cy: float
    cx: float
    angle: float
    half_u: float
    half_v: float

    def to_image(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, s = math.cos(self.angle), math.sin(self.angle)
        return self.cy + u * s + v * c, self.cx + u * c - v * s


@dataclass
class _Window:
    """The scene window covering a frame, with every pixel's frame coordinates u, v."""

    y0: int
    y1: int
    x0: int
    x1: int
    u: np.ndarray
    v: np.ndarray

    def of(self, array: np.ndarray) -> np.ndarray:
        return array[self.y0 : self.y1, self.x0 : self.x1]


def _window(ctx: _Ctx, f: _Frame) -> _Window | None:
    c, s = math.cos(f.angle), math.sin(f.angle)
    ext_x = abs(f.half_u * c) + abs(f.half_v * s)
    ext_y = abs(f.half_u * s) + abs(f.half_v * c)
    x0, x1 = max(0, int(f.cx - ext_x) - 1), min(ctx.w, int(f.cx + ext_x) + 2)
    y0, y1 = max(0, int(f.cy - ext_y) - 1), min(ctx.h, int(f.cy + ext_y) + 2)
    if x0 >= x1 or y0 >= y1:
        return None
    ys, xs = _grid(y1 - y0, x1 - x0, y0, x0)
    dx, dy = xs - F32(f.cx), ys - F32(f.cy)
    return _Window(y0, y1, x0, x1, dx * F32(c) + dy * F32(s), dy * F32(c) - dx * F32(s))


@dataclass
class _Hood:
    """A neighbourhood's street grid: blocks of two rows of lots, back to back."""

    street_w: float
    block_u: float
    block_v: float
    lots_per_block: int
    n_bu: int
    n_bv: int

    @property
    def lot_w(self) -> float:
        return (self.block_u - self.street_w) / self.lots_per_block

    @property
    def depth(self) -> float:
        return self.block_v - self.street_w


def _lot_validity(ctx: _Ctx, shore: _ShoreDistance, f: _Frame, g: _Hood) -> tuple[np.ndarray, np.ndarray]:
    """Per lot (block u, block v, row, lot): can it be built (inside, on rural land, dry, clear of roads)?"""
    bu, bv, row, li = np.meshgrid(
        np.arange(g.n_bu), np.arange(g.n_bv), np.arange(2), np.arange(g.lots_per_block), indexing="ij"
    )
    lot_u = bu * g.block_u + g.street_w + (li + 0.5) * g.lot_w - f.half_u
    lot_v = bv * g.block_v + g.street_w + np.where(row == 1, 0.75, 0.25) * g.depth - f.half_v
    ly, lx = f.to_image(lot_u, lot_v)
    inside = (lot_u / f.half_u) ** 4 + (lot_v / f.half_v) ** 4 < 0.85
    on_scene = (ly >= 0) & (ly < ctx.h) & (lx >= 0) & (lx < ctx.w)
    iy, ix = np.clip(ly.astype(int), 0, ctx.h - 1), np.clip(lx.astype(int), 0, ctx.w - 1)
    valid = inside & on_scene & _IS_RURAL[ctx.mat[iy, ix]] & (shore.at(ly, lx) > 30)
    for road in ctx.all_roads():
        dist, width = road.distance(ly.astype(F32), lx.astype(F32))
        valid &= np.abs(dist) > width / 2 + 22
    return valid.ravel(), bu.ravel()


def _neighbourhood(ctx: _Ctx, rng: np.random.Generator, shore: _ShoreDistance, f: _Frame) -> None:
    """Streets, houses with garages, driveways and sheds, sidewalks, the odd commercial block or building site."""
    street_w = rng.uniform(7.0, 9.0)
    block_u, block_v = rng.uniform(150, 260), rng.uniform(80, 105)
    g = _Hood(
        street_w=street_w,
        block_u=block_u,
        block_v=block_v,
        lots_per_block=max(2, round((block_u - street_w) / rng.uniform(20, 34))),
        n_bu=int(2 * f.half_u / block_u) + 1,
        n_bv=int(2 * f.half_v / block_v) + 1,
    )
    win = _window(ctx, f)
    if win is None:
        return
    valid, lot_bu = _lot_validity(ctx, shore, f, g)

    # per pixel: block, position in the block, lot, position in the lot
    u, v = win.u + F32(f.half_u), win.v + F32(f.half_v)
    iu, iv = np.floor(u / F32(g.block_u)), np.floor(v / F32(g.block_v))
    s = u - iu * F32(g.block_u) - F32(g.street_w)  # along the block, from its street corner
    r = v - iv * F32(g.block_v) - F32(g.street_w)  # across the block
    del u, v
    in_hood = np.square(np.square(win.u / F32(f.half_u))) + np.square(np.square(win.v / F32(f.half_v))) < 1
    street = in_hood & ((r < 0) | (s < 0))
    back_row = r >= g.depth / 2
    d = np.where(back_row, F32(g.depth) - r, r)  # distance from the lot's street edge
    li = np.clip((s / F32(g.lot_w)).astype(np.int32), 0, g.lots_per_block - 1)
    along = s - (li + F32(0.5)) * F32(g.lot_w)  # along the street, from the lot centre
    block = np.clip(iu.astype(np.int32), 0, g.n_bu - 1) * g.n_bv + np.clip(iv.astype(np.int32), 0, g.n_bv - 1)
    lot = (block * 2 + back_row) * g.lots_per_block + li
    in_lot = in_hood & ~street & valid[lot]
    del iu, iv, li

    mat, dsm = win.of(ctx.mat), win.of(ctx.dsm)
    mat[street & _IS_RURAL[mat]] = mid(Mat.ROAD, int(rng.integers(0, VARIANTS)))
    commercial = rng.random(g.n_bu * g.n_bv) < 0.1
    comm_px = in_lot & commercial[block]
    options = _LotOptions(building=rng.random() < 0.2, sidewalks=rng.random() < 0.5)
    lots = _LotGeometry(lot, d, along, g.lot_w, lot_bu, valid.size)
    _lots(rng, mat, dsm, in_lot & ~comm_px, geo=lots, opt=options)
    blocks = _BlockGeometry(s, r, block, (g.block_u - g.street_w, g.depth), g.n_bu * g.n_bv)
    _commercial(rng, mat, dsm, comm_px, blocks)


@dataclass
class _LotGeometry:
    lot: np.ndarray  # per pixel: lot index
    d: np.ndarray  # per pixel: distance from the street edge
    along: np.ndarray  # per pixel: along the street from the lot centre
    lot_w: float
    lot_bu: np.ndarray  # per lot: block column (building sites grow from one side)
    n: int  # number of lots


@dataclass
class _LotOptions:
    building: bool  # part of the neighbourhood is still a building site
    sidewalks: bool


def _lots(
    rng: np.random.Generator, mat: np.ndarray, dsm: np.ndarray, px: np.ndarray, *, geo: _LotGeometry, opt: _LotOptions
) -> None:
    """Houses on lots: every parameter is drawn per lot, then gathered per pixel."""
    n, lot_w = geo.n, geo.lot_w
    hw = np.minimum(rng.uniform(10, 19, n), lot_w - 6).astype(F32)
    hd = rng.uniform(8, 14, n).astype(F32)
    setback = rng.uniform(7, 14, n).astype(F32)
    jx = (rng.uniform(-1, 1, n) * np.maximum(lot_w - hw - 8, 0) / 2).astype(F32)
    side = rng.choice(np.array([-1, 1], F32), n)
    garage = rng.random(n) < 0.55
    roof = _ROOF_BASES[rng.choice(5, n, p=_ROOF_SHARE)] * VARIANTS + rng.integers(0, VARIANTS, n)
    hip = rng.random(n) < 0.35
    eave = rng.choice(np.array([3.2, 5.8], F32), n, p=[0.4, 0.6])
    pitch = rng.uniform(0.35, 0.65, n).astype(F32)
    drive_mat = np.where(rng.random(n) < 0.7, mid(Mat.CONCRETE), mid(Mat.PAVEMENT)) + rng.integers(0, VARIANTS, n)
    lawn_mat = mid(Mat.LAWN) + rng.integers(0, VARIANTS - 1, n)
    shed = rng.random(n) < 0.3
    shed_x = rng.uniform(-1, 1, n).astype(F32) * F32(lot_w / 2 - 4)
    car = rng.random(n) < 0.45
    car_mat = mid(Mat.VEHICLE) + rng.integers(0, VARIANTS, n)
    occupied = rng.random(n) < 0.94
    site = np.zeros(n, bool)
    if opt.building:  # a building site grows from one side: bare soil, some houses going up
        site = geo.lot_bu >= rng.uniform(0.5, 0.9) * geo.lot_bu.max()
        occupied &= ~site | (rng.random(n) < 0.4)
    walk_mat = mid(Mat.CONCRETE, int(rng.integers(0, VARIANTS)))

    L = geo.lot[px]
    dd, ss = geo.d[px], geo.along[px] - jx[L]
    w2, d2 = hw[L] / 2, hd[L] / 2
    dc = setback[L] + d2
    built = occupied[L]
    house = built & (np.abs(ss) < w2) & (np.abs(dd - dc) < d2)
    gx = side[L] * (w2 + 3.2)
    has_garage = built & garage[L]
    garage_px = has_garage & (np.abs(ss - gx) < 3.2) & (dd > setback[L] + 1) & (dd < setback[L] + 7.5)
    drive_x = np.where(has_garage, gx, side[L] * (w2 + 1.8))
    drive_w = np.where(has_garage, F32(2.7), F32(1.6))
    drive_end = np.where(has_garage, setback[L] + 1, setback[L] + hd[L] * 0.7)
    drive = built & (np.abs(ss - drive_x) < drive_w) & (dd < drive_end)
    parked = drive & car[L] & (np.abs(ss - drive_x) < 1.0) & (np.abs(dd - drive_end + 3.5) < 2.2)
    shed_px = built & shed[L] & (np.abs(geo.along[px] - shed_x[L]) < 1.6) & (np.abs(dd - dc - d2 - 7) < 2.0)

    ground = np.where(site[L], mid(Mat.BARE_SOIL, 2), lawn_mat[L]).astype(np.uint8)
    ground[(dd < 2.0) & ~site[L]] = mid(Mat.LAWN, VARIANTS - 1)  # tree lawn between curb and sidewalk
    values = np.select(
        [house, garage_px, shed_px, parked, drive],
        [roof[L], roof[L], mid(Mat.ROOF_METAL, 3), car_mat[L], drive_mat[L]],
        ground,
    ).astype(np.uint8)
    if opt.sidewalks:
        values[(dd > 2.2) & (dd < 3.2) & ~house] = walk_mat
    mat[px] = values

    # roofs: gable ridges along the long side, or hips; garages, sheds and cars low
    across = np.abs(dd - dc)
    gable = np.where(hw[L] >= hd[L], d2 - across, w2 - np.abs(ss))
    hipped = np.minimum(d2 - across, w2 - np.abs(ss))
    roof_h = eave[L] + pitch[L] * np.maximum(np.where(hip[L], hipped, gable), 0)
    garage_h = 2.8 + 0.5 * (3.2 - np.abs(ss - gx))
    dsm[px] = np.select([house, garage_px, shed_px, parked], [roof_h, garage_h, F32(2.3), F32(1.5)], F32(0))


@dataclass
class _BlockGeometry:
    s: np.ndarray  # per pixel: along the block from its corner
    r: np.ndarray  # per pixel: across the block
    block: np.ndarray  # per pixel: block index
    size: tuple[float, float]
    n: int  # number of blocks


def _commercial(
    rng: np.random.Generator, mat: np.ndarray, dsm: np.ndarray, px: np.ndarray, geo: _BlockGeometry
) -> None:
    """A block with a big flat-roofed building in a parking lot: stall lines, parked cars, planted edges."""
    if not px.any():
        return
    su, sv = geo.size
    n_blocks = geo.n
    bw = rng.uniform(0.25, 0.6, n_blocks) * su
    bd = rng.uniform(0.3, 0.55, n_blocks) * sv
    bx = rng.uniform(0.2, 0.8, n_blocks) * su
    height = rng.uniform(6, 13, n_blocks).astype(F32)
    roof = mid(Mat.ROOF_FLAT) + rng.integers(0, VARIANTS, n_blocks)
    fill = rng.uniform(0.3, 0.8, n_blocks)
    B = geo.block[px]
    s, r = geo.s[px], geo.r[px]
    bldg = (np.abs(s - bx[B]) < bw[B] / 2) & (np.abs(r - sv * 0.6) < bd[B] / 2)
    edge = (s < 3) | (r < 3) | (s > su - 3) | (r > sv - 3)
    in_row = np.mod(r, 18.0)
    stall_row = (in_row < 5.5) | (in_row > 12.5)
    stall = stall_row & (np.mod(s, 2.8) < 0.9)
    # a car in a stall: 2 px wide, 4 px long; which stalls are taken is a hash of the stall position
    stall_id = np.floor(s / 2.8).astype(np.int64)
    row_id = np.floor(r / 6.0).astype(np.int64)
    taken = _hash01(stall_id, row_id, B) < fill[B]
    in_stall = np.mod(s, 2.8)
    car = stall_row & ~stall & taken & (in_stall > 0.9) & (in_stall < 2.7) & (np.abs(np.mod(in_row + 3, 18) - 3) > 0.6)
    car_mat = mid(Mat.VEHICLE) + (_hash01(stall_id, row_id, B, B) * VARIANTS).astype(np.uint8)
    values = np.select(
        [bldg, edge, car, stall],
        [roof[B], mid(Mat.LAWN, VARIANTS - 1), car_mat, mid(Mat.PAVEMENT_MARK, 5)],
        mid(Mat.PAVEMENT, 2),
    ).astype(np.uint8)
    units = bldg & (np.mod(s, 17.0) < 2.5) & (np.mod(r, 13.0) < 2.5)  # rooftop units
    values[units] = mid(Mat.ROOF_METAL, 6)
    mat[px] = values
    dsm[px] = np.select([bldg, car], [height[B] + np.where(units, F32(1.5), F32(0)), F32(1.5)], F32(0))


def _stamp(
    ctx: _Ctx,
    f: _Frame,
    material: int,
    *,
    height: float = 0.0,
    pitch: float = 0.0,
    where: np.ndarray | None = None,
) -> None:
    """A rotated rectangle of one material; with a height, a roof (gable ridge along u when pitched)."""
    win = _window(ctx, f)
    if win is None:
        return
    mat = win.of(ctx.mat)
    inside = (np.abs(win.u) < f.half_u) & (np.abs(win.v) < f.half_v)
    if where is not None:
        inside &= where[mat]
    mat[inside] = material
    if height:
        roof = F32(height) + F32(pitch) * np.maximum(F32(f.half_v) - np.abs(win.v), 0)
        win.of(ctx.dsm)[inside] = roof[inside]


def _site_ok(
    ctx: _Ctx, shore: _ShoreDistance, y: float, x: float, *, clearance: float, open_only: bool = False
) -> bool:
    """Whether (y, x) is rural land (open land: not woods) at least `clearance` from water."""
    if not (0 <= y < ctx.h and 0 <= x < ctx.w):
        return False
    here = ctx.mat[int(y), int(x)]
    if not (_IS_OPEN if open_only else _IS_RURAL)[here]:
        return False
    return bool(shore.at(np.array([y]), np.array([x]))[0] > clearance)


def _offset(y: float, x: float, angle: float, along: float, out: float) -> tuple[float, float]:
    """The point `along` the direction `angle` and `out` to its left (image coordinates)."""
    return y + along * math.sin(angle) + out * math.cos(angle), x + along * math.cos(angle) - out * math.sin(angle)


def _strip_malls(ctx: _Ctx, shore: _ShoreDistance) -> None:
    """Shops along main roads: a parking lot with stalls and cars in front, a flat-roofed building behind."""
    rng = _rng(ctx.seed, "malls")
    for road in ctx.roads:
        for _ in range(int(rng.poisson(0.8 * math.sqrt(ctx.area_km2)))):
            y, x, angle = road.point(rng.uniform(0.25, 0.75))
            side = rng.choice([-1, 1])
            lot_d, bldg_d, length = rng.uniform(25, 50), rng.uniform(18, 35), rng.uniform(50, 140)
            near = float(road.width[len(road.width) // 2]) / 2 + 6
            py, px = _offset(y, x, angle, 0, side * (near + lot_d / 2))
            if not _site_ok(ctx, shore, py, px, clearance=40):
                continue
            lot = mid(Mat.PAVEMENT, int(rng.integers(0, VARIANTS)))
            _stamp(ctx, _Frame(py, px, angle, length / 2, lot_d / 2), lot, where=_IS_RURAL)
            for k in np.arange(-length / 2 + 3, length / 2 - 2, 2.8):
                for row in (-1, 1):  # two rows of stalls facing the middle aisle
                    sy, sx = _offset(py, px, angle, k, side * row * (lot_d / 2 - 5))
                    _stamp(ctx, _Frame(sy, sx, angle, 0.45, 2.6), mid(Mat.PAVEMENT_MARK, 5), where=_IS_PAVEMENT)
                    if rng.random() < 0.45:
                        cy, cx = _offset(py, px, angle, k + 1.4, side * row * (lot_d / 2 - 5))
                        car = mid(Mat.VEHICLE, int(rng.integers(0, 8)))
                        _stamp(ctx, _Frame(cy, cx, angle, 0.9, 2.2), car, height=1.5, where=_IS_PAVEMENT)
            by, bx = _offset(y, x, angle, 0, side * (near + lot_d + bldg_d / 2))
            roof = mid(Mat.ROOF_FLAT, int(rng.integers(0, VARIANTS)))
            _stamp(ctx, _Frame(by, bx, angle, length / 2, bldg_d / 2), roof, height=rng.uniform(5, 9), where=_IS_RURAL)


def _farmsteads(ctx: _Ctx, shore: _ShoreDistance) -> None:
    """Farmhouses with barns, a dirt yard, a lawn and a lane, along roads."""
    rng = _rng(ctx.seed, "farms")
    for road in ctx.all_roads():
        for _ in range(int(rng.poisson(1.0 * math.sqrt(ctx.area_km2)))):
            y, x, angle = road.point(rng.uniform(0.2, 0.8))
            side = rng.choice([-1, 1])
            dist = float(road.width[0]) / 2 + rng.uniform(25, 45)
            fy, fx = _offset(y, x, angle, 0, side * dist)
            if not _site_ok(ctx, shore, fy, fx, clearance=50):
                continue
            _stamp(ctx, _Frame(fy, fx, angle, 45, 35), mid(Mat.LAWN, int(rng.integers(0, 6))), where=_IS_RURAL)
            yy, yx = _offset(fy, fx, angle, 0, side * 30)
            yard = mid(Mat.BARE_SOIL, int(rng.integers(0, VARIANTS)))
            _stamp(ctx, _Frame(yy, yx, angle, 28, 18), yard, where=_IS_RURAL)
            ly, lx = _offset(y, x, angle, 0, side * dist / 2)
            _stamp(ctx, _Frame(ly, lx, angle + math.pi / 2, dist / 2, 1.8), mid(Mat.BARE_SOIL, 1), where=_IS_RURAL)
            roof = mid(_ROOF_BASES[int(rng.choice(3, p=[0.6, 0.1, 0.3]))], int(rng.integers(0, VARIANTS)))
            _stamp(
                ctx,
                _Frame(fy, fx, angle, rng.uniform(6, 9), rng.uniform(4.5, 6.5)),
                roof,
                height=5.5,
                pitch=0.55,
                where=_IS_RURAL,
            )
            for k in range(int(rng.integers(1, 4))):
                by, bx = _offset(fy, fx, angle, k * 22 - 22, side * (28 + 6 * k))
                barn = _Frame(by, bx, angle + rng.normal(0, 0.03), rng.uniform(8, 16), rng.uniform(5, 9))
                metal = mid(Mat.ROOF_METAL, int(rng.integers(0, VARIANTS)))
                _stamp(ctx, barn, metal, height=4.5, pitch=0.35, where=_FARMYARD)


def _barren_sites(ctx: _Ctx, shore: _ShoreDistance) -> None:
    """Construction sites, borrow pits, bare lots on open land: irregular bare soil, tracks, spoil heaps."""
    rng = _rng(ctx.seed, "barren")
    n = ctx.count(rng, 1.0, minimum=1 if ctx.area_km2 >= 0.5 else 0)
    for _ in range(n * 6):
        if n <= 0:
            break
        y, x = rng.uniform(0, ctx.h), rng.uniform(0, ctx.w)
        if not _site_ok(ctx, shore, y, x, clearance=40, open_only=True):
            continue
        n -= 1
        r = rng.uniform(25, 60)
        win = _window(ctx, _Frame(y, x, rng.uniform(0, math.pi), r * 1.6, r * 1.6))
        if win is None:
            continue
        mask = np.zeros((win.y1 - win.y0, win.x1 - win.x0), np.uint8)
        _blob(mask, 1, rng, centre=(y - win.y0, x - win.x0), r=r, ecc=rng.uniform(1.0, 1.6))
        mat = win.of(ctx.mat)
        inside = (mask > 0) & _IS_RURAL[mat]
        mat[inside] = mid(Mat.BARE_SOIL, int(rng.integers(0, VARIANTS)))
        _site_texture(rng, ctx, win, inside)


def _site_texture(rng: np.random.Generator, ctx: _Ctx, win: _Window, inside: np.ndarray) -> None:
    """Graded patches, wheel tracks and spoil heaps (heaps get shading and shadows from the surface model)."""
    h, w = inside.shape
    rows = win.of(ctx.rows)
    patches = _field(rng, h, w, 4, ((10, 0.6), (35, 1.0))).window(0, h, 0, w)
    rows[inside] = F32(0.09) * patches[inside]
    for _ in range(int(rng.integers(2, 5))):
        a, spacing = rng.uniform(0, math.pi), rng.uniform(9, 30)
        along = win.u * F32(math.cos(a)) + win.v * F32(math.sin(a))
        across = win.v * F32(math.cos(a)) - win.u * F32(math.sin(a))
        across += F32(rng.uniform(2, 8)) * np.sin(along / F32(rng.uniform(25, 60)))
        track = inside & (np.abs(np.mod(across, spacing) - spacing / 2) < 0.9) & (np.abs(across) < rng.uniform(10, 50))
        rows[track] -= F32(0.12)
    dsm = win.of(ctx.dsm)
    for _ in range(int(rng.integers(0, 6))):
        cu, cv, r, top = rng.uniform(-25, 25), rng.uniform(-25, 25), rng.uniform(2, 6), rng.uniform(1, 3)
        heap = np.maximum(1 - ((win.u - F32(cu)) ** 2 + (win.v - F32(cv)) ** 2) / F32(r * r), 0) * F32(top)
        np.maximum(dsm, np.where(inside, heap, F32(0)), out=dsm)


# --- vegetation structure: crowns and shrubs ---------------------------------------------------------------


@dataclass
class _Crowns:
    """One crown candidate per cell: jittered centre, radius, top height, spectral variant (padded by 1 cell)."""

    cell: int
    present: np.ndarray  # (ny, nx) bool
    jy: np.ndarray
    jx: np.ndarray
    radius: np.ndarray
    base: np.ndarray  # top - radius: where the crown's spheroid starts
    inv_r2: np.ndarray  # 1 / radius^2, huge where no crown (so no pixel is inside it)
    variant: np.ndarray


def _plan_crowns(
    rng: np.random.Generator, density: np.ndarray, cell: int, radius: tuple[float, float], top: tuple[float, float]
) -> _Crowns:
    shape = density.shape
    present = rng.random(shape) < density
    rad = rng.uniform(*radius, shape)
    tops = rng.uniform(*top, shape)

    def pad(a: np.ndarray, dtype: type = F32, fill: float = 0) -> np.ndarray:
        return np.pad(a.astype(dtype), 1, constant_values=fill)

    return _Crowns(
        cell=cell,
        present=present,
        jy=pad(rng.uniform(0.15, 0.85, shape) * cell),
        jx=pad(rng.uniform(0.15, 0.85, shape) * cell),
        radius=pad(rad),
        base=pad(tops - rad),
        inv_r2=pad(np.where(present, 1.0 / rad**2, 1e6), fill=1e6),
        variant=pad(rng.integers(0, VARIANTS, shape), np.uint8),
    )


def _crown_block(c: _Crowns, r0: int, r1: int, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray]:
    """Crown surface height (m, -1 outside crowns) and variant over cell rows r0:r1, columns c0:c1.

    The pixels are viewed as (rows, cell, cols, cell) blocks, so every neighbour-cell offset is a broadcast.
    """
    ny, nx, k = r1 - r0, c1 - c0, c.cell
    ly = (np.arange(k, dtype=F32) + F32(0.5))[None, :, None, None]
    lx = (np.arange(k, dtype=F32) + F32(0.5))[None, None, None, :]
    best = np.full((ny, k, nx, k), -1.0, F32)
    best_var = np.zeros((ny, k, nx, k), np.uint8)
    for oy in (-1, 0, 1):
        for ox in (-1, 0, 1):
            if not c.present[max(r0 + oy, 0) : r1 + oy, max(c0 + ox, 0) : c1 + ox].any():
                continue
            window = (slice(1 + r0 + oy, 1 + r1 + oy), slice(1 + c0 + ox, 1 + c1 + ox))
            jy, jx, inv_r2, radius, base, variant = (
                a[window].reshape(ny, 1, nx, 1) for a in (c.jy, c.jx, c.inv_r2, c.radius, c.base, c.variant)
            )
            q = (jy + F32(oy * k) - ly) ** 2 + (jx + F32(ox * k) - lx) ** 2
            q *= inv_r2
            np.subtract(1, q, out=q)
            inside = q > 0
            np.sqrt(np.maximum(q, 0, out=q), out=q)
            q *= radius
            q += base
            q[~inside] = -1
            better = q > best
            np.copyto(best, q, where=better)
            np.copyto(best_var, np.broadcast_to(variant, best_var.shape), where=better)
    return best.reshape(ny * k, nx * k), best_var.reshape(ny * k, nx * k)


def _cell_density(mat: np.ndarray, cell: int, lut: np.ndarray) -> np.ndarray:
    """Crown chance per cell, read from the material at each cell centre."""
    h, w = mat.shape
    ys = np.minimum(np.arange(cell // 2, -(-h // cell) * cell, cell), h - 1)
    xs = np.minimum(np.arange(cell // 2, -(-w // cell) * cell, cell), w - 1)
    return lut[mat[ys[:, None], xs[None, :]]]


def _grow(
    ctx: _Ctx, rng: np.random.Generator, crowns: _Crowns, *, base: Mat, under: np.ndarray, bumps: float, tile: int = 64
) -> None:
    """Write crowns into the scene tile by tile: where a crown covers an allowed material, it becomes `base`."""
    ny, nx = crowns.present.shape
    k = crowns.cell
    for r0 in range(0, ny, tile):
        for c0 in range(0, nx, tile):
            r1, c1 = min(ny, r0 + tile), min(nx, c0 + tile)
            if not crowns.present[max(r0 - 1, 0) : r1 + 1, max(c0 - 1, 0) : c1 + 1].any():
                continue
            top, variant = _crown_block(crowns, r0, r1, c0, c1)
            y0, x0 = r0 * k, c0 * k
            y1, x1 = min(ctx.h, r1 * k), min(ctx.w, c1 * k)
            top, variant = top[: y1 - y0, : x1 - x0], variant[: y1 - y0, : x1 - x0]
            top += F32(bumps) * rng.standard_normal(top.shape, dtype=F32)  # leaf clumps: crown texture
            mat = ctx.mat[y0:y1, x0:x1]
            covered = (top > min(1.0, bumps * 2)) & under[mat]
            mat[covered] = mid(base) + variant[covered]
            np.copyto(ctx.dsm[y0:y1, x0:x1], top, where=covered)


_TREE_DENSITY = _lut(
    {Mat.FOREST_FLOOR: 0.96, Mat.LAWN: 0.13, Mat.MEADOW: 0.008, Mat.SHRUB_GROUND: 0.05, Mat.MARSH: 0.004}
)
_TREE_DENSITY[mid(Mat.LAWN, VARIANTS - 1)] = 0.55  # street trees
_TREE_DENSITY[mid(Mat.MEADOW, 1)] = 0.0  # road verges are mown
_UNDER_CROWNS = _lut(
    dict.fromkeys(
        (Mat.FOREST_FLOOR, Mat.LAWN, Mat.MEADOW, Mat.SHRUB_GROUND, Mat.MARSH, Mat.CROP, Mat.ROAD, Mat.CONCRETE), 1
    ),
    dtype=bool,
)
_SHRUB_DENSITY = _lut({Mat.SHRUB_GROUND: 0.6, Mat.MARSH: 0.04})  # not in meadows: sparse tiles cost as much as full
_UNDER_SHRUBS = _lut(dict.fromkeys((Mat.SHRUB_GROUND, Mat.MEADOW, Mat.MARSH), 1), dtype=bool)


def _trees(ctx: _Ctx) -> None:
    rng = _rng(ctx.seed, "trees")
    crowns = _plan_crowns(rng, _cell_density(ctx.mat, 6, _TREE_DENSITY), 6, radius=(2.6, 5.2), top=(12.0, 26.0))
    _grow(ctx, rng, crowns, base=Mat.TREE, under=_UNDER_CROWNS, bumps=0.5)


def _shrubs(ctx: _Ctx) -> None:
    rng = _rng(ctx.seed, "shrubs")
    crowns = _plan_crowns(rng, _cell_density(ctx.mat, 4, _SHRUB_DENSITY), 4, radius=(1.0, 2.6), top=(1.2, 4.0))
    _grow(ctx, rng, crowns, base=Mat.SHRUB, under=_UNDER_SHRUBS, bumps=0.15, tile=48)


# --- rendering ---------------------------------------------------------------------------------------------

_DIFFUSE = np.array([0.22, 0.24, 0.34, 0.3], F32)  # skylight share per band: what is left in shadow
_HALO = 4  # rows of context around a strip for the PSF, texture and gradients


def _sun(shift: Shift) -> tuple[float, float, float]:
    """(dy, dx, tan elevation): unit image step towards the sun (y grows southwards)."""
    az = math.radians(shift.sun_azimuth)
    return -math.cos(az), math.sin(az), math.tan(math.radians(shift.sun_elevation))


def _direct_light(dsm: np.ndarray, row_max: np.ndarray, ya: int, yb: int, shift: Shift) -> np.ndarray:
    """Direct sunlight on rows ya:yb relative to flat open ground: hill-shaded crowns and roofs, 0 in shadow."""
    h = dsm.shape[0]
    sy, sx, tan_el = _sun(shift)
    el = math.radians(shift.sun_elevation)
    g0, g1 = max(0, ya - 1), min(h, yb + 1)
    gy, gx = np.gradient(dsm[g0:g1]) if g1 - g0 > 1 else (np.zeros_like(dsm[g0:g1]),) * 2
    gy, gx = gy[ya - g0 : yb - g0], gx[ya - g0 : yb - g0]
    np.clip(gy, -3, 3, out=gy)
    np.clip(gx, -3, 3, out=gx)
    # normal (-gx, -gy, 1)/|n| . sun (cos(el) sx, cos(el) sy, sin(el)), relative to flat ground (/ sin(el))
    light = gx * F32(-sx / math.tan(el)) - gy * F32(sy / math.tan(el))
    light += 1
    light /= np.sqrt(1 + gx * gx + gy * gy)
    np.clip(light, 0, 2.0, out=light)
    light *= 1 - _cast_shadow(dsm, row_max, ya, yb, sun=(sy, sx, tan_el))
    return light


def _cast_shadow(
    dsm: np.ndarray, row_max: np.ndarray, ya: int, yb: int, *, sun: tuple[float, float, float]
) -> np.ndarray:
    """Soft shadow on rows ya:yb: shaded where the surface towards the sun rises above the sun ray."""
    h, w = dsm.shape
    sy, sx, tan_el = sun
    shadow = np.zeros((yb - ya, w), bool)
    reach = math.ceil(float(row_max.max()) / max(tan_el, 0.05)) + 1
    seen = set()
    for t in range(1, reach + 1):
        oy, ox = round(t * sy), round(t * sx)
        r0, r1 = max(ya, -oy), min(yb, h - oy)
        c0, c1 = max(0, -ox), min(w, w - ox)
        if (oy, ox) in seen or r0 >= r1 or c0 >= c1:
            continue
        seen.add((oy, ox))
        drop = F32(math.hypot(oy, ox) * tan_el + 0.3)
        if row_max[r0 + oy : r1 + oy].max() <= drop:  # nothing there is tall enough to reach this far
            continue
        src = dsm[r0 + oy : r1 + oy, c0 + ox : c1 + ox]
        shadow[r0 - ya : r1 - ya, c0:c1] |= (src - drop) > dsm[r0:r1, c0:c1]
    return ndi.uniform_filter(shadow.astype(F32), 2)


def _mix(layout: _Layout, ya: int, yb: int) -> np.ndarray:
    """Endmember blend for rows ya:yb: patchy on land; in water, how much of the bottom shows (shallows)."""
    w = layout.mat.shape[1]
    mix = layout.mix.window(ya, yb, 0, w)
    mix *= F32(0.3)
    mix += F32(0.5)
    np.clip(mix, 0, 1, out=mix)
    water = _base(layout.mat[ya:yb]) == Mat.WATER
    if water.any():
        depth = layout.shore.in_water(ya, yb)[water]
        plumes = (mix[water] - F32(0.5)) * F32(0.5)  # sediment and algae drift
        mix[water] = np.clip(np.clip(1 - depth / 6, 0, 1) * F32(0.6) + plumes, 0, 1)
    return mix


def _render(layout: _Layout, seed: int, shift: Shift) -> np.ndarray:
    h, w = layout.mat.shape
    table = material_table(seed, round(float(shift.season), 6))
    lut = dn_lut(shift.gain, shift.offset, shift.haze)
    diffuse = np.clip(_DIFFUSE + F32(0.15 * shift.haze), 0, 1)
    row_max = layout.dsm.max(axis=1)
    scale = F32((LUT_SIZE - 1) / LUT_MAX_REFLECTANCE)
    image = np.empty((4, h, w), np.uint8)
    for k, (y0, y1) in enumerate(_strips(h)):
        ya, yb = max(0, y0 - _HALO), min(h, y1 + _HALO)
        mat = layout.mat[ya:yb]
        texture = ndi.gaussian_filter(np.random.default_rng([seed, 0x7E87, k]).standard_normal((yb - ya, w), F32), 0.8)
        shade = table.texture[mat] * texture * F32(1 / 0.35)  # the blur leaves texture with std ~0.35
        del texture
        shade += 1
        shade += layout.rows[ya:yb]
        light = _direct_light(layout.dsm, row_max, ya, yb, shift)
        mix = _mix(layout, ya, yb)
        noise = np.random.default_rng([seed, 0xA015E, k])
        for band in range(4):
            a = table.a[:, band][mat]
            refl = table.b[:, band][mat]
            refl -= a
            refl *= mix
            refl += a
            refl *= shade
            refl *= F32(diffuse[band]) + F32(1 - diffuse[band]) * light
            if shift.blur > 0:
                refl = ndi.gaussian_filter(refl, shift.blur, truncate=2.5)
            refl = refl[y0 - ya : y1 - ya]
            refl *= scale
            np.clip(refl, 0, LUT_SIZE - 1, out=refl)
            dn = lut[band][refl.astype(np.int32)]
            dn += noise.standard_normal(dn.shape, F32) * F32(shift.noise_dn)
            np.clip(dn + F32(0.5), 0, 255, out=dn)
            image[band, y0:y1] = dn.astype(np.uint8)
    return image
