"""Partitions: dynamic tile keys (added when an AOI or region is registered) and static regions.

Tile-level assets (imagery tiles, predictions) are partitioned by tile key; region-level assets
(imagery index, landcover map) by region. No region x tile multi-partitions: dynamic keys are global,
a tile belongs to as many regions and AOIs as cover it.

A run can only target a contiguous *range* of partitions, and the tiles a run needs (an AOI's, a
project's) are rarely contiguous in the order keys were added. So runs target the smallest range
covering the tiles they need and name the tiles in their config; tile assets then materialize
exactly those partitions (see `assets_for_tiles` in inference.py and imagery.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import dagster as dg

from pearl_pipelines.settings import get_settings

TILE_KEYS = "tile_keys"

tile_keys_partitions = dg.DynamicPartitionsDefinition(name=TILE_KEYS)


def region_names(assets_dir: Path | None = None) -> list[str]:
    """Region names from the file names in assets/regions (validated when a run loads the file, not here,
    so one broken region file fails its own runs with a clear message instead of the whole code location)."""
    regions_dir = (assets_dir or get_settings().assets_dir) / "regions"
    return sorted(p.stem for p in regions_dir.glob("*.geojson"))


region_partitions = dg.StaticPartitionsDefinition(region_names())


def covering_range(partition_order: Sequence[str], tile_keys: Iterable[str]) -> dg.PartitionKeyRange:
    """Smallest range of `partition_order` (the instance's key order) that contains every key of `tile_keys`."""
    wanted = set(tile_keys)
    if not wanted:
        raise ValueError("no tile keys to cover")
    positions = [i for i, key in enumerate(partition_order) if key in wanted]
    missing = wanted - {partition_order[i] for i in positions}
    if missing:
        raise KeyError(f"tile keys not registered as {TILE_KEYS} partitions: {', '.join(sorted(missing)[:5])}")
    return dg.PartitionKeyRange(partition_order[min(positions)], partition_order[max(positions)])


def range_tags(key_range: dg.PartitionKeyRange) -> dict[str, str]:
    """Run tags that make a run target a partition range (what a single-run backfill sets)."""
    return {
        "dagster/asset_partition_range_start": key_range.start,
        "dagster/asset_partition_range_end": key_range.end,
    }


def keys_to_add(existing: Iterable[str], tile_keys: Iterable[str]) -> list[str]:
    """Keys of `tile_keys` not yet registered, in the order given, without duplicates."""
    seen = set(existing)
    new = []
    for key in tile_keys:
        if key not in seen:
            seen.add(key)
            new.append(key)
    return new
