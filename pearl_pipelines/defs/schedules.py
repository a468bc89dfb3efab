"""Schedules: one regional refresh per region file in assets/regions that sets `refresh_cron`.

Region files are read leniently here (only `properties.refresh_cron`), so a broken file cannot take the
code location down; its runs fail with a dg.Failure that names the file and the problem.
"""

import json
import logging
from pathlib import Path

import dagster as dg

from pearl_pipelines.defs.jobs import regional_refresh_job
from pearl_pipelines.defs.resources import automation_enabled
from pearl_pipelines.geo.regions import regions_dir

logger = logging.getLogger(__name__)


def schedule_name(region: str) -> str:
    return f"regional_refresh_{region.replace('-', '_')}_schedule"


def build_regional_refresh_schedule(region: str, cron: str) -> dg.ScheduleDefinition:
    """Refresh one region's map on `cron`: new imagery, champion predictions, mosaic, STAC item, areas."""

    @dg.schedule(
        name=schedule_name(region),
        cron_schedule=cron,
        job=regional_refresh_job,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING if automation_enabled() else dg.DefaultScheduleStatus.STOPPED,
        description=f"Regional land-cover refresh of {region} ({cron}, UTC)",
    )
    def _schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        when = context.scheduled_execution_time
        return dg.RunRequest(
            partition_key=region,
            run_key=f"refresh-{region}-{when.isoformat() if when else 'manual'}",
            tags={"pearl/region": region},
        )

    return _schedule


def region_crons(assets_dir: Path | None = None) -> dict[str, str]:
    """region name -> refresh_cron, for the region files that set a valid one."""
    crons: dict[str, str] = {}
    for path in sorted(regions_dir(assets_dir).glob("*.geojson")):
        try:
            cron = (json.loads(path.read_text()).get("properties") or {}).get("refresh_cron")
        except (OSError, json.JSONDecodeError, AttributeError) as exc:
            logger.warning("region file %s is not readable GeoJSON (%s): no refresh schedule for it", path, exc)
            continue
        if cron is None:
            continue
        try:
            build_regional_refresh_schedule(path.stem, cron)  # Dagster validates the cron expression
        except (dg.DagsterInvalidDefinitionError, TypeError) as exc:
            logger.warning(
                "region file %s: refresh_cron %r is not a cron expression (%s): no schedule", path, cron, exc
            )
            continue
        crons[path.stem] = cron
    return crons


def regional_refresh_schedules(assets_dir: Path | None = None) -> list[dg.ScheduleDefinition]:
    return [build_regional_refresh_schedule(region, cron) for region, cron in region_crons(assets_dir).items()]
