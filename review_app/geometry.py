"""Validation of the geometries a mapper sends: AOIs (via the grid's own rules) and labels.

Every refusal is a `GeometryError` whose message says what was wrong and what is accepted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pyproj import CRS, Geod
from pyproj.exceptions import CRSError
from rasterio.warp import transform_geom
from shapely.errors import ShapelyError
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry
from shapely.validation import explain_validity

from pearl_pipelines.geo.grid import AoiError, aoi_to_lonlat

_GEOD = Geod(ellps="WGS84")
LABEL_TYPES = ("Point", "Polygon")
_LONLAT = ("EPSG:4326", "OGC:CRS84", "CRS84")
MAX_VERTICES = 10_000  # per AOI or label: a hand-drawn shape has tens; more is a pasted dataset or an attack


def _count_positions(coordinates: Any, limit: int) -> int:
    """Positions in a GeoJSON coordinates array, counted up to just past `limit` (no shapely object is built)."""
    if not isinstance(coordinates, list | tuple) or not coordinates:
        return 0
    if not isinstance(coordinates[0], list | tuple):
        return 1
    total = 0
    for part in coordinates:
        total += _count_positions(part, limit - total)
        if total > limit:
            break
    return total


class GeometryError(ValueError):
    """A geometry the API refuses; the message says what is accepted."""


def check_crs(crs: str) -> str:
    try:
        CRS.from_user_input(crs)
    except CRSError:
        raise GeometryError(
            f"unknown CRS {crs!r}; send EPSG:4326 (lon/lat) or an EPSG code such as EPSG:26918"
        ) from None
    return crs


def _shape(geometry: Mapping[str, Any]) -> BaseGeometry:
    if not isinstance(geometry, Mapping) or "type" not in geometry:
        raise GeometryError("geometry must be a GeoJSON geometry object with 'type' and 'coordinates'")
    if _count_positions(geometry.get("coordinates"), MAX_VERTICES) > MAX_VERTICES:
        raise GeometryError(f"geometry has more than {MAX_VERTICES} vertices; simplify it or split it into parts")
    try:
        geom = shape(geometry)
    except (AttributeError, KeyError, TypeError, ValueError, IndexError, ShapelyError) as exc:
        raise GeometryError(
            f"geometry is not valid GeoJSON ({exc}); e.g. {{'type': 'Point', 'coordinates': [lon, lat]}}"
        ) from None
    return geom


def area_km2(geom: BaseGeometry) -> float:
    """Geodesic area of a lon/lat geometry."""
    area, _ = _GEOD.geometry_area_perimeter(geom)
    return abs(area) / 1e6


def parse_aoi(geometry: Mapping[str, Any], crs: str, max_km2: float) -> BaseGeometry:
    """A valid lon/lat Polygon/MultiPolygon no larger than `max_km2`."""
    check_crs(crs)
    try:
        geom = aoi_to_lonlat(_shape(geometry), crs)
    except AoiError as exc:
        raise GeometryError(str(exc)) from None
    size = area_km2(geom)
    if size > max_km2:
        raise GeometryError(
            f"AOI is {size:.1f} km^2; live mapping accepts AOIs up to {max_km2:g} km^2. "
            "Draw a smaller AOI (larger areas are mapped by the regional Dagster jobs)"
        )
    if size < 1e-6:
        raise GeometryError("AOI has no area; draw a polygon with at least three distinct corners")
    return geom


def parse_label(geometry: Mapping[str, Any], crs: str) -> BaseGeometry:
    """A valid lon/lat Point or Polygon."""
    check_crs(crs)
    geom = _shape(geometry)
    if geom.geom_type not in LABEL_TYPES:
        raise GeometryError(f"labels are Points or Polygons, got {geom.geom_type}")
    if geom.is_empty:
        raise GeometryError("label geometry is empty")
    if geom.geom_type == "Polygon" and not geom.is_valid:
        raise GeometryError(
            f"polygon is invalid ({explain_validity(geom)}); draw a polygon whose edges do not cross each other"
        )
    if crs.upper() not in _LONLAT:
        geom = shape(transform_geom(crs, "EPSG:4326", mapping(geom)))
    minx, miny, maxx, maxy = geom.bounds
    if not (-180 <= minx <= maxx <= 180 and -90 <= miny <= maxy <= 90):
        raise GeometryError(
            f"coordinates {geom.bounds} are not lon/lat degrees; "
            "send lon/lat or name their CRS in `crs` (e.g. EPSG:26918)"
        )
    if geom.geom_type == "Polygon" and area_km2(geom) <= 0:
        raise GeometryError("polygon has no area; draw at least three distinct corners")
    return geom


def inside(aoi: BaseGeometry, label: BaseGeometry) -> bool:
    """Label within the AOI (a hair of tolerance for vertices snapped onto its edge)."""
    return aoi.buffer(1e-7).covers(label)
