"""Maps: `landcover_map`, a region's mosaic COG (classes + confidence) from the champion's tile predictions,
with a STAC item for the map, per-class area in hectares and a PNG preview."""

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pystac
import rasterio
from affine import Affine
from rasterio.features import geometry_mask
from rasterio.merge import merge
from rasterio.warp import transform_geom
from rasterio.windows import from_bounds
from shapely.geometry import shape

from pearl_pipelines.classes import NODATA_CLASS, ClassDef, ClassSchema
from pearl_pipelines.defs.imagery import load_region_or_fail
from pearl_pipelines.defs.inference import TileJob, predict_tiles, split_fresh, tile_metadata
from pearl_pipelines.defs.models import ModelRef, champion_ref, starter_model_name
from pearl_pipelines.defs.partitions import region_partitions
from pearl_pipelines.defs.resources import GpuCompute, MlflowRegistry, RasterStore
from pearl_pipelines.geo.cog import write_cog
from pearl_pipelines.geo.grid import aoi_to_tile_keys
from pearl_pipelines.geo.regions import Region
from pearl_pipelines.worker.layout import CLASSES_FILE, CONFIDENCE_FILE

CLASSIFICATION_EXTENSION = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"


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


def mosaic(paths: Sequence[Path], region: Region, nodata: int) -> tuple[np.ndarray, Any, Any]:
    """Merge tile rasters (first valid pixel wins), crop to the region's bounds, blank what lies outside it."""
    with rasterio.open(paths[0]) as src:
        crs = src.crs
    footprint = transform_geom("EPSG:4326", crs, region.geometry)
    bounds = shape(footprint).bounds
    data, transform = merge([str(p) for p in paths], nodata=nodata, method="first")
    window = from_bounds(*bounds, transform=transform).round_offsets().round_lengths()
    row0, col0 = max(int(window.row_off), 0), max(int(window.col_off), 0)
    band = data[0, row0 : row0 + int(window.height), col0 : col0 + int(window.width)]
    transform = transform @ Affine.translation(col0, row0)
    outside = geometry_mask([footprint], out_shape=band.shape, transform=transform)
    band = np.ascontiguousarray(band)
    band[outside] = nodata
    return band, transform, crs


def area_hectares(classes: np.ndarray, transform: Any, crs: Any, names: Sequence[str]) -> dict[str, float]:
    if crs.is_geographic:
        raise dg.Failure(description=f"map CRS {crs} is geographic; per-class areas need a projected CRS (e.g. UTM)")
    pixel_m2 = abs(transform.a * transform.e)
    counts = np.bincount(classes.ravel(), minlength=256)
    return {name: round(float(counts[i]) * pixel_m2 / 10_000, 4) for i, name in enumerate(names)}


def map_item(
    region: Region,
    *,
    model: ModelRef,
    schema: ClassSchema,
    areas: dict[str, float],
    classes_path: Path,
    confidence_path: Path,
    preview_path: Path,
    item_path: Path,
) -> pystac.Item:
    """A STAC item for the map: COG assets with the classification extension, area per class as properties."""
    item = pystac.Item(
        id=f"landcover-{region.name}-{model.slug}",
        geometry=region.geometry,
        bbox=list(region.bbox),
        datetime=dt.datetime.now(dt.UTC),
        properties={
            "title": f"Land cover of {region.name} ({model.uri})",
            "pearl:region": region.name,
            "pearl:model": model.uri,
            "pearl:class_schema": schema.id,
            "pearl:area_ha": areas,
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


class LandcoverMapConfig(dg.Config):
    model_name: str | None = None  # default: the region schema's starter family, pearl-starter-<schema>
    repredict: bool = False  # predict every tile again instead of reusing the champion's tile predictions


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


def write_region_map(rasters: RasterStore, region: Region, model: ModelRef, keys: Sequence[str]) -> RegionMap:
    """Mosaic the model's tile predictions over the region into class + confidence COGs, a PNG preview,
    per-class hectares and a STAC item, under `rasters.map_dir(region, model)`."""
    from pearl_pipelines.geo.render import labels_png

    class_paths = [rasters.predictions_dir(model.slug, k) / CLASSES_FILE for k in keys]
    schema = schema_of(class_paths[0])
    classes, transform, crs = mosaic(class_paths, region, NODATA_CLASS)
    confidence, _, _ = mosaic([rasters.predictions_dir(model.slug, k) / CONFIDENCE_FILE for k in keys], region, 0)
    out = rasters.map_dir(region.name, model.slug)
    tags = {
        "schema": schema.id,
        "classes": ",".join(schema.names),
        "pearl:region": region.name,
        "pearl:model": model.uri,
    }
    classes_path = write_cog(
        out / "landcover.tif",
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
        out / "confidence.tif", confidence, crs=crs, transform=transform, nodata=0, descriptions=["confidence"]
    )
    preview_path = Path(labels_png(classes, schema, out / "preview.png", max_size=512))
    areas = area_hectares(classes, transform, crs, schema.names)
    item_path = out / "item.json"
    map_item(
        region,
        model=model,
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


@dg.asset(
    partitions_def=region_partitions,
    deps=[
        "imagery_index",
        dg.AssetDep("predictions", partition_mapping=dg.AllPartitionMapping()),
        "champion_model",
    ],
    group_name="maps",
    kinds={"cog", "stac"},
)
def landcover_map(
    context: dg.AssetExecutionContext,
    *,
    config: LandcoverMapConfig,
    rasters: RasterStore,
    mlflow: MlflowRegistry,
    compute: GpuCompute,
) -> dg.MaterializeResult:
    """Regional land-cover map made with the champion: tiles the champion has not predicted yet are
    predicted (each reported as a `predictions` partition), then mosaicked and clipped to the region."""
    region = load_region_or_fail(context.partition_key)
    name = config.model_name or starter_model_name(region.properties.class_schema)
    model = champion_ref(mlflow, name)
    if model is None:
        raise dg.Failure(
            description=f"{name} has no champion yet; materialize starter_model first", allow_retries=False
        )
    keys = [k for k in aoi_to_tile_keys(region.geometry) if rasters.tile_path(k).is_file()]
    if not keys:
        raise dg.Failure(
            description=f"no imagery tiles for region {region.name}; materialize imagery_index[{region.name}] first",
            allow_retries=False,
        )
    _, todo = split_fresh(rasters, model, keys, force=config.repredict, whole_tile=True)
    if todo:
        results, _ = predict_tiles(
            context,
            compute=compute,
            rasters=rasters,
            mlflow=mlflow,
            model=model,
            tiles=[TileJob(k, None) for k in todo],
            report_check=False,
        )
        for result in results:
            context.log_event(
                dg.AssetMaterialization(
                    asset_key="predictions",
                    partition=result["tile_key"],
                    metadata=tile_metadata(result, model, region=region.name, via="landcover_map"),
                )
            )
    built = write_region_map(rasters, region, model, keys)
    total = sum(built.areas.values()) or 1.0
    table = "\n".join(
        ["| class | hectares | share |", "|---|---|---|"]
        + [f"| {n} | {ha:,.2f} | {ha / total:.1%} |" for n, ha in built.areas.items() if ha]
    )
    return dg.MaterializeResult(
        metadata={
            "region": region.name,
            "uri": dg.MetadataValue.path(str(built.classes_path)),
            "confidence_uri": dg.MetadataValue.path(str(built.confidence_path)),
            "stac_item": dg.MetadataValue.path(str(built.item_path)),
            "preview": dg.MetadataValue.md(f"![{region.name}]({built.preview_path})"),
            "preview_path": dg.MetadataValue.path(str(built.preview_path)),
            "model_uri": model.uri,
            "n_tiles": len(keys),
            "tiles_predicted": len(todo),
            "tiles_reused": len(keys) - len(todo),
            "total_ha": round(total, 2),
            "area_ha": dg.MetadataValue.md(table),
            "area_ha_json": dg.MetadataValue.json(built.areas),
            "width": built.width,
            "height": built.height,
        },
        data_version=dg.DataVersion(hashlib.sha256(f"{model.slug}:{','.join(keys)}".encode()).hexdigest()[:16]),
    )
