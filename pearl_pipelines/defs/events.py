"""Reading materializations back: what an upstream step of *this* run produced, else the latest matching one.

Project-scoped assets (label_set, embeddings, landcover_model) are unpartitioned and shared by every
project, so "the latest materialization" may belong to another project's concurrent run. Steps read
their upstream's event from their own run first, and only fall back to the newest one for their project.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg

AnyContext = dg.AssetExecutionContext | dg.AssetCheckExecutionContext | dg.OpExecutionContext


def _metadata_values(metadata: Mapping[str, dg.MetadataValue]) -> dict[str, Any]:
    return {k: getattr(v, "value", v) for k, v in metadata.items()}


def materialization_in_run(
    context: AnyContext, asset_key: dg.AssetKey, partition: str | None = None
) -> dict[str, Any] | None:
    """Metadata (plain values) of the last materialization of `asset_key` in this run, or None."""
    found = None
    for entry in context.instance.all_logs(context.run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        materialization = entry.asset_materialization
        if materialization is None or materialization.asset_key != asset_key:
            continue
        if partition is not None and materialization.partition != partition:
            continue
        found = _metadata_values(materialization.metadata)
    return found


def latest_materialization(
    context: AnyContext, asset_key: dg.AssetKey, *, match: Mapping[str, Any] | None = None, limit: int = 200
) -> dict[str, Any] | None:
    """Metadata of the newest materialization of `asset_key` whose metadata contains `match`."""
    records = context.instance.fetch_materializations(asset_key, limit=limit).records
    for record in records:  # newest first
        materialization = record.asset_materialization
        if materialization is None:
            continue
        values = _metadata_values(materialization.metadata)
        if all(values.get(k) == v for k, v in (match or {}).items()):
            return values
    return None


def upstream_metadata(
    context: AnyContext, asset_key: dg.AssetKey, *, match: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """This run's materialization of `asset_key` if it matches `match`, else the newest matching one."""
    in_run = materialization_in_run(context, asset_key)
    if in_run is not None and all(in_run.get(k) == v for k, v in (match or {}).items()):
        return in_run
    return latest_materialization(context, asset_key, match=match)
