"""Bring your own imagery: GeoTIFFs (any CRS; uint8, uint16, float ...) into the local STAC catalog.

Each file becomes one item of a local collection: an RGBN uint8 COG `image` asset in the file's own
CRS and pixel grid (nothing is resampled), with invalid pixels kept as a per-dataset mask.

- **Bands.** PEARL models read red, green, blue, NIR. `band_map` gives the 1-based source bands for
  them, e.g. (3, 2, 1, 4) for a B, G, R, NIR file. Without one, a 4-band file is read as R, G, B, NIR
  unless its band descriptions or colour interpretation say otherwise (then they are followed, or the
  file is refused when they are incomplete); other band counts need a map.
- **Values.** uint8 is copied as is. Anything else is stretched per band: the 2nd and 98th
  percentiles of the valid pixels map to 0 and 255 (clipped beyond). The stretch is stored in the
  item properties (`pearl:stretch`), so the original values can be recovered approximately and two
  ingests can be compared. Percentiles come from all pixels up to 2048 x 2048, else from a
  nearest-neighbour decimated read of the whole file.
- **Validity.** A pixel is invalid where the file's nodata value / mask / alpha band says so, where any
  band is NaN or infinite, and, for files that declare no validity at all, where every mapped band is
  0 (the black collar convention of NAIP and most mosaics; real reflectance is never 0 in all bands).
- **Safety.** All files are checked before anything is written, COGs are staged next to the catalog,
  and the collection is re-saved only when every file succeeded: a bad file never costs existing items.
  Re-ingesting a file with the same item id (the file name) replaces that item.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import rasterio
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import RasterioIOError
from rasterio.io import DatasetReader
from rasterio.windows import Window
from tqdm import tqdm

from pearl_pipelines.geo.catalog import item_from_raster, load_collection_items, save_collection
from pearl_pipelines.geo.cog import RGBN_DESCRIPTIONS, write_cog

BandMap = tuple[int, int, int, int]

STRETCH_PERCENTILES = (2.0, 98.0)
SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")
BANDS_HINT = "pass the 1-based source bands for red, green, blue, NIR, e.g. `--bands 3,2,1,4` (band_map=(3, 2, 1, 4))"
STATS_MAX_SIDE = 2048  # larger files get their percentiles from a decimated read
STRIP_ROWS = 1024  # rows read per step: bounds memory for large float files
_COLLECTION_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# Names a band description may use for each RGBN role (lower-cased).
_BAND_NAMES = {
    "red": {"red", "r"},
    "green": {"green", "g"},
    "blue": {"blue", "b"},
    "nir": {"nir", "near-infrared", "near infrared", "nearinfrared", "infrared", "ir", "nir1"},
}
_COLORINTERP_NAMES = {ColorInterp.red: "red", ColorInterp.green: "green", ColorInterp.blue: "blue"}
_ROLES = ("red", "green", "blue", "nir")


class IngestError(ValueError):
    """A file that cannot be ingested; the message names the file, the problem and what is accepted."""


@dataclass(frozen=True)
class _Plan:
    """What was learnt about one file while validating it, enough to write it without surprises."""

    path: Path
    item_id: str
    band_map: BandMap
    dtype: str
    datetime: dt.datetime
    low: tuple[float, ...] | None  # per RGBN band; None for uint8 (copied)
    high: tuple[float, ...] | None
    ignore_alpha: bool  # an alpha-flagged band was mapped explicitly (e.g. NIR written as alpha)
    zero_is_nodata: bool


def parse_band_map(text: str) -> BandMap:
    """'3,2,1,4' -> (3, 2, 1, 4): the CLI's `--bands` value."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise IngestError(
            f"band mapping {text!r} must be four 1-based band numbers for red,green,blue,nir, e.g. 3,2,1,4"
        )
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def ingest_files(
    paths: Iterable[Path | str],
    catalog_dir: Path,
    collection_id: str,
    *,
    band_map: Sequence[int] | None = None,
    datetime: dt.datetime | None = None,
    show_progress: bool = False,
) -> list[pystac.Item]:
    """Ingest GeoTIFFs as items of `collection_id` (created, or extended) and return the new items.

    `datetime` is the acquisition time of all files; by default each file's TIFF DateTime tag, else its
    modification time. Raises IngestError before writing anything if any file is unusable.
    """
    files = [Path(p) for p in paths]
    if not files:
        raise IngestError("no files to ingest; pass one or more GeoTIFF paths")
    if not _COLLECTION_RE.match(collection_id):
        raise IngestError(
            f"collection id {collection_id!r} must be 1-64 characters of a-z, 0-9, '-' and '_', "
            "starting with a letter or digit"
        )
    mapping = _check_band_map_shape(band_map) if band_map is not None else None
    plans = [_plan(p, mapping, datetime) for p in files]
    _check_unique_ids(plans)

    catalog_dir = Path(catalog_dir).resolve()
    collection_dir = catalog_dir / collection_id
    collection_file = collection_dir / "collection.json"
    existing: list[pystac.Item] = []
    description = f"Imagery ingested with `pearl ingest` into collection {collection_id}"
    title: str | None = None
    previous_json: bytes | None = None
    if collection_file.is_file():
        existing = load_collection_items(catalog_dir, collection_id)
        previous = pystac.Collection.from_file(str(collection_file))
        description, title, previous_json = previous.description, previous.title, collection_file.read_bytes()

    created = not collection_dir.exists()
    collection_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".ingest-", dir=collection_dir))
    moved: list[tuple[Path, Path | None]] = []  # (item folder now in the catalog, its previous version parked)
    try:
        for plan in tqdm(plans, desc=f"ingest {collection_id}", unit="file", disable=not show_progress):
            _write_image(plan, staging / "new" / plan.item_id / "image.tif")
        # Every file is written: only now touch the catalog. Replaced item folders are parked, not deleted,
        # until the collection is saved, so that a failure below can put the catalog back as it was.
        for plan in plans:
            final, parked = collection_dir / plan.item_id, None
            if final.exists():
                parked = staging / "old" / plan.item_id
                parked.parent.mkdir(exist_ok=True)
                final.rename(parked)
            (staging / "new" / plan.item_id).rename(final)
            moved.append((final, parked))
        new_items = [
            item_from_raster(plan.item_id, final / "image.tif", datetime=plan.datetime, properties=_properties(plan))
            for plan, (final, _) in zip(plans, moved, strict=True)
        ]
        new_ids = {item.id for item in new_items}
        kept = [item for item in existing if item.id not in new_ids]
        save_collection(catalog_dir, collection_id, description, kept + new_items, title=title)
    except BaseException:
        for final, parked in reversed(moved):
            shutil.rmtree(final, ignore_errors=True)
            if parked is not None:
                parked.rename(final)
        if previous_json is not None:
            collection_file.write_bytes(previous_json)
        elif created:
            shutil.rmtree(collection_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return new_items


# --- validation -------------------------------------------------------------------------------------------


def _check_band_map_shape(band_map: Sequence[int]) -> BandMap:
    values = tuple(band_map)
    if len(values) != 4 or not all(isinstance(b, int | np.integer) and not isinstance(b, bool) for b in values):
        raise IngestError(
            f"band mapping {values!r} must be four 1-based band numbers (red, green, blue, nir); {BANDS_HINT}"
        )
    return tuple(int(b) for b in values)  # type: ignore[return-value]


def _plan(path: Path, band_map: BandMap | None, when: dt.datetime | None) -> _Plan:
    if not path.exists():
        raise IngestError(f"{path}: file not found")
    if not path.is_file():
        raise IngestError(f"{path}: not a file")
    try:
        src = rasterio.open(path)
    except RasterioIOError as exc:
        raise IngestError(f"{path}: not a raster GDAL can read ({exc}); pass GeoTIFFs") from exc
    with src:
        if src.crs is None:
            raise IngestError(
                f"{path}: has no coordinate reference system (not georeferenced); ingest needs a GeoTIFF with a CRS, "
                "e.g. assign one with `gdal_edit.py -a_srs EPSG:32631 file.tif`"
            )
        if src.transform.b != 0 or src.transform.d != 0:
            raise IngestError(f"{path}: has a rotated pixel grid; warp it to a north-up grid first (gdalwarp)")
        dtype = src.dtypes[0]
        if dtype not in SUPPORTED_DTYPES or len(set(src.dtypes)) > 1:
            raise IngestError(
                f"{path}: pixel type {', '.join(sorted(set(src.dtypes)))} is not supported; "
                f"accepted: {', '.join(SUPPORTED_DTYPES)} (one type for all bands)"
            )
        mapping = _resolve_band_map(src, path, band_map)
        alpha_bands = {i for i, ci in enumerate(src.colorinterp, start=1) if ci == ColorInterp.alpha}
        ignore_alpha = bool(alpha_bands & set(mapping))
        declares_validity = not all(MaskFlags.all_valid in flags for flags in src.mask_flag_enums)
        zero_is_nodata = ignore_alpha or not declares_validity
        scale = max(src.width, src.height) / STATS_MAX_SIDE
        out_shape = (max(1, round(src.height / scale)), max(1, round(src.width / scale))) if scale > 1 else None
        pixels, valid = _read_valid(
            src, mapping, window=None, out_shape=out_shape, ignore_alpha=ignore_alpha, zero_is_nodata=zero_is_nodata
        )
        if not valid.any():
            raise IngestError(f"{path}: every pixel is nodata (masked, NaN, or 0 in all bands); nothing to ingest")
        low = high = None
        if dtype != "uint8":
            lows, highs = np.percentile(pixels[:, valid].astype(np.float64), STRETCH_PERCENTILES, axis=1)
            low, high = tuple(float(v) for v in lows), tuple(float(v) for v in highs)
        item_time = when or _file_datetime(src, path)
    if item_time.tzinfo is None:
        item_time = item_time.replace(tzinfo=dt.UTC)
    return _Plan(path, _item_id(path), mapping, dtype, item_time, low, high, ignore_alpha, zero_is_nodata)


def _resolve_band_map(src: DatasetReader, path: Path, band_map: BandMap | None) -> BandMap:
    if band_map is not None:
        bad = [b for b in band_map if not 1 <= b <= src.count]
        if bad:
            raise IngestError(
                f"{path}: band {bad[0]} in mapping {','.join(map(str, band_map))} is out of range; "
                f"the file has {src.count} band(s), numbered 1..{src.count}"
            )
        return band_map
    if src.count != 4:
        raise IngestError(
            f"{path}: has {src.count} band(s); PEARL needs red, green, blue and NIR and only assumes that order "
            f"for 4-band files. {BANDS_HINT[0].upper()}{BANDS_HINT[1:]}"
        )
    # Band roles the file itself declares: descriptions first, then colour interpretation.
    declared: dict[int, str] = {}
    for index, (desc, interp) in enumerate(zip(src.descriptions, src.colorinterp, strict=True), start=1):
        role = _role_from_description(desc) if desc else None
        if role is None and interp == ColorInterp.alpha:
            role = "alpha"
        role = role or _COLORINTERP_NAMES.get(interp)
        if role:
            declared[index] = role
    described = ", ".join(f"band {i} = {r}" for i, r in sorted(declared.items()))
    if "alpha" in declared.values():
        raise IngestError(
            f"{path}: declares an alpha band ({described}); if that band is really NIR, say so: {BANDS_HINT}"
        )
    roles = list(declared.values())
    if len(set(roles)) != len(roles):
        raise IngestError(f"{path}: band descriptions repeat a band role ({described}); {BANDS_HINT}")
    if len(declared) == 3:  # three named bands pin down the fourth
        missing_band = ({1, 2, 3, 4} - set(declared)).pop()
        declared[missing_band] = (set(_ROLES) - set(roles)).pop()
    if len(declared) == 4:
        by_role = {role: index for index, role in declared.items()}
        return tuple(by_role[r] for r in _ROLES)  # type: ignore[return-value]
    if all(_ROLES[i - 1] == role for i, role in declared.items()):
        return (1, 2, 3, 4)
    raise IngestError(
        f"{path}: band descriptions contradict the red, green, blue, NIR order ({described}); {BANDS_HINT}"
    )


def _role_from_description(description: str) -> str | None:
    text = description.strip().lower()
    return next((role for role, names in _BAND_NAMES.items() if text in names), None)


def _file_datetime(src: DatasetReader, path: Path) -> dt.datetime:
    tag = src.tags().get("TIFFTAG_DATETIME")
    if tag:
        try:
            return dt.datetime.strptime(tag.strip(), "%Y:%m:%d %H:%M:%S").replace(tzinfo=dt.UTC)
        except ValueError:
            pass  # malformed tags are common; fall back to the file time
    return dt.datetime.fromtimestamp(path.stat().st_mtime, tz=dt.UTC)


def _item_id(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem).strip("-.") or "image"


def _check_unique_ids(plans: list[_Plan]) -> None:
    seen: dict[str, Path] = {}
    for plan in plans:
        if plan.item_id in seen:
            raise IngestError(
                f"{plan.path} and {seen[plan.item_id]} would both become item {plan.item_id!r}; rename one of them"
            )
        seen[plan.item_id] = plan.path


# --- reading and writing ----------------------------------------------------------------------------------


def _read_valid(
    src: DatasetReader,
    band_map: BandMap,
    *,
    window: Window | None,
    out_shape: tuple[int, int] | None,
    ignore_alpha: bool,
    zero_is_nodata: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """(pixels (4, H, W) in source dtype, valid (H, W)) for the mapped bands."""
    shape = (4, *out_shape) if out_shape else None
    pixels = src.read(list(band_map), window=window, out_shape=shape)
    if ignore_alpha:
        valid = np.ones(pixels.shape[1:], dtype=bool)
    else:
        valid = src.dataset_mask(window=window, out_shape=out_shape) > 0
    if pixels.dtype.kind == "f":
        valid &= np.isfinite(pixels).all(axis=0)
    if zero_is_nodata:
        valid &= (pixels != 0).any(axis=0)
    return pixels, valid


def stretch_to_uint8(pixels: np.ndarray, low: Sequence[float], high: Sequence[float]) -> np.ndarray:
    """The ingest stretch of (bands, H, W) pixels: `low` -> 0, `high` -> 255 per band, linear, clipped."""
    lows = np.asarray(low, dtype=np.float64)[:, None, None]
    span = np.maximum(np.asarray(high, dtype=np.float64)[:, None, None] - lows, 1e-9)  # a flat band maps to 0/255
    with np.errstate(invalid="ignore"):  # NaN pixels are masked; their value does not matter
        scaled = np.clip(np.round((pixels.astype(np.float64) - lows) * 255.0 / span), 0, 255)
    return np.nan_to_num(scaled).astype(np.uint8)


def _write_image(plan: _Plan, dst: Path) -> None:
    with rasterio.open(plan.path) as src:
        data = np.zeros((4, src.height, src.width), dtype=np.uint8)
        valid = np.zeros((src.height, src.width), dtype=bool)
        for row in range(0, src.height, STRIP_ROWS):
            window = Window(0, row, src.width, min(STRIP_ROWS, src.height - row))
            pixels, ok = _read_valid(
                src,
                plan.band_map,
                window=window,
                out_shape=None,
                ignore_alpha=plan.ignore_alpha,
                zero_is_nodata=plan.zero_is_nodata,
            )
            rows = slice(row, row + window.height)
            if plan.low is not None and plan.high is not None:
                pixels = stretch_to_uint8(pixels, plan.low, plan.high)
            data[:, rows] = np.where(ok, pixels, 0)
            valid[rows] = ok
        if not valid.any():
            raise IngestError(f"{plan.path}: every pixel is nodata (masked, NaN, or 0 in all bands); nothing to ingest")
        write_cog(
            dst,
            data,
            crs=src.crs,
            transform=src.transform,
            descriptions=RGBN_DESCRIPTIONS,
            mask=None if valid.all() else valid,
            overview_resampling="average",
            tags={"pearl_source_file": plan.path.name, "pearl_source_bands": ",".join(map(str, plan.band_map))},
        )


def _properties(plan: _Plan) -> dict[str, Any]:
    if plan.low is None or plan.high is None:
        stretch: dict[str, Any] = {"method": "none", "source_dtype": plan.dtype}
    else:
        stretch = {
            "method": "percentile",
            "percentiles": list(STRETCH_PERCENTILES),
            "source_dtype": plan.dtype,
            "low": list(plan.low),
            "high": list(plan.high),
        }
    return {
        "pearl:role": "ingested",
        "pearl:source": {"file": plan.path.name, "bands": list(plan.band_map)},
        "pearl:stretch": stretch,
    }
