"""Imagery: `imagery_index` (STAC search per region -> GeoParquet) and `imagery_tiles` (one RGBN COG per tile key).

STAC and network steps retry with exponential backoff; a broken region file or an area without imagery
fails at once with a message that says what to fix (retrying cannot help there).
"""

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from pearl_pipelines.defs.partitions import TILE_KEYS, keys_to_add, region_partitions, tile_keys_partitions
from pearl_pipelines.defs.resources import RasterStore, StacResource
from pearl_pipelines.geo.grid import aoi_to_tile_keys
from pearl_pipelines.geo.imagery_index import index_frame, tile_sources
from pearl_pipelines.geo.regions import Region, RegionFileError, load_region_file, regions_dir
from pearl_pipelines.geo.stac import StacError
from pearl_pipelines.geo.tiles import cut_tiles, search_tile_sources
from pearl_pipelines.settings import get_settings

# STAC APIs and blob storage fail transiently (timeouts, 5xx, throttling): retry 1 s, 2 s, 4 s (+-jitter).
STAC_RETRY = dg.RetryPolicy(max_retries=3, delay=1.0, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


def load_region_or_fail(name: str, assets_dir: Path | None = None) -> Region:
    """The region file for a partition, or a dg.Failure naming the file and what is wrong with it."""
    path = regions_dir(assets_dir or get_settings().assets_dir) / f"{name}.geojson"
    if not path.is_file():
        raise dg.Failure(description=f"region file {path} does not exist", allow_retries=False)
    try:
        return load_region_file(path)
    except RegionFileError as exc:
        raise dg.Failure(
            description=str(exc), metadata={"region_file": dg.MetadataValue.path(str(path))}, allow_retries=False
        ) from exc


def register_tile_keys(instance: dg.DagsterInstance, tile_keys: Sequence[str]) -> list[str]:
    """Add tile keys that are not yet `tile_keys` partitions; returns the keys added."""
    new = keys_to_add(instance.get_dynamic_partitions(TILE_KEYS), tile_keys)
    if new:
        instance.add_dynamic_partitions(TILE_KEYS, new)
    return new


def fetch_tiles(
    rasters: RasterStore,
    keys: Sequence[str],
    sources_for: Callable[[str], Sequence[tuple[str, str]]],
    *,
    force: bool = False,
    without_imagery: list[str] | None = None,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Cut the tiles that need it; yields (key, materialization metadata) per tile written, in key order.

    Tiles no imagery covers are skipped and appended to `without_imagery` (an AOI may reach past the imagery).
    With an object store, a tile only the store has is fetched first (to compare its sources), and each tile
    written is published to its key.
    """
    files = rasters.files

    def path_for(key: str) -> Path:
        path = rasters.tile_path(key)
        if files.remote and not force:
            files.try_local(path)
        return path

    for key, cut in cut_tiles(keys, sources_for, path_for if files.remote else rasters.tile_path, force=force):
        if cut is None:
            if without_imagery is not None:
                without_imagery.append(key)
            continue
        files.publish(cut.path)
        yield (
            key,
            {
                "uri": dg.MetadataValue.path(str(cut.path)),
                "sources": ", ".join(cut.sources),
                "valid_fraction": round(cut.valid_fraction, 4),
                "width": cut.width,
                "height": cut.height,
                "seconds": round(cut.seconds, 3),
            },
        )


class ImageryIndexConfig(dg.Config):
    datetime: str | None = None  # STAC datetime filter, e.g. "2021-01-01/2021-12-31"; default: all imagery
    refetch_tiles: bool = False  # cut every tile again, not only new or changed ones


@dg.asset(
    partitions_def=region_partitions,
    group_name="imagery",
    kinds={"stac", "geoparquet"},
    retry_policy=STAC_RETRY,
)
def imagery_index(
    context: dg.AssetExecutionContext, config: ImageryIndexConfig, stac: StacResource, rasters: RasterStore
) -> dg.MaterializeResult:
    """STAC items covering a region, as GeoParquet; registers the region's tile keys and brings its
    imagery tiles up to date (new or changed imagery only), reporting each as an `imagery_tiles` partition."""
    region = load_region_or_fail(context.partition_key)
    keys = aoi_to_tile_keys(region.geometry)
    added = register_tile_keys(context.instance, keys)
    catalog = stac.catalog([region.name] if stac.source == "local" else None)
    try:
        items = catalog.search(intersects=region.geometry, datetime=config.datetime)
    except StacError as exc:  # transient until proven otherwise: the retry policy takes it from here
        raise RuntimeError(f"STAC search for region {region.name} failed: {exc}") from exc
    if not items:
        raise dg.Failure(
            description=(
                f"no imagery at {catalog.url} (collections {catalog.collections or 'all'}) intersects region "
                f"{region.name}; generate it (`pearl generate --regions {region.name}`) or ingest imagery"
            ),
            allow_retries=False,
        )
    frame = index_frame(items, catalog.image_asset)
    path = rasters.index_path(region.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path)
    rasters.files.publish(path)
    fetched = 0

    def sources_for(key: str) -> list[tuple[str, str]]:
        return tile_sources(frame, key)

    covered = [k for k in keys if sources_for(k)]
    missing = sorted(set(keys) - set(covered))
    for key, meta in fetch_tiles(rasters, covered, sources_for, force=config.refetch_tiles):
        fetched += 1
        context.log_event(
            dg.AssetMaterialization(
                asset_key="imagery_tiles",
                partition=key,
                metadata={**meta, "region": region.name, "via": "imagery_index"},
            )
        )
    return dg.MaterializeResult(
        metadata={
            "region": region.name,
            "uri": dg.MetadataValue.path(str(path)),
            "stac_url": dg.MetadataValue.url(catalog.url) if catalog.url.startswith("http") else catalog.url,
            "n_items": len(frame),
            "newest_item": max(frame["datetime"].dropna(), default=""),
            "n_tiles": len(keys),
            "tile_keys_added": len(added),
            "tiles_fetched": fetched,
            "tiles_without_imagery": ", ".join(missing) or "none",
        }
    )


class ImageryTilesConfig(dg.Config):
    # Restrict to these keys of the run's partition range (empty: the whole range).
    tile_keys: list[str] = Field(default_factory=list)
    refetch: bool = False


def selected_keys(context: dg.AssetExecutionContext, wanted: Sequence[str]) -> list[str]:
    """The run's partition keys, narrowed to `wanted` when given (runs target the range covering them)."""
    keys = list(context.partition_keys)
    if not wanted:
        return keys
    in_run = set(keys)
    outside = [k for k in wanted if k not in in_run]
    if outside:
        raise dg.Failure(
            description=f"tile keys {', '.join(outside[:5])} are outside this run's partition range "
            f"{keys[0]}..{keys[-1]}",
            allow_retries=False,
        )
    return [k for k in keys if k in set(wanted)]


@dg.asset(
    partitions_def=tile_keys_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[dg.AssetDep(imagery_index, partition_mapping=dg.AllPartitionMapping())],
    output_required=False,
    group_name="imagery",
    kinds={"cog"},
    retry_policy=STAC_RETRY,
)
def imagery_tiles(
    context: dg.AssetExecutionContext, config: ImageryTilesConfig, stac: StacResource, rasters: RasterStore
) -> Iterator[dg.AssetMaterialization]:
    """RGBN COG per tile key, mosaicked from the STAC items under the tile, on the imagery's own pixel grid.

    One step handles a whole partition range; a tile is materialized only when it is written (tiles
    without imagery are logged and left out).
    """
    catalog = stac.catalog()
    keys = selected_keys(context, config.tile_keys)
    without: list[str] = []
    sources_for = partial(search_tile_sources, catalog)
    for key, meta in fetch_tiles(rasters, keys, sources_for, force=config.refetch, without_imagery=without):
        yield dg.AssetMaterialization(asset_key=context.asset_key, partition=key, metadata=meta)
    if without:
        context.log.warning(f"no imagery covers tiles {', '.join(without)}: not materialized")
