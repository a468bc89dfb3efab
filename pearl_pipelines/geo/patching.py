"""Map patches on an AOI's map folder: a mapper's polygons painted over the model's class map.

A patch either fills its polygon with one class, or paints in the same pixels of another map of the AOI (another
checkpoint's, on the same pixel grid). Only pixels whose centre lies inside both the patch and the AOI change (the
AOI's map is nodata outside its polygon, and stays so). Patched pixels get confidence 255 (1.0: a person said so),
so "label here next" never points at them.

The model's own output is kept beside the patched files (`model-classes.tif`, `model-confidence.tif`): re-applying
patches after one is added or removed starts from it (`unpatched_copy`), and the model never runs again for that.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.features import geometry_mask
from rasterio.io import MemoryFile
from rasterio.warp import transform_geom
from rasterio.windows import from_bounds
from shapely.geometry import mapping, shape

from pearl_pipelines.classes import NODATA_CLASS
from pearl_pipelines.geo.cog import cog_from_dataset
from pearl_pipelines.layout import CLASSES_FILE, CONFIDENCE_FILE

MODEL_PREFIX = "model-"  # the model's output before patches: model-classes.tif, model-confidence.tif
PATCHED_CONFIDENCE = 255  # confidence of a patched pixel: 1.0


@dataclass(frozen=True)
class MapPatch:
    """One patch to paint: `geometry` (GeoJSON, lon/lat) filled with `class_index`, or with the pixels of the class
    COG `source` (another map of the same AOI)."""

    geometry: Mapping[str, Any]
    class_index: int | None = None
    source: Path | None = None


def model_file(prediction_dir: Path, name: str) -> Path:
    return Path(prediction_dir) / f"{MODEL_PREFIX}{name}"


def unpatched_copy(src_dir: Path, dst_dir: Path) -> None:
    """A new map folder `dst_dir` holding the model's output of `src_dir` under the ordinary names (patches not yet
    applied), and `src_dir`'s other files. Written to a temporary folder first: `dst_dir` appears whole."""
    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    tmp = dst_dir.with_name(dst_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for item in src_dir.iterdir():
        if not item.is_file() or item.name.startswith(MODEL_PREFIX) or item.name.endswith(".tmp.tif"):
            continue
        kept = model_file(src_dir, item.name)
        shutil.copy2(kept if kept.is_file() else item, tmp / item.name)
    shutil.rmtree(dst_dir, ignore_errors=True)
    tmp.rename(dst_dir)


def _inside(geometry: Mapping[str, Any], dataset: Any) -> np.ndarray:
    """(H, W) bool: pixel centres inside the lon/lat `geometry`, on the dataset's grid."""
    footprint = transform_geom("EPSG:4326", dataset.crs, dict(geometry))
    return ~geometry_mask([footprint], out_shape=(dataset.height, dataset.width), transform=dataset.transform)


def _source_pixels(source: Path, dataset: Any) -> np.ndarray:
    """The classes of `source` on the dataset's grid (same CRS and pixel size: another map of the same AOI), nodata
    where it has none."""
    with rasterio.open(source) as src:
        if src.crs != dataset.crs or not np.allclose(src.res, dataset.res):
            raise ValueError(f"{source.name} is not on this map's pixel grid")
        window = from_bounds(*dataset.bounds, transform=src.transform).round_offsets().round_lengths()
        return src.read(  # type: ignore[no-any-return]
            1, window=window, out_shape=(dataset.height, dataset.width), boundless=True, fill_value=NODATA_CLASS
        )


def _write_like(template: Path, dst: Path, band: np.ndarray) -> None:
    """`band` as a COG at `dst` with `template`'s profile, colour table, tags and descriptions."""
    with rasterio.open(template) as src, MemoryFile() as memfile:
        rasterio.shutil.copy(src, memfile.name, driver="GTiff", TILED="YES")
        with rasterio.open(memfile.name, "r+") as mem:
            mem.write(band, 1)
        with rasterio.open(memfile.name) as filled:
            cog_from_dataset(filled, dst, deflate_level=1)


def apply_patches(prediction_dir: Path, patches: Sequence[MapPatch], *, aoi_geometry: Mapping[str, Any]) -> int:
    """Paint `patches` (oldest first: a newer one paints over an older one) into the class and confidence COGs of
    `prediction_dir`, clipped to the lon/lat `aoi_geometry`; the model's output is kept (`MODEL_PREFIX`). Returns how
    many pixels were patched. No patches: nothing is read or written."""
    prediction_dir = Path(prediction_dir)
    classes_path, confidence_path = prediction_dir / CLASSES_FILE, prediction_dir / CONFIDENCE_FILE
    if not patches or not classes_path.is_file():
        return 0
    aoi = shape(aoi_geometry)
    raw_classes, raw_confidence = model_file(prediction_dir, CLASSES_FILE), model_file(prediction_dir, CONFIDENCE_FILE)
    if not raw_classes.is_file():
        classes_path.rename(raw_classes)
        if confidence_path.is_file():
            confidence_path.rename(raw_confidence)
    with rasterio.open(raw_classes) as src:
        classes = src.read(1)
        patched = np.zeros(classes.shape, dtype=bool)
        for patch in patches:
            clipped = shape(patch.geometry).intersection(aoi)
            if clipped.is_empty:
                continue
            inside = _inside(mapping(clipped), src) & (classes != NODATA_CLASS)
            if patch.class_index is not None:
                classes[inside] = patch.class_index
                patched |= inside
            elif patch.source is not None:
                pixels = _source_pixels(patch.source, src)
                painted = inside & (pixels != NODATA_CLASS)
                classes[painted] = pixels[painted]
                patched |= painted
    _write_like(raw_classes, classes_path, classes)
    if raw_confidence.is_file():
        with rasterio.open(raw_confidence) as src:
            confidence = src.read(1)
        confidence[patched] = PATCHED_CONFIDENCE
        _write_like(raw_confidence, confidence_path, confidence)
    return int(patched.sum())
