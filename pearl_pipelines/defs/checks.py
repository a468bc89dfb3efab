"""Asset checks: label geometries, the champion gate (blocking promotion), map COG validity, index coverage.

`predictions_cog_valid` is declared on the `predictions` asset and reported by the worker through Pipes.
"""

from pathlib import Path
from typing import Any

import dagster as dg
import geopandas as gpd
from shapely.ops import unary_union

from pearl_pipelines.defs.events import materialization_in_run, upstream_metadata
from pearl_pipelines.defs.imagery import load_region_or_fail
from pearl_pipelines.defs.partitions import region_partitions
from pearl_pipelines.geo.cog import validate_cog
from pearl_pipelines.settings import get_settings
from pearl_pipelines.stored_files import StoredFiles


def _local(uri: object) -> Path:
    """A file another run's pod wrote (metadata `uri`), fetched by its key from PEARL_STORAGE_URL's store when this
    PEARL_HOME lacks it; as it is without a store."""
    settings = get_settings()
    return StoredFiles.open(settings.storage_url, settings.home_abs).local(Path(str(uri)))


# A candidate may be this much worse (macro F1 on held-out labels) and still count as "not worse": two
# heads fitted on the same embeddings differ by about this much from sampling noise alone.
CHAMPION_TOLERANCE = 0.01


@dg.asset_check(
    asset="landcover_model",
    name="model_not_worse_than_champion",
    blocking=True,
    description="Macro F1 on held-out labels (never trained on by any version) is not below the champion's",
)
def model_not_worse_than_champion(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    """Blocks promotion (and re-prediction) when the candidate is measurably worse than the champion.

    Passes when there is no champion yet or too few held-out labels to compare; `champion_model` then
    decides whether the evidence suffices to move the alias.
    """
    model = materialization_in_run(context, dg.AssetKey("landcover_model"))
    if model is None:
        return dg.AssetCheckResult(passed=False, description="no landcover_model materialization in this run")
    candidate, champion = model.get("holdout_macro_f1"), model.get("champion_holdout_macro_f1")
    metadata: dict[str, Any] = {
        "candidate": str(model.get("model_uri")),
        "champion": str(model.get("champion_model", "none")),
        "n_labels_holdout": int(model.get("n_labels_holdout") or 0),
        "tolerance": CHAMPION_TOLERANCE,
    }
    if candidate is None or champion is None:
        reason = "no champion yet" if not model.get("champion_model") else "too few held-out labels to compare"
        return dg.AssetCheckResult(passed=True, metadata={**metadata, "compared": False, "reason": reason})
    metadata.update({"candidate_macro_f1": candidate, "champion_macro_f1": champion, "compared": True})
    passed = candidate >= champion - CHAMPION_TOLERANCE
    return dg.AssetCheckResult(
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=metadata,
        description=None if passed else f"candidate macro F1 {candidate:.3f} < champion {champion:.3f}",
    )


@dg.asset_check(asset="label_set", name="label_set_geometry_valid", blocking=True)
def label_set_geometry_valid(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    """Every label is a valid, non-empty Point or Polygon in lon/lat with a class name."""
    meta = upstream_metadata(context, dg.AssetKey("label_set"))
    if meta is None:
        return dg.AssetCheckResult(passed=False, description="no label_set materialization to check")
    frame = gpd.read_parquet(_local(meta["uri"]))
    bad_geom = frame[~frame.geometry.is_valid | frame.geometry.is_empty | ~frame.geom_type.isin(["Point", "Polygon"])]
    minx, miny, maxx, maxy = frame.total_bounds if len(frame) else (0, 0, 0, 0)
    lonlat = -180 <= minx <= maxx <= 180 and -90 <= miny <= maxy <= 90
    no_class = frame["class_name"].isna() | (frame["class_name"].astype(str).str.strip() == "")
    problems = []
    if len(bad_geom):
        problems.append(f"labels {', '.join(map(str, bad_geom['label_id'].tolist()[:10]))} have invalid geometry")
    if not lonlat:
        problems.append(f"bounds {tuple(frame.total_bounds)} are not lon/lat degrees")
    if no_class.any():
        problems.append(f"{int(no_class.sum())} labels have no class")
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={"n_labels": len(frame), "project_id": int(meta.get("project_id") or 0)},
        description="; ".join(problems) or None,
    )


@dg.asset_check(asset="landcover_map", name="landcover_map_cog_valid", partitions_def=region_partitions)
def landcover_map_cog_valid(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    """The map and confidence rasters are valid COGs and the map has classified pixels."""
    meta = materialization_in_run(context, dg.AssetKey("landcover_map"), partition=_partition(context))
    if meta is None:
        return dg.AssetCheckResult(passed=False, description="no landcover_map materialization in this run")
    problems = []
    for key in ("uri", "confidence_uri"):
        ok, errors, _ = validate_cog(Path(str(meta[key])))
        if not ok:
            problems.append(f"{meta[key]}: {'; '.join(errors)}")
    if not meta.get("total_ha"):
        problems.append("the map has no classified pixel")
    return dg.AssetCheckResult(passed=not problems, description="; ".join(problems) or None)


@dg.asset_check(asset="imagery_index", name="imagery_index_covers_region", partitions_def=region_partitions)
def imagery_index_covers_region(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    """The indexed items' footprints are valid and cover the region (a gap means tiles without imagery)."""
    partition = _partition(context)
    meta = materialization_in_run(context, dg.AssetKey("imagery_index"), partition=partition)
    if meta is None or partition is None:
        return dg.AssetCheckResult(passed=False, description="no imagery_index materialization in this run")
    region = load_region_or_fail(partition)
    frame = gpd.read_parquet(_local(meta["uri"]))
    from shapely.geometry import shape

    invalid = int((~frame.geometry.is_valid).sum())
    area = shape(region.geometry)
    covered = unary_union(list(frame.geometry)).intersection(area).area / area.area if len(frame) else 0.0
    return dg.AssetCheckResult(
        passed=invalid == 0 and covered >= 0.99,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"coverage": round(covered, 4), "invalid_footprints": invalid},
    )


def _partition(context: dg.AssetCheckExecutionContext) -> str | None:
    try:
        return context.partition_key
    except Exception:
        return None
