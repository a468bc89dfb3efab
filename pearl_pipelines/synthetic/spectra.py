"""Material reflectance for synthetic NAIP-like scenes, from the earthlib spectral library.

earthlib (MIT) holds 7,261 labelled spectra (0.40-2.45 um, 10 nm steps): ICRAF/ISRIC soils, Santa Barbara
urban materials, JFSP/SpecEvo non-photosynthetic vegetation, PROSAIL-simulated canopies (LAI and chlorophyll in
the spectrum name). Each spectrum is averaged over the NAIP band ranges; a material samples members of its
group, so two roofs or two fields differ the way real materials do. Water is not in earthlib: literature
values for inland/estuarine water are used.

A scene's material map holds ids `base * VARIANTS + variant`; `material_table` turns the ids into two
reflectance endmembers per id (a spatial mixing field blends them) for a given season.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

BANDS = ("red", "green", "blue", "nir")
NAIP_BANDS_NM = ((604.0, 664.0), (533.0, 587.0), (420.0, 492.0), (833.0, 885.0))
VARIANTS = 8  # spectral variants per base material (distinct roofs, crops, tree species)

# Remote-sensing reflectance of water (R, G, B, NIR); earthlib has none. Clear lake, turbid estuary
# (Chesapeake-like sediment), algal pond: low red, ~0.01 NIR.
WATER = {
    "clear": (0.010, 0.020, 0.025, 0.004),
    "turbid": (0.032, 0.042, 0.026, 0.010),
    "algal": (0.013, 0.032, 0.018, 0.006),
}

# Chesapeake 9-class order (assets/schemas/chesapeake9.json)
CHESAPEAKE9 = (
    "water",
    "emergent_wetlands",
    "tree_canopy",
    "shrubland",
    "low_vegetation",
    "barren",
    "structures",
    "impervious_surfaces",
    "impervious_roads",
)


class Mat(IntEnum):
    """Base materials of the scene; each has VARIANTS spectral variants and one Chesapeake class."""

    WATER = 0
    MARSH = 1
    TREE = 2
    FOREST_FLOOR = 3  # ground under/between crowns in a forest: mapped as canopy
    SHRUB = 4
    SHRUB_GROUND = 5  # grass between shrubs in shrubland
    LAWN = 6
    MEADOW = 7  # pasture, hay, field margins
    CROP = 8  # variant = crop state (green, stubble, tilled soil...)
    BARE_SOIL = 9
    SAND = 10
    ROOF_SHINGLE = 11
    ROOF_TILE = 12  # concrete and wood shingle tiles
    ROOF_METAL = 13
    ROOF_CLAY = 14
    ROOF_FLAT = 15  # commercial: gravel ballast, concrete, membrane
    ROAD = 16
    ROAD_MARK = 17  # lane lines: sub-pixel paint mixed with asphalt
    PAVEMENT = 18  # parking lots
    PAVEMENT_MARK = 19  # parking stall lines
    CONCRETE = 20  # driveways, sidewalks, slabs
    VEHICLE = 21  # parked cars: mapped as the pavement they stand on


MATERIAL_CLASS: dict[Mat, str] = {
    Mat.WATER: "water",
    Mat.MARSH: "emergent_wetlands",
    Mat.TREE: "tree_canopy",
    Mat.FOREST_FLOOR: "tree_canopy",
    Mat.SHRUB: "shrubland",
    Mat.SHRUB_GROUND: "shrubland",
    Mat.LAWN: "low_vegetation",
    Mat.MEADOW: "low_vegetation",
    Mat.CROP: "low_vegetation",
    Mat.BARE_SOIL: "barren",
    Mat.SAND: "barren",
    Mat.ROOF_SHINGLE: "structures",
    Mat.ROOF_TILE: "structures",
    Mat.ROOF_METAL: "structures",
    Mat.ROOF_CLAY: "structures",
    Mat.ROOF_FLAT: "structures",
    Mat.ROAD: "impervious_roads",
    Mat.ROAD_MARK: "impervious_roads",
    Mat.PAVEMENT: "impervious_surfaces",
    Mat.PAVEMENT_MARK: "impervious_surfaces",
    Mat.CONCRETE: "impervious_surfaces",
    Mat.VEHICLE: "impervious_surfaces",
}

# Amplitude of fine (1-2 m) brightness texture per base material
TEXTURE: dict[Mat, float] = {
    Mat.WATER: 0.015,
    Mat.MARSH: 0.16,
    Mat.TREE: 0.10,
    Mat.FOREST_FLOOR: 0.18,
    Mat.SHRUB: 0.10,
    Mat.SHRUB_GROUND: 0.12,
    Mat.LAWN: 0.05,
    Mat.MEADOW: 0.08,
    Mat.CROP: 0.06,
    Mat.BARE_SOIL: 0.08,
    Mat.SAND: 0.04,
    Mat.ROAD: 0.04,
    Mat.PAVEMENT: 0.04,
    Mat.CONCRETE: 0.03,
}


def mid(base: Mat | int, variant: int = 0) -> int:
    """Material id stored in a scene's material map."""
    return int(base) * VARIANTS + variant


def class_lut() -> np.ndarray:
    """(256,) uint8: material id -> chesapeake9 class index."""
    lut = np.zeros(256, dtype=np.uint8)
    for base, name in MATERIAL_CLASS.items():
        lut[mid(base) : mid(base) + VARIANTS] = CHESAPEAKE9.index(name)
    return lut


# --- earthlib --------------------------------------------------------------------------------------------


@functools.cache
def library_rgbn() -> tuple[np.ndarray, pd.DataFrame]:
    """All earthlib spectra averaged over the NAIP bands: ((n, 4) R,G,B,NIR reflectance, metadata).

    The metadata gains LAI/CHL (parsed from PROSAIL names like v-LAI-4.3-LMA-0.016-CHL-31.1-N-2.0) and NDVI.
    """
    import earthlib  # imported lazily: loads the 5 MB library

    lib = earthlib.full_library
    centers = np.asarray(lib.sensor.band_centers, dtype=np.float64)
    if lib.sensor.wavelength_unit.lower().startswith("micro"):
        centers = centers * 1000.0
    weights = np.stack([(centers >= lo - 1) & (centers <= hi + 1) for lo, hi in NAIP_BANDS_NM]).astype(np.float64)
    weights /= weights.sum(axis=1, keepdims=True)
    rgbn = np.asarray(lib.data, dtype=np.float64) @ weights.T

    meta = lib.metadata.copy()
    params = meta["NAME"].str.extract(r"LAI-([\d.]+)-LMA-[\d.]+-CHL-([\d.]+)").astype(float)
    meta["LAI"], meta["CHL"] = params[0].to_numpy(), params[1].to_numpy()
    meta["NDVI"] = (rgbn[:, 3] - rgbn[:, 0]) / np.maximum(rgbn[:, 3] + rgbn[:, 0], 1e-6)
    return rgbn.astype(np.float32), meta


@dataclass(frozen=True)
class Endmember:
    """A group of earthlib spectra that stands for one material."""

    name: str
    source: str  # which earthlib spectra, in words
    members: np.ndarray  # (n, 4) R, G, B, NIR reflectance

    @property
    def mean(self) -> np.ndarray:
        return self.members.mean(axis=0)

    @property
    def std(self) -> np.ndarray:
        return self.members.std(axis=0)

    def sample(self, rng: np.random.Generator, n: int, shrink: float = 0.7) -> np.ndarray:
        """n member spectra pulled towards the group mean (keeps outliers from dominating a scene)."""
        picks = self.members[rng.integers(0, len(self.members), n)]
        return (self.mean + shrink * (picks - self.mean)).astype(np.float32)


def _canopy(lai: tuple[float, float], chl: tuple[float, float]) -> Callable[[pd.DataFrame], pd.Series]:
    return lambda m: (m.LEVEL_3 == "canopy") & m.LAI.between(*lai) & m.CHL.between(*chl)


def _level3(*names: str, ndvi_max: float = 1.0) -> Callable[[pd.DataFrame], pd.Series]:
    return lambda m: m.LEVEL_3.isin(names) & m.NDVI.lt(ndvi_max)


# name -> (description, selector on the metadata)
_GROUPS: dict[str, tuple[str, Callable[[pd.DataFrame], pd.Series]]] = {
    "broadleaf": ("PROSAIL canopy, LAI 3.5-10, chlorophyll 35-60 ug/cm2", _canopy((3.5, 10), (35, 60))),
    "grass": ("PROSAIL canopy, LAI 1.5-3.5, chlorophyll 30-60", _canopy((1.5, 3.5), (30, 60))),
    "crop": ("PROSAIL canopy, LAI 3-10, chlorophyll 45-60", _canopy((3, 10), (45, 60))),
    "senescent": ("PROSAIL canopy, chlorophyll 10-18 (yellowing)", _canopy((0, 10), (0, 18))),
    "sparse": ("PROSAIL canopy, LAI < 1.2", _canopy((0, 1.2), (0, 60))),
    "litter": ("npv: litter + npv (dry grass, stubble, dead leaves)", _level3("litter", "npv")),
    "bark": ("npv: bark + wood (leaf-off branches)", _level3("bark", "wood")),
    "soil": (
        "bare soil (ICRAF-ISRIC), red 0.12-0.30, red/blue < 2.2 (brown, not iron-red), NDVI < 0.25",
        lambda m: (m.LEVEL_3 == "soil") & m.NDVI.lt(0.25) & m.R.between(0.12, 0.30) & (m.R < 2.2 * m.B),
    ),
    "sand": ("bare sand", _level3("sand")),
    "asphalt": (
        "built: road, asphalt, parking_lot; red < 0.2, NDVI < 0.1",
        lambda m: m.LEVEL_3.isin(["road", "asphalt", "parking_lot"]) & m.NDVI.lt(0.1) & m.R.lt(0.2),
    ),
    "concrete": ("built: sidewalk, driveway; NDVI < 0.08", _level3("sidewalk", "driveway", ndvi_max=0.08)),
    "shingle": ("built: comp_shingle, NDVI < 0.1", _level3("comp_shingle", ndvi_max=0.1)),
    "roof_tile": ("built: concrete_tile, wood_shingle", _level3("concrete_tile", "wood_shingle", ndvi_max=0.2)),
    "metal": ("built: metal, NDVI < 0.12", _level3("metal", ndvi_max=0.12)),
    "clay": ("built: tile (clay)", _level3("tile")),
    "flat_roof": ("built: gravel, bridge, mixed; NDVI < 0.1", _level3("gravel", "bridge", "mixed", ndvi_max=0.1)),
    "paint_white": (
        "built: paint, bright and neutral",
        lambda m: (m.LEVEL_3 == "paint") & (m.G > 0.3) & m.NDVI.lt(0.1) & (m.B > 0.7 * m.R),
    ),
    "paint": ("built: paint, all colours (car bodies)", _level3("paint")),
    "paint_yellow": (
        "built: paint, yellow (red > 1.5 blue)",
        lambda m: (m.LEVEL_3 == "paint") & (m.R > 0.25) & (m.R > 1.5 * m.B) & m.NDVI.lt(0.1),
    ),
}


@functools.cache
def endmembers() -> dict[str, Endmember]:
    """Material groups from earthlib, with water from the literature (cached per process)."""
    rgbn, meta = library_rgbn()
    frame = meta.assign(R=rgbn[:, 0], G=rgbn[:, 1], B=rgbn[:, 2], N=rgbn[:, 3])
    groups = {}
    for name, (source, select) in _GROUPS.items():
        mask = select(frame).to_numpy(dtype=bool)
        if not mask.any():
            raise RuntimeError(f"earthlib has no spectra for {name!r} ({source})")
        groups[name] = Endmember(name, source, rgbn[mask])
    for name, value in WATER.items():
        groups[f"water_{name}"] = Endmember(f"water_{name}", "literature", np.array([value], dtype=np.float32))
    return groups


# --- material table ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MaterialTable:
    a: np.ndarray  # (256, 4) float32 reflectance where the scene's mixing field is 0
    b: np.ndarray  # (256, 4) where it is 1
    texture: np.ndarray  # (256,) float32 fine-texture amplitude


def _lerp(x: np.ndarray, y: np.ndarray, t: float | np.ndarray) -> np.ndarray:
    return (x + (y - x) * t).astype(np.float32)


Pair = tuple[np.ndarray, np.ndarray]  # (VARIANTS, 4) endmembers a, b


def _trees(rng: np.random.Generator, em: dict[str, Endmember], season: float) -> Pair:
    summer = em["broadleaf"].sample(rng, VARIANTS) * np.array([0.8, 0.85, 0.85, 1.0], np.float32)
    # leaf-off: grey-brown branches over leaf litter, a few trees still holding yellow/brown leaves
    autumn = 0.55 * em["bark"].sample(rng, VARIANTS) + 0.25 * em["litter"].mean + 0.2 * em["senescent"].mean
    autumn = autumn * np.float32(0.8)
    conifer = np.arange(VARIANTS) >= VARIANTS - 2  # evergreen: darker, keeps its needles
    summer[conifer] *= np.array([0.72, 0.72, 0.8, 0.68], np.float32)
    change = np.where(conifer, 0.1, 1.0)[:, None] * season
    a = _lerp(summer, autumn, change)
    return a, a * np.array([0.85, 0.85, 0.9, 0.88], np.float32)


def _forest_floor(rng: np.random.Generator, em: dict[str, Endmember], season: float) -> Pair:
    floor = 0.5 * em["broadleaf"].sample(rng, VARIANTS) + 0.5 * em["litter"].mean
    a = _lerp(floor * np.float32(0.55), em["litter"].mean * np.float32(0.6), 0.8 * season)
    return a, a * np.float32(0.75)


def _shrub(rng: np.random.Generator, em: dict[str, Endmember], season: float) -> Pair:
    green = 0.7 * em["broadleaf"].sample(rng, VARIANTS) + 0.3 * em["sparse"].mean
    brown = 0.6 * em["bark"].mean + 0.4 * em["litter"].mean
    a = _lerp(green * np.float32(0.85), brown * np.float32(0.85), 0.85 * season)
    return a, _lerp(a, em["litter"].mean, 0.3)


def _grassy(rng: np.random.Generator, em: dict[str, Endmember], season: float, dry: float, dormant: float) -> Pair:
    """Grass with a fraction `dry` of dead material; `dormant` is how far autumn browns it."""
    green = em["grass"].sample(rng, VARIANTS)
    litter = em["litter"].sample(rng, VARIANTS, shrink=0.4)
    a = _lerp(green, litter, dry)
    a = _lerp(a, _lerp(green, litter, 0.75), dormant * season)
    return a, _lerp(a, litter, 0.3)


def _shrub_ground(rng: np.random.Generator, em: dict[str, Endmember], season: float) -> Pair:
    a, b = _grassy(rng, em, season, dry=0.45, dormant=0.8)
    return a, _lerp(b, em["soil"].mean, 0.2)


def _marsh(rng: np.random.Generator, em: dict[str, Endmember], season: float) -> Pair:
    # emergent marsh (Spartina, Phragmites): green to tan vegetation over wet mud and water
    veg = _lerp(em["grass"].sample(rng, VARIANTS), em["senescent"].mean, 0.45)
    veg = _lerp(veg, em["litter"].mean, 0.2)  # olive: last year's dead stems stand among the green
    veg = _lerp(veg, em["litter"].mean, 0.75 * season)
    water = em["water_turbid"].mean
    return _lerp(veg, water, 0.25), _lerp(veg, water, 0.55)


# Crop states: (summer, autumn) recipes as weights over (crop, grass, senescent, litter, soil, sparse)
_CROP_STATES = np.array(
    [
        # summer                          autumn (late: harvested)
        [[1.0, 0, 0, 0, 0, 0], [0, 0, 0, 0.75, 0.25, 0]],  # corn/soy -> stubble
        [[0.9, 0, 0.1, 0, 0, 0], [0, 0, 0, 0.15, 0.85, 0]],  # corn/soy -> tilled
        [[0.5, 0, 0, 0, 0.3, 0.2], [0, 0, 0, 0.05, 0.95, 0]],  # young crop on soil -> tilled
        [[0, 0.8, 0, 0.2, 0, 0], [0, 0.35, 0, 0.65, 0, 0]],  # hay
        [[0, 0.15, 0, 0.75, 0.1, 0], [0, 0.2, 0, 0.1, 0.45, 0.25]],  # wheat stubble, weeds -> winter wheat
        [[0, 0, 0, 0.05, 0.95, 0], [0, 0, 0, 0, 1.0, 0]],  # tilled soil
        [[0.2, 0, 0.6, 0.2, 0, 0], [0, 0, 0, 0.8, 0.2, 0]],  # ripening grain -> stubble
        [[0.6, 0.4, 0, 0, 0, 0], [0, 0.6, 0.1, 0.3, 0, 0]],  # alfalfa/pasture
    ],
    dtype=np.float32,
)
CROP_STATE_WEIGHTS = (0.28, 0.2, 0.07, 0.17, 0.07, 0.03, 0.05, 0.13)  # how often a field parcel is in each state
CROP_GREEN = (0, 1, 7)  # states with green row crops (tramlines and row texture in green)


def _crops(rng: np.random.Generator, em: dict[str, Endmember], season: float) -> Pair:
    parts = np.stack(
        [
            em["crop"].sample(rng, 1)[0],
            em["grass"].sample(rng, 1)[0],
            em["senescent"].mean,
            em["litter"].sample(rng, 1, shrink=0.5)[0],
            em["soil"].sample(rng, 1, shrink=0.5)[0],
            em["sparse"].mean,
        ]
    )
    summer, autumn = _CROP_STATES[:, 0] @ parts, _CROP_STATES[:, 1] @ parts
    a = _lerp(summer, autumn, season)
    # within-field variation: vigour (greener) vs thin patches (more soil)
    return a, _lerp(a, parts[4], 0.25)


def _soil(rng: np.random.Generator, em: dict[str, Endmember], season: float) -> Pair:
    a = em["soil"].sample(rng, VARIANTS, shrink=0.6)
    return a, a * np.float32(0.72)  # moist patches


def _sand(rng: np.random.Generator, em: dict[str, Endmember], season: float) -> Pair:
    a = em["sand"].sample(rng, VARIANTS) * np.float32(1.1)
    return a, a * np.float32(0.7)  # wet sand


def _simple(group: str, weathered: float, shrink: float = 0.7, scale: float = 1.0) -> Callable[..., Pair]:
    """Variants drawn from one group; `weathered` scales the second endmember, `scale` both."""

    def build(rng: np.random.Generator, em: dict[str, Endmember], season: float) -> Pair:
        a = em[group].sample(rng, VARIANTS, shrink) * np.float32(scale)
        return a, a * np.float32(weathered)

    return build


def _paint_mix(background: str, share: float) -> Callable[..., Pair]:
    """Lines narrower than a pixel: paint mixed with the pavement; some variants are yellow."""

    def build(rng: np.random.Generator, em: dict[str, Endmember], season: float) -> Pair:
        base = em[background].sample(rng, VARIANTS)
        paint = em["paint_white"].sample(rng, VARIANTS, shrink=0.5)
        paint[: VARIANTS // 4] = em["paint_yellow"].sample(rng, VARIANTS // 4, shrink=0.5)
        a = _lerp(base, paint, share)
        return a, _lerp(base, paint, share * 0.6)  # worn paint

    return build


def _vehicles(rng: np.random.Generator, em: dict[str, Endmember], season: float) -> Pair:
    """Cars seen from above: mostly white, silver, grey and black, some red and blue; glass darkens them."""
    paint = em["paint"].members
    red = paint[(paint[:, 0] > 3 * paint[:, 2]) & (paint[:, 1] < 0.5 * paint[:, 0])]
    blue = paint[paint[:, 2] > 1.5 * paint[:, 0]]
    white = em["paint_white"].members
    grey = np.ones(4, np.float32)

    def one(group: np.ndarray, fallback: float) -> np.ndarray:
        return group[rng.integers(0, len(group))] if len(group) else grey * fallback

    colours = [one(white, 0.5), one(white, 0.5), grey * 0.28, grey * 0.14, grey * 0.05, grey * 0.04]
    colours += [one(red, 0.2), one(blue, 0.1)]
    a = np.stack(colours).astype(np.float32) * np.float32(0.8)  # windscreen and roof glass
    return a, a * np.float32(0.7)


def _water(rng: np.random.Generator, em: dict[str, Endmember], season: float) -> Pair:
    kinds = [em["water_clear"].mean, em["water_turbid"].mean, em["water_algal"].mean]
    a = np.stack([kinds[i % 3] for i in range(VARIANTS)]) * rng.uniform(0.85, 1.15, (VARIANTS, 1))
    a = a.astype(np.float32)
    # near the shore the bottom shows through in the visible; NIR is absorbed within centimetres of water
    shallow = _lerp(a, em["soil"].mean * np.float32(0.3), 0.25)
    shallow[:, 3] = a[:, 3]
    return a, shallow


_BUILDERS: dict[Mat, Callable[..., Pair]] = {
    Mat.WATER: _water,
    Mat.MARSH: _marsh,
    Mat.TREE: _trees,
    Mat.FOREST_FLOOR: _forest_floor,
    Mat.SHRUB: _shrub,
    Mat.SHRUB_GROUND: _shrub_ground,
    Mat.LAWN: lambda rng, em, s: _grassy(rng, em, s, dry=0.1, dormant=0.35),
    Mat.MEADOW: lambda rng, em, s: _grassy(rng, em, s, dry=0.2, dormant=0.8),
    Mat.CROP: _crops,
    Mat.BARE_SOIL: _soil,
    Mat.SAND: _sand,
    Mat.ROOF_SHINGLE: _simple("shingle", 0.9),
    Mat.ROOF_TILE: _simple("roof_tile", 0.9),
    Mat.ROOF_METAL: _simple("metal", 0.85),
    Mat.ROOF_CLAY: _simple("clay", 0.9),
    Mat.ROOF_FLAT: _simple("flat_roof", 0.9, shrink=0.9),
    Mat.ROAD: _simple("asphalt", 1.25, shrink=0.5),
    Mat.ROAD_MARK: _paint_mix("asphalt", 0.45),
    Mat.PAVEMENT: _simple("asphalt", 1.2, shrink=0.6),
    Mat.PAVEMENT_MARK: _paint_mix("asphalt", 0.22),
    Mat.CONCRETE: _simple("concrete", 0.85, shrink=0.5, scale=0.85),  # weathered, not fresh white
    Mat.VEHICLE: _vehicles,
}


@functools.cache
def material_table(seed: int, season: float) -> MaterialTable:
    """Reflectance endmembers of every material id for one scene and season (0 summer .. 1 late autumn).

    The random draws do not depend on the season, so the same seed gives the same roofs in every season.
    """
    em = endmembers()
    rng = np.random.default_rng([seed, 0x5EC7])
    a = np.zeros((256, 4), np.float32)
    b = np.zeros((256, 4), np.float32)
    texture = np.zeros(256, np.float32)
    for base in Mat:
        pa, pb = _BUILDERS[base](rng, em, float(np.clip(season, 0.0, 1.0)))
        rows = slice(mid(base), mid(base) + VARIANTS)
        a[rows], b[rows] = np.clip(pa, 0.003, 1.0), np.clip(pb, 0.003, 1.0)
        texture[rows] = TEXTURE.get(base, 0.03)
    return MaterialTable(a, b, texture)


# --- sensor ------------------------------------------------------------------------------------------------

LUT_SIZE = 4096
LUT_MAX_REFLECTANCE = 1.0
# Atmospheric path reflectance added before encoding (blue scatters most)
PATH_REFLECTANCE = np.array([0.005, 0.010, 0.022, 0.003], np.float32)
HAZE_REFLECTANCE = np.array([0.025, 0.03, 0.05, 0.012], np.float32)
ENCODING_GAMMA = 2.2  # NAIP DN are tone-mapped, not linear in reflectance: dark vegetation is not black


def dn_lut(gain: tuple[float, ...], offset: tuple[float, ...], haze: float) -> np.ndarray:
    """(4, LUT_SIZE) float32: quantised surface reflectance -> DN, per band.

    DN = 255 * (path + (1 - 0.2 haze) * reflectance) ** (1 / gamma), then sensor gain and offset.
    """
    refl = np.linspace(0.0, LUT_MAX_REFLECTANCE, LUT_SIZE, dtype=np.float32)
    path = PATH_REFLECTANCE + haze * HAZE_REFLECTANCE
    at_sensor = path[:, None] + (1.0 - 0.2 * haze) * refl[None, :]
    dn = 255.0 * np.clip(at_sensor, 0.0, 1.0) ** (1.0 / ENCODING_GAMMA)
    return (dn * np.asarray(gain, np.float32)[:, None] + np.asarray(offset, np.float32)[:, None]).astype(np.float32)
