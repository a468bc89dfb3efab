"""Maps: `landcover_map`, a region's mosaic COG (classes + confidence) from the champion's tile predictions,
with a STAC item for the map, per-class area in hectares and a PNG preview (written by geo/maps.py)."""

import hashlib

import dagster as dg

from pearl_pipelines.defs.imagery import load_region_or_fail
from pearl_pipelines.defs.inference import TileJob, predict_tiles, split_fresh, tile_metadata
from pearl_pipelines.defs.models import champion_ref
from pearl_pipelines.defs.partitions import region_partitions
from pearl_pipelines.defs.resources import GpuCompute, MlflowRegistry, RasterStore
from pearl_pipelines.geo.grid import aoi_to_tile_keys
from pearl_pipelines.geo.maps import MapError, write_region_map
from pearl_pipelines.layout import CLASSES_FILE, CONFIDENCE_FILE, PREDICTION_META
from pearl_pipelines.ml.refs import starter_model_name


class LandcoverMapConfig(dg.Config):
    model_name: str | None = None  # default: the region schema's starter family, pearl-starter-<schema>
    repredict: bool = False  # predict every tile again instead of reusing the champion's tile predictions


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
    keys = [k for k in aoi_to_tile_keys(region.geometry) if rasters.has_tile(k)]
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
    # The worker's predictions, fetched from the object store where it runs in a pod of its own.
    try:
        predicted = [rasters.files.local(rasters.predictions_dir(model.slug, k), marker=PREDICTION_META) for k in keys]
    except FileNotFoundError as exc:
        raise dg.Failure(description=f"a tile prediction of {model.uri} is missing: {exc}") from exc
    try:
        built = write_region_map(
            region,
            class_paths=[d / CLASSES_FILE for d in predicted],
            confidence_paths=[d / CONFIDENCE_FILE for d in predicted],
            out_dir=rasters.map_dir(region.name, model.slug),
            model_uri=model.uri,
            model_slug=model.slug,
        )
    except MapError as exc:
        raise dg.Failure(description=str(exc)) from exc
    rasters.files.publish(rasters.map_dir(region.name, model.slug), last=(built.item_path.name,))
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
