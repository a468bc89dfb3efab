"""AOI files a mapper uploads: GeoJSON, GeoPackage, KML or a zipped Shapefile, in any CRS, read into lon/lat
polygons, one AOI per feature or all features as one.

Every limit is a Setting and every refusal names it (`AoiFileError`: HTTP 422; `AoiFileTooLarge`: 413). The file
is read from a temporary file with a server-made name; the client's file name only picks the format and the
default AOI names. GDAL opens many formats by their content, some of which read other files (an OGR VRT) or run
commands (a GDALG pipeline), so the content must look like the format its name says before GDAL sees it, and
the driver GDAL chose must be that format's.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from tempfile import TemporaryDirectory
from typing import Any, BinaryIO, Literal

import geopandas as gpd
import pyogrio
import shapely
from pyogrio.errors import DataLayerError, DataSourceError
from shapely.geometry.base import BaseGeometry

from pearl_pipelines.geo.grid import AoiError, aoi_to_lonlat
from pearl_pipelines.labels.store import plain_text
from pearl_pipelines.settings import Settings
from review_app.geometry import GeometryError, area_km2

Grouping = Literal["per_feature", "one"]
ACCEPTED = "GeoJSON (.geojson, .json), GeoPackage (.gpkg), KML (.kml) or a zipped Shapefile (.zip)"
# suffix -> (format, the GDAL drivers that may read it)
FORMATS: dict[str, tuple[str, frozenset[str]]] = {
    ".geojson": ("GeoJSON", frozenset({"GeoJSON"})),
    ".json": ("GeoJSON", frozenset({"GeoJSON"})),
    ".gpkg": ("GeoPackage", frozenset({"GPKG"})),
    ".kml": ("KML", frozenset({"KML", "LIBKML"})),
    ".zip": ("zipped Shapefile", frozenset({"ESRI Shapefile"})),
}
GEOJSON_TYPES = {"FeatureCollection", "Feature", "Polygon", "MultiPolygon", "GeometryCollection"}
SQLITE_MAGIC = b"SQLite format 3\x00"
POLYGONAL = ("Polygon", "MultiPolygon")
NAME_ATTRIBUTES = ("name", "Name", "NAME")  # used for per-feature names when the mapper names no attribute
MAX_NAME = 120  # as AoiCreate.name
MAX_LISTED = 8  # refusals listed in one message
CHUNK = 1 << 20
_ZIP_MEMBER = re.compile(r"[\w\- .()/]+")  # a member name GDAL's /vsizip/ gets: no '..', no backslash, no scheme


class AoiFileError(GeometryError):
    """An AOI file the API refuses (422); the message says what was wrong, what is accepted and which setting."""


class AoiFileTooLarge(AoiFileError):
    """A file over PEARL_AOI_UPLOAD_MAX_BYTES (413)."""


@dataclass(frozen=True)
class AoiFileLimits:
    """What one upload may hold (each a Setting, named in the refusals)."""

    max_bytes: int
    max_features: int
    max_vertices: int
    max_km2: float

    @classmethod
    def of(cls, settings: Settings) -> AoiFileLimits:
        return cls(
            max_bytes=settings.aoi_upload_max_bytes,
            max_features=settings.aoi_upload_max_features,
            max_vertices=settings.aoi_max_vertices,
            max_km2=settings.live_aoi_max_km2,
        )


@dataclass(frozen=True)
class FileAoi:
    """One AOI read from a file: its name and its lon/lat polygon(s)."""

    name: str
    geometry: BaseGeometry


def suffix_of(filename: str) -> str:
    """The file's format suffix (lower case), or AoiFileError naming the accepted ones."""
    suffix = PurePosixPath(filename.replace("\\", "/")).suffix.lower()
    if suffix not in FORMATS:
        raise AoiFileError(f"{filename!r} is not an AOI file this app reads; upload {ACCEPTED}")
    return suffix


def save_upload(stream: BinaryIO, directory: Path, filename: str, max_bytes: int) -> Path:
    """Copy the upload to `directory` under a server-made name, refusing it past `max_bytes` or when empty."""
    target = Path(directory) / f"upload{suffix_of(filename)}"
    size = 0
    with target.open("wb") as out:
        while chunk := stream.read(CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise AoiFileTooLarge(
                    f"the file is larger than {max_bytes} bytes, the most an AOI upload may be "
                    "(PEARL_AOI_UPLOAD_MAX_BYTES); simplify the polygons or upload fewer features"
                )
            out.write(chunk)
    if size == 0:
        raise AoiFileError(f"{filename!r} is empty (0 bytes); upload {ACCEPTED}")
    return target


# -- what GDAL may open ---------------------------------------------------------------------------------------------
def _sniff_geojson(path: Path) -> None:
    try:
        data = json.loads(path.read_bytes())
    except (UnicodeDecodeError, ValueError):
        raise AoiFileError("the file is not GeoJSON (not valid JSON); upload " + ACCEPTED) from None
    kind = data.get("type") if isinstance(data, dict) else None
    if kind not in GEOJSON_TYPES:
        raise AoiFileError(
            f"the file is JSON but not GeoJSON polygons (type {kind!r}); a FeatureCollection of Polygons or "
            "MultiPolygons is accepted"
        )


def _sniff_kml(path: Path) -> None:
    with path.open("rb") as f:
        head = f.read(4096)
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not text.startswith(b"<") or b"<kml" not in head:
        raise AoiFileError("the file is not KML (no <kml> element); upload " + ACCEPTED)


def _sniff_gpkg(path: Path) -> None:
    with path.open("rb") as f:
        head = f.read(100)
    if not head.startswith(SQLITE_MAGIC) or head[68:72] not in (b"GPKG", b"GP10", b"GP11"):
        raise AoiFileError("the file is not a GeoPackage (no GeoPackage header); upload " + ACCEPTED)


def _shapefile_in_zip(path: Path, max_bytes: int) -> str:
    """The /vsizip/ path of the one Shapefile in the zip."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX/")]
    except zipfile.BadZipFile:
        raise AoiFileError("the file is not a zip archive; upload a Shapefile as a .zip of its parts") from None
    expanded = sum(m.file_size for m in members)
    if expanded > max_bytes:
        raise AoiFileTooLarge(
            f"the zip expands to {expanded} bytes; an AOI upload may be at most {max_bytes} bytes "
            "(PEARL_AOI_UPLOAD_MAX_BYTES), unpacked too"
        )
    shps = [m.filename for m in members if m.filename.lower().endswith(".shp")]
    if not shps:
        found = ", ".join(m.filename for m in members[:MAX_LISTED]) or "nothing"
        raise AoiFileError(
            f"the zip holds no Shapefile (.shp), only {found}; zip the .shp with its .shx, .dbf and .prj"
        )
    if len(shps) > 1:
        raise AoiFileError(f"the zip holds {len(shps)} Shapefiles ({', '.join(shps[:MAX_LISTED])}); upload one")
    member = shps[0]
    if ".." in member or not _ZIP_MEMBER.fullmatch(member):
        raise AoiFileError(f"the zip member name {member!r} is not accepted; use plain file names")
    return f"/vsizip/{path}/{member}"


def _dataset(path: Path, suffix: str, max_bytes: int) -> str:
    """The path GDAL opens, once the content looks like the format the suffix names."""
    if suffix in (".geojson", ".json"):
        _sniff_geojson(path)
    elif suffix == ".kml":
        _sniff_kml(path)
    elif suffix == ".gpkg":
        _sniff_gpkg(path)
    else:
        return _shapefile_in_zip(path, max_bytes)
    return str(path)


# -- reading ----------------------------------------------------------------------------------------------------
def _polygon_layers(source: str, suffix: str) -> list[str]:
    """The layers that may hold polygons: GDAL says polygonal, or unknown (mixed; each feature is checked)."""
    try:
        layers = pyogrio.list_layers(source)
    except (DataSourceError, DataLayerError):
        raise AoiFileError(f"the file could not be read as {FORMATS[suffix][0]}; upload {ACCEPTED}") from None
    kinds = {str(name): str(kind) for name, kind in layers if kind is not None}  # None: an attribute table
    if not kinds:
        raise AoiFileError("the file has no features with a geometry; upload a file with polygons")
    polygonal = [n for n, kind in kinds.items() if "Polygon" in kind or kind in ("Unknown", "GeometryCollection")]
    if not polygonal:
        found = "/".join(sorted({kind.removeprefix("3D ") for kind in kinds.values()}))
        raise AoiFileError(f"AOIs are polygons; the file holds {found} features only")
    return polygonal


def _read_layer(source: str, layer: str, suffix: str, limits: AoiFileLimits, seen: int) -> gpd.GeoDataFrame:
    try:
        info = pyogrio.read_info(source, layer=layer, force_feature_count=True)
    except (DataSourceError, DataLayerError):
        raise AoiFileError(f"the file could not be read as {FORMATS[suffix][0]}; upload {ACCEPTED}") from None
    if info["driver"] not in FORMATS[suffix][1]:  # GDAL chose another driver by the content: never read it
        raise AoiFileError(f"the file is not {FORMATS[suffix][0]}; upload {ACCEPTED}")
    count = int(info["features"])
    if seen + count > limits.max_features:
        raise AoiFileError(
            f"the file has more than {limits.max_features} features, the most one upload may hold "
            "(PEARL_AOI_UPLOAD_MAX_FEATURES); upload fewer or dissolve them first"
        )
    if count == 0:
        return gpd.GeoDataFrame(geometry=[], crs=info["crs"])
    if info["crs"] is None:
        hint = " (a Shapefile needs its .prj in the zip)" if suffix == ".zip" else ""
        raise AoiFileError(f"the file's layer {layer!r} has no CRS{hint}; save it with its coordinate system")
    try:
        frame = pyogrio.read_dataframe(source, layer=layer, force_2d=True, on_invalid="ignore")
    except (DataSourceError, DataLayerError, ValueError):
        raise AoiFileError(f"the file could not be read as {FORMATS[suffix][0]}; upload {ACCEPTED}") from None
    return frame.to_crs("EPSG:4326")


def _polygons(geom: BaseGeometry | None) -> BaseGeometry | str:
    """The feature's polygons (repaired when they cross themselves), or what is wrong with it."""
    if geom is None or geom.is_empty:
        return "has no geometry"
    if geom.geom_type == "GeometryCollection":
        parts = [g for g in geom.geoms if not g.is_empty]
        if not parts or any(g.geom_type not in POLYGONAL for g in parts):
            kinds = sorted({g.geom_type for g in parts}) or ["nothing"]
            return f"is a {'/'.join(kinds)} collection, not polygons"
        geom = shapely.union_all(parts)
    if geom.geom_type not in POLYGONAL:
        return f"is a {geom.geom_type}, not a polygon"
    if not geom.is_valid:  # a self-touching ring from a GIS export: repaired, keeping the polygonal part
        fixed = shapely.make_valid(geom)
        polys = [g for g in getattr(fixed, "geoms", [fixed]) if g.geom_type in POLYGONAL]
        geom = shapely.union_all(polys) if polys else shapely.Polygon()
        if geom.is_empty:
            return "is a polygon with no area"
    return geom


def _name_column(frame: gpd.GeoDataFrame, name_field: str | None) -> str | None:
    columns = [c for c in frame.columns if c != frame.geometry.name]
    if name_field:
        if name_field not in columns:
            listed = ", ".join(columns[:20]) or "none"
            raise AoiFileError(f"the file has no attribute {name_field!r} to name AOIs by; its attributes: {listed}")
        return name_field
    return next((c for c in NAME_ATTRIBUTES if c in columns), None)


def _clean_name(value: Any, fallback: str) -> str:
    text = plain_text(str(value)).strip() if value is not None and str(value).strip() not in ("", "nan") else ""
    return (text or fallback)[:MAX_NAME]


def _check(aoi: FileAoi, limits: AoiFileLimits) -> str | None:
    """What is wrong with one AOI under the limits, or None."""
    vertices = shapely.get_num_coordinates(aoi.geometry)
    if vertices > limits.max_vertices:
        return f"has {vertices} vertices; an AOI may have {limits.max_vertices} (PEARL_AOI_MAX_VERTICES): simplify it"
    try:
        aoi_to_lonlat(aoi.geometry)
    except AoiError as exc:
        return str(exc)
    size = area_km2(aoi.geometry)
    if size > limits.max_km2:
        return (
            f"is {size:.1f} km^2; live mapping accepts AOIs up to {limits.max_km2:g} km^2 "
            "(PEARL_LIVE_AOI_MAX_KM2): split it or map it with the regional Dagster jobs"
        )
    if size < 1e-6:
        return "has no area"
    return None


def refused(problems: list[str], total: int) -> AoiFileError:
    listed = "; ".join(problems[:MAX_LISTED]) + ("; ..." if len(problems) > MAX_LISTED else "")
    return AoiFileError(f"{len(problems)} of {total} AOIs refused, nothing was stored: {listed}")


def read_aois(
    source: str, *, suffix: str, stem: str, grouping: Grouping, name_field: str | None, limits: AoiFileLimits
) -> list[FileAoi]:
    """The AOIs of an opened-for-GDAL `source` (all its polygon layers), each checked against `limits`; every one
    valid, or AoiFileError listing those refused."""
    frames: list[gpd.GeoDataFrame] = []
    for layer in _polygon_layers(source, suffix):
        frames.append(_read_layer(source, layer, suffix, limits, sum(len(f) for f in frames)))
    features = [(i, g) for frame in frames for i, g in enumerate(frame.geometry, start=1)]
    if not features:
        raise AoiFileError("the file has no features; upload a file with at least one polygon")
    problems: list[str] = []
    names: list[str] = []
    geoms: list[BaseGeometry] = []
    n = 0
    for frame in frames:
        column = _name_column(frame, name_field) if grouping == "per_feature" else None
        for value, geom in zip(frame[column] if column else [None] * len(frame), frame.geometry, strict=True):
            n += 1
            polygons = _polygons(geom)
            label = f"feature {n}" + (f" ({_clean_name(value, '')!r})" if value is not None else "")
            if isinstance(polygons, str):
                problems.append(f"{label} {polygons}")
                continue
            geoms.append(polygons)
            names.append(_clean_name(value, f"{stem} {n}" if len(features) > 1 else stem))
    if problems:
        if all("not a polygon" in p or "not polygons" in p for p in problems) and not geoms:
            kinds = sorted({g.geom_type for _, g in features if g is not None})
            raise AoiFileError(f"AOIs are polygons; the file holds {'/'.join(kinds) or 'no'} features only")
        raise refused(problems, n)
    if grouping == "one":
        aois = [FileAoi(stem[:MAX_NAME], shapely.union_all(geoms))]
    else:
        aois = [FileAoi(name, geom) for name, geom in zip(names, geoms, strict=True)]
    problems = [f"{a.name!r} {p}" for a in aois if (p := _check(a, limits)) is not None]
    if problems:
        raise refused(problems, len(aois))
    return aois


@contextmanager
def uploaded_file(stream: BinaryIO, filename: str, max_bytes: int) -> Iterator[Path]:
    """The upload saved to a fresh temporary folder (removed afterwards, whatever happens)."""
    with TemporaryDirectory(prefix="pearl-aoi-upload-", ignore_cleanup_errors=True) as tmp:
        yield save_upload(stream, Path(tmp), filename, max_bytes)


def read_aoi_upload(
    stream: BinaryIO,
    filename: str,
    *,
    grouping: Grouping,
    name_field: str | None,
    limits: AoiFileLimits,
) -> list[FileAoi]:
    """The AOIs of an uploaded file (`filename`: the client's name, for its format and the AOIs' default names)."""
    suffix = suffix_of(filename)
    stem = _clean_name(PurePosixPath(filename.replace("\\", "/")).stem, "uploaded AOI")
    with uploaded_file(stream, filename, limits.max_bytes) as path:
        source = _dataset(path, suffix, limits.max_bytes)
        return read_aois(source, suffix=suffix, stem=stem, grouping=grouping, name_field=name_field, limits=limits)
