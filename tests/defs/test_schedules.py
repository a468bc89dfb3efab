"""Regional refresh schedules: one per region file with a refresh_cron, each requesting its region's partition."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import dagster as dg
import pytest

from pearl_pipelines.defs.schedules import region_crons, regional_refresh_schedules, schedule_name
from pearl_pipelines.geo.regions import load_regions
from pearl_pipelines.settings import REPO_ROOT

ASSETS = REPO_ROOT / "assets"


def test_one_schedule_per_region_with_refresh_cron() -> None:
    regions = load_regions(ASSETS)
    with_cron = {name for name, region in regions.items() if region.properties.refresh_cron}
    schedules = {s.name: s for s in regional_refresh_schedules(ASSETS)}
    assert with_cron, "the shipped regions should include at least one with a refresh_cron"
    assert set(schedules) == {schedule_name(name) for name in with_cron}
    for name in with_cron:
        schedule = schedules[schedule_name(name)]
        assert schedule.cron_schedule == regions[name].properties.refresh_cron
        assert schedule.job_name == "regional_refresh_job"


@pytest.mark.parametrize("region", sorted(region_crons(ASSETS)))
def test_each_schedule_requests_its_region(region: str) -> None:
    (schedule,) = [s for s in regional_refresh_schedules(ASSETS) if s.name == schedule_name(region)]
    when = dt.datetime(2026, 3, 2, 4, 0, tzinfo=dt.UTC)
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(instance=instance, scheduled_execution_time=when)
        request = schedule(context)
    assert isinstance(request, dg.RunRequest)
    assert request.partition_key == region
    assert request.run_key == f"refresh-{region}-{when.isoformat()}"


def test_broken_region_files_get_no_schedule_but_do_not_break_loading(tmp_path: Path) -> None:
    regions_dir = tmp_path / "regions"
    shutil.copytree(ASSETS / "regions", regions_dir)
    (regions_dir / "broken.geojson").write_text("{not json")
    demo = json.loads((regions_dir / "demo.geojson").read_text())
    demo["properties"]["refresh_cron"] = "every monday"
    (regions_dir / "demo.geojson").write_text(json.dumps(demo))
    crons = region_crons(tmp_path)
    assert "broken" not in crons and "demo" not in crons
    assert crons == {k: v for k, v in region_crons(ASSETS).items() if k != "demo"}
