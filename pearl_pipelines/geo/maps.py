"""Regional land-cover maps: a model's tile predictions mosaicked over a region into class + confidence COGs,
a PNG preview, the area of each class and a STAC item describing the map.

Also what a prediction COG says about itself (class schema, pixels per class), for callers that did not
write it. Dagster's `landcover_map` asset (defs/maps.py) only declares the work and reports it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pystac
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import geometry_mask
from rasterio.warp import transform_geom
from rasterio.windows import from_bounds
from shapely.geometry import shape

from pearl_pipelines.classes import NODATA_CLASS, ClassDef, ClassSchema
from pearl_pipelines.geo.cog import write_cog
from pearl_pipelines.geo.mosaic import Grid, open_sources, read_mosaic, union_bounds
from pearl_pipelines.geo.regions import Region

CLASSIFICATION_EXTENSION = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"
# As ml.outputs.CONFIDENCE_NODATA (not imported: that module pulls in torch); a max softmax is never below 1/K.
CONFIDENCE_NODATA = 0


class MapError(ValueError):
    """A map that cannot be made as asked; the message says what to change."""


def schema_of(classes_path: Path) -> ClassSchema:
    """The class schema a prediction COG carries (tags + colour table), read without loading the model."""
    with rasterio.open(classes_path) as src:
        tags = src.tags()
        colormap = src.colormap(1)
    names = tags["classes"].split(",")
    classes = [
        ClassDef(name=n, title=n.replace("_", " ").title(), color="#{:02x}{:02x}{:02x}".format(*colormap[i][:3]))
        for i, n in enumerate(names)
    ]
    return ClassSchema(id=tags.get("schema", "unknown"), classes=classes)


@dataclass(frozen=True)
class ClassCounts:
    """Pixels per class of a prediction COG (by the class names in its tags) and its size."""

    pixels: dict[str, int]
    width: int
    height: int


def class_counts(classes_path: Path) -> ClassCounts:
    with rasterio.open(classes_path) as src:
        names = src.tags().get("classes", "").split(",")
        counts = np.bincount(src.read(1).ravel(), minlength=256)
        width, height = src.width, src.height
    return ClassCounts({n: int(counts[i]) for i, n in enumerate(names)}, width, height)


def region_mosaic(paths: Sequence[Path], region: Region, nodata: int) -> tuple[np.ndarray, Affine, CRS]:
    """Mosaic single-band tile rasters over a region's bounds (the first valid pixel wins, nothing resampled)
    and blank what lies outside the region; returns (band, transform, crs)."""
    tiles = open_sources([(str(p), p) for p in paths])
    crs = tiles[0].crs
    union = Grid.covering(union_bounds(tiles, crs), crs, tiles[0].transform)
    footprint = transform_geom("EPSG:4326", crs, region.geometry)
    window = from_bounds(*shape(footprint).bounds, transform=union.transform).round_offsets().round_lengths()
    grid = Grid.of_window(union, window.crop(union.height, union.width))
    mosaic = read_mosaic(tiles, grid, bands=1, resampling="nearest")
    band = mosaic.data[0]
    band[~mosaic.valid] = nodata
    band[geometry_mask([footprint], out_shape=band.shape, transform=grid.transform)] = nodata
    return band, grid.transform, crs


@dataclass(frozen=True)
class ClassAreas:
    """Pixels per class index (all 256 uint8 values) of a class raster and the ground area of one pixel."""

    pixels: np.ndarray
    pixel_m2: float

    def m2(self, index: int) -> float:
        return int(self.pixels[index]) * self.pixel_m2

    def hectares(self, index: int) -> float:
        return self.m2(index) / 10_000


def class_areas(classes: np.ndarray, transform: Affine, crs: CRS) -> ClassAreas:
    """The area of each class of a uint8 class raster; a projected CRS only (a pixel in degrees has no area)."""
    if crs.is_geographic:
        raise MapError(f"map CRS {crs} is geographic; per-class areas need a projected CRS (e.g. UTM)")
    return ClassAreas(np.bincount(classes.ravel(), minlength=256), abs(transform.a * transform.e))


def area_hectares(classes: np.ndarray, transform: Affine, crs: CRS, names: Sequence[str]) -> dict[str, float]:
    areas = class_areas(classes, transform, crs)
    return {name: round(areas.hectares(i), 4) for i, name in enumerate(names)}


def map_item(
    region: Region,
    *,
    model_uri: str,
    model_slug: str,
    schema: ClassSchema,
    areas: Mapping[str, float],
    classes_path: Path,
    confidence_path: Path,
    preview_path: Path,
    item_path: Path,
) -> pystac.Item:
    """A STAC item for the map: COG assets with the classification extension, area per class as properties."""
    item = pystac.Item(
        id=f"landcover-{region.name}-{model_slug}",
        geometry=region.geometry,
        bbox=list(region.bbox),
        datetime=dt.datetime.now(dt.UTC),
        properties={
            "title": f"Land cover of {region.name} ({model_uri})",
            "pearl:region": region.name,
            "pearl:model": model_uri,
            "pearl:class_schema": schema.id,
            "pearl:area_ha": dict(areas),
        },
        stac_extensions=[CLASSIFICATION_EXTENSION],
    )
    classes = [
        {"value": i, "name": c.name, "description": c.title, "color_hint": c.color.lstrip("#").upper()}
        for i, c in enumerate(schema.classes)
    ]
    item.add_asset(
        "landcover",
        pystac.Asset(
            href=str(classes_path),
            media_type=pystac.MediaType.COG,
            roles=["data"],
            title="Land-cover classes",
            extra_fields={"classification:classes": classes, "nodata": NODATA_CLASS},
        ),
    )
    item.add_asset(
        "confidence",
        pystac.Asset(href=str(confidence_path), media_type=pystac.MediaType.COG, roles=["data"], title="Confidence"),
    )
    item.add_asset("preview", pystac.Asset(href=str(preview_path), media_type=pystac.MediaType.PNG, roles=["overview"]))
    item.set_self_href(str(item_path))
    item.save_object(include_self_link=False)
    return item


@dataclass(frozen=True)
class RegionMap:
    """What `write_region_map` wrote for a region under one model."""

    classes_path: Path
    confidence_path: Path
    preview_path: Path
    item_path: Path
    areas: dict[str, float]
    width: int
    height: int


def write_region_map(
    region: Region,
    *,
    class_paths: Sequence[Path],
    confidence_paths: Sequence[Path],
    out_dir: Path,
    model_uri: str,
    model_slug: str,
) -> RegionMap:
    """Mosaic a model's tile predictions over the region into class + confidence COGs, a PNG preview,
    per-class hectares and a STAC item, under `out_dir`."""
    from pearl_pipelines.geo.render import labels_png

    schema = schema_of(class_paths[0])
    classes, transform, crs = region_mosaic(class_paths, region, NODATA_CLASS)
    confidence, _, _ = region_mosaic(confidence_paths, region, CONFIDENCE_NODATA)
    tags = {
        "schema": schema.id,
        "classes": ",".join(schema.names),
        "pearl:region": region.name,
        "pearl:model": model_uri,
    }
    classes_path = write_cog(
        out_dir / "landcover.tif",
        classes,
        crs=crs,
        transform=transform,
        nodata=NODATA_CLASS,
        colormap=schema.colormap(),
        descriptions=["class"],
        tags=tags,
        overview_resampling="mode",
    )
    confidence_path = write_cog(
        out_dir / "confidence.tif",
        confidence,
        crs=crs,
        transform=transform,
        nodata=CONFIDENCE_NODATA,
        descriptions=["confidence"],
    )
    preview_path = Path(labels_png(classes, schema, out_dir / "preview.png", max_size=512))
    areas = area_hectares(classes, transform, crs, schema.names)
    item_path = out_dir / "item.json"
    map_item(
        region,
        model_uri=model_uri,
        model_slug=model_slug,
        schema=schema,
        areas=areas,
        classes_path=classes_path,
        confidence_path=confidence_path,
        preview_path=preview_path,
        item_path=item_path,
    )
    return RegionMap(
        classes_path, confidence_path, preview_path, item_path, areas, int(classes.shape[1]), int(classes.shape[0])
    )
