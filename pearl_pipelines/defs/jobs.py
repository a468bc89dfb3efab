"""Jobs: the label loop, AOI onboarding, regional refresh, starter training; and the label run request
that both the sensor and the direct trigger (`pearl_pipelines.trigger`) submit."""

from collections.abc import Sequence
from typing import Any

import dagster as dg

from pearl_pipelines.defs.partitions import covering_range, range_tags

PROJECT_TAG = "pearl/project_id"
LABEL_EVENT_TAG = "pearl/label_event_id"  # the project's last label event the run includes

label_to_map_job = dg.define_asset_job(
    "label_to_map_job",
    selection=dg.AssetSelection.assets("embeddings", "label_set", "landcover_model", "champion_model", "predictions"),
    description="New labels -> label set -> retrained model (promoted if not worse) -> the project's tiles predicted.",
)

aoi_onboarding_job = dg.define_asset_job(
    "aoi_onboarding_job",
    selection=dg.AssetSelection.assets("embeddings"),
    description="A new review AOI: its imagery tiles and embedding cache, ready for the first retrain.",
)

regional_refresh_job = dg.define_asset_job(
    "regional_refresh_job",
    selection=dg.AssetSelection.assets("imagery_index", "landcover_map"),  # partitioned by region
    description="New imagery via STAC -> champion predictions -> mosaic COG, STAC item and area per class.",
)

starter_model_job = dg.define_asset_job("starter_model_job", selection=dg.AssetSelection.assets("starter_model"))


def label_run_config(project_id: int, tile_keys: Sequence[str]) -> dict[str, Any]:
    """Run config of `label_to_map_job` for one project; predictions cover exactly `tile_keys`."""
    project = {"project_id": project_id}
    return {
        "ops": {
            "embeddings": {"config": project},
            "label_set": {"config": project},
            "landcover_model": {"config": project},
            "predictions": {"config": {**project, "tile_keys": list(tile_keys)}},
        }
    }


def label_run_tags(
    project_id: int, partition_order: Sequence[str], tile_keys: Sequence[str], label_event_id: int
) -> dict[str, str]:
    """Tags: the partition range covering the project's tiles (in the instance's key order), the project,
    and its last label event (so the sensor and the direct trigger never both submit the same labels)."""
    return {
        **range_tags(covering_range(partition_order, tile_keys)),
        PROJECT_TAG: str(project_id),
        LABEL_EVENT_TAG: str(label_event_id),
    }


def label_run_request(
    project_id: int,
    tile_keys: Sequence[str],
    partition_order: Sequence[str],
    label_event_id: int,
    run_key: str | None = None,
) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=run_key,
        run_config=label_run_config(project_id, tile_keys),
        tags=label_run_tags(project_id, partition_order, tile_keys, label_event_id),
    )


def label_run_exists(instance: dg.DagsterInstance, project_id: int, label_event_id: int) -> bool:
    """Whether a label_to_map_job run for these labels was already submitted (e.g. by the trigger)."""
    filters = dg.RunsFilter(
        job_name=label_to_map_job.name,
        tags={PROJECT_TAG: str(project_id), LABEL_EVENT_TAG: str(label_event_id)},
    )
    return bool(instance.get_run_records(filters=filters, limit=1))


def project_tile_keys(store: Any, project_id: int) -> list[str]:
    """Tiles a project's model re-predicts: those of its AOIs (where its embeddings and labels are)."""
    keys: list[str] = []
    for aoi in store.list_aois(project_id):
        keys += [k for k in aoi.tile_keys if k not in keys]
    return keys
