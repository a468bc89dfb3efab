"""The Dagster code location: the domain modules of `pearl_pipelines/defs`, resources by deployment.

`dagster dev -w workspace.yaml` (or `-m pearl_pipelines.definitions`) loads `defs`. Jobs run in
process: heavy compute already runs out of process through Pipes, and a subprocess per step would
add seconds to every label-to-map run.
"""

import dagster as dg

from pearl_pipelines.defs import checks, imagery, inference, jobs, labels, maps, models, schedules, sensors
from pearl_pipelines.defs.resources import build_resources

ASSET_MODULES = (imagery, models, labels, inference, maps)

defs = dg.Definitions(
    assets=dg.load_assets_from_modules(ASSET_MODULES),
    asset_checks=dg.load_asset_checks_from_modules([*ASSET_MODULES, checks]),
    jobs=[jobs.label_to_map_job, jobs.aoi_onboarding_job, jobs.regional_refresh_job, jobs.starter_model_job],
    sensors=[sensors.label_submission_sensor, sensors.aoi_registration_sensor],
    schedules=schedules.regional_refresh_schedules(),  # one per region file with a refresh_cron (factory)
    resources=build_resources(),
    executor=dg.in_process_executor,
)
