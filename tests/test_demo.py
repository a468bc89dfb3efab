"""`make demo`'s job plan: a model the review app can map with comes first, whatever the machine."""

from __future__ import annotations

import shutil
from pathlib import Path

from pearl_pipelines.demo import STARTER_SCHEMAS, first_run_plan
from pearl_pipelines.ml.shipped import SHIPPED_DIR
from pearl_pipelines.settings import REPO_ROOT, Settings
from review_app.schemas import DEFAULT_BASE_MODEL


def starter_schema(step_config: dict) -> tuple[str, str]:
    config = step_config["ops"]["starter_model"]["config"]
    return config["schema_id"], config["source"]


def test_first_run_registers_the_review_apps_starter_first_from_shipped_weights(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    plan = first_run_plan(settings, registered=lambda schema_id: False)
    assert [s.job for s in plan] == ["starter_model_job", "regional_refresh_job", "starter_model_job"]
    # The review app's demo project maps with this schema's starter: it is the first thing registered,
    # from the weights shipped in assets/ (seconds), not trained (15 min on a CPU without AVX-512).
    assert f"models:/pearl-starter-{STARTER_SCHEMAS[0]}@starter" == DEFAULT_BASE_MODEL
    assert starter_schema(plan[0].run_config) == (STARTER_SCHEMAS[0], "shipped")
    assert plan[1].tags == {"dagster/partition": "demo"}
    assert [starter_schema(s.run_config) for s in plan[2:]] == [(s, "shipped") for s in STARTER_SCHEMAS[1:]]


def test_without_shipped_weights_the_first_run_trains_but_keeps_the_order(tmp_path: Path) -> None:
    assets = tmp_path / "assets"
    shutil.copytree(REPO_ROOT / "assets", assets, ignore=shutil.ignore_patterns(SHIPPED_DIR))
    plan = first_run_plan(Settings(home=tmp_path, assets_dir=assets), registered=lambda schema_id: False)
    assert [starter_schema(s.run_config) for s in plan if s.job == "starter_model_job"] == [
        (s, "train") for s in STARTER_SCHEMAS
    ]
    assert plan[0].job == "starter_model_job" and plan[1].job == "regional_refresh_job"


def test_later_runs_only_refresh_the_map(tmp_path: Path) -> None:
    plan = first_run_plan(Settings(home=tmp_path), registered=lambda schema_id: True)
    assert [s.job for s in plan] == ["regional_refresh_job"]
