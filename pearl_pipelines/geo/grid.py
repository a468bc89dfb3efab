"""The tile grid: a morecantile TMS at a fixed zoom; tile keys are "z-x-y" strings.

Keys name *where* a tile is; imagery for a key is read in the imagery's own CRS and resolution
(see tiles.py), so the grid never forces a resampling of the pixels a model sees.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import morecantile
from rasterio.warp import transform_geom
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry
from shapely.validation import explain_validity

from pearl_pipelines.settings import Settings, get_settings

_KEY_RE = re.compile(r"^(\d{1,2})-(\d+)-(\d+)$")
# Safety valve: an AOI must not silently explode into millions of partitions.
MAX_TILES_PER_AOI = 20000


class AoiError(ValueError):
    """An AOI geometry that cannot be turned into tiles; the message says what is accepted."""


def get_tms(settings: Settings | None = None) -> morecantile.TileMatrixSet:
    return morecantile.tms.get((settings or get_settings()).tms)


def tile_key(tile: morecantile.Tile) -> str:
    return f"{tile.z}-{tile.x}-{tile.y}"


def parse_tile_key(key: str) -> morecantile.Tile:
    match = _KEY_RE.match(key)
    if not match:
        raise ValueError(f"tile key {key!r} is not of the form z-x-y, e.g. 15-9420-12529")
    z, x, y = map(int, match.groups())
    if x >= 2**z or y >= 2**z:
        raise ValueError(f"tile key {key!r} is outside zoom {z} (x and y must be < {2**z})")
    return morecantile.Tile(x=x, y=y, z=z)


def tile_bounds(key: str, tms: morecantile.TileMatrixSet | None = None) -> tuple[float, float, float, float]:
    """Tile footprint as a lon/lat bounding box (west, south, east, north), e.g. for a STAC search."""
    west, south, east, north = (tms or get_tms()).bounds(parse_tile_key(key))
    return west, south, east, north


def tile_geometry(key: str, tms: morecantile.TileMatrixSet | None = None) -> BaseGeometry:
    """Tile footprint as a lon/lat polygon (`shapely.geometry.mapping` of it for GeoJSON)."""
    return box(*tile_bounds(key, tms))


def aoi_to_lonlat(geometry: Mapping[str, Any] | BaseGeometry, crs: Any = "EPSG:4326") -> BaseGeometry:
    """Validate an AOI (GeoJSON geometry or shapely, polygon or multipolygon, any CRS) and return it in lon/lat."""
    try:
        geom = geometry if isinstance(geometry, BaseGeometry) else shape(geometry)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise AoiError(f"AOI is not a GeoJSON geometry ({exc}); send a Polygon or MultiPolygon") from exc
    if geom.geom_type not in ("Polygon", "MultiPolygon"):
        raise AoiError(f"AOI must be a Polygon or MultiPolygon, got {geom.geom_type}")
    if geom.is_empty:
        raise AoiError("AOI geometry is empty")
    if not geom.is_valid:
        raise AoiError(f"AOI geometry is invalid ({explain_validity(geom)}); draw a polygon that does not cross itself")
    if str(crs).upper() not in ("EPSG:4326", "OGC:CRS84"):
        geom = shape(transform_geom(crs, "EPSG:4326", mapping(geom)))
    minx, miny, maxx, maxy = geom.bounds
    if not (-180 <= minx <= maxx <= 180 and -85.06 <= miny <= maxy <= 85.06):
        raise AoiError(
            f"AOI bounds {geom.bounds} are not lon/lat degrees; pass the CRS of the coordinates (e.g. EPSG:26918)"
        )
    return geom


def aoi_to_tile_keys(
    geometry: Mapping[str, Any] | BaseGeometry,
    crs: Any = "EPSG:4326",
    *,
    zoom: int | None = None,
    tms: morecantile.TileMatrixSet | None = None,
) -> list[str]:
    """Keys of the tiles that intersect the AOI (not merely its bounding box), sorted."""
    settings = get_settings()
    tms = tms or get_tms(settings)
    zoom = settings.tile_zoom if zoom is None else zoom
    geom = aoi_to_lonlat(geometry, crs)
    west, south, east, north = geom.bounds
    candidates = tms.tiles(west, south, east, north, zooms=[zoom])
    keys = []
    for tile in candidates:
        if box(*tms.bounds(tile)).intersection(geom).area > 0:
            keys.append(tile_key(tile))
            if len(keys) > MAX_TILES_PER_AOI:
                raise AoiError(f"AOI covers more than {MAX_TILES_PER_AOI} tiles at zoom {zoom}; split it or zoom out")
    return sorted(keys)
