"""Assets materialized with `dg.materialize`, a real label store and fake compute/registry.

The fakes answer like the real worker and MLflow registry; `test_e2e.py` runs the real ones.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import geopandas as gpd
import pytest

from pearl_pipelines.defs import checks, inference, labels, models
from pearl_pipelines.defs.imagery import imagery_index
from pearl_pipelines.defs.jobs import label_run_config
from pearl_pipelines.defs.partitions import TILE_KEYS, covering_range, range_tags
from pearl_pipelines.defs.resources import RasterStore, StacResource
from pearl_pipelines.ml.lineage import TAG_LABEL_STORE, TAG_SOURCE
from pearl_pipelines.ml.refs import project_model_name
from pearl_pipelines.settings import REPO_ROOT, get_settings
from tests.defs.conftest import STARTER, FakeCompute, FakeInvocation, FakeRegistry, Project

CHAMPION_CHECK = dg.AssetCheckKey(dg.AssetKey("landcover_model"), "model_not_worse_than_champion")


def test_label_set_snapshots_labels_as_geoparquet(project: Project, label_store_resource, rasters) -> None:
    result = dg.materialize(
        [labels.label_set, checks.label_set_geometry_valid],
        resources={"label_store": label_store_resource, "rasters": rasters},
        run_config={"ops": {"label_set": {"config": {"project_id": project.project_id}}}},
    )
    assert result.success
    (materialization,) = result.asset_materializations_for_node("label_set")
    meta = materialization.metadata
    digest = project.store.label_set_digest(project.project_id)
    assert meta["label_set_digest"].value == digest
    assert meta["n_labels"].value == 12
    frame = gpd.read_parquet(meta["uri"].value)
    assert len(frame) == 12 and frame.crs.to_epsg() == 4326
    assert set(frame["class_name"]) == {"tree_canopy", "low_vegetation", "water"}
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.passed


def test_bad_region_file_fails_fast_naming_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(REPO_ROOT / "assets", tmp_path / "assets")
    broken = tmp_path / "assets" / "regions" / "demo.geojson"
    data = json.loads(broken.read_text())
    data["properties"]["role"] = "sightseeing"
    broken.write_text(json.dumps(data))
    monkeypatch.setenv("PEARL_ASSETS_DIR", str(tmp_path / "assets"))
    get_settings.cache_clear()
    try:
        result = dg.materialize(
            [imagery_index],
            partition_key="demo",
            resources={"stac": StacResource(url="http://127.0.0.1:9"), "rasters": RasterStore(home=str(tmp_path))},
            raise_on_error=False,
        )
    finally:
        get_settings.cache_clear()
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.user_failure_data.description
    assert str(broken) in message and "role" in message
    # No retries: a broken file does not get better by waiting.
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]


def _tile_files(rasters: RasterStore, keys: list[str]) -> None:
    for key in keys:
        path = rasters.tile_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not read by the fake worker")


def _predict_answer(task: str, extras: dict) -> FakeInvocation:
    assert task == "predict"
    messages = [
        {
            "kind": "tile",
            "tile_key": t["key"],
            "classes": f"/predictions/{t['key']}/classes.tif",
            "confidence": f"/predictions/{t['key']}/confidence.tif",
            "mode": "head" if t["cache_dir"] else "full",
            "seconds": 0.1,
            "class_pixels": {"water": 10, "tree_canopy": 30},
            "width": 10,
            "height": 4,
        }
        for t in extras["tiles"]
    ]
    check = dg.AssetCheckResult(asset_key="predictions", check_name="predictions_cog_valid", passed=True)
    return FakeInvocation(messages=messages, results=[check])


def test_predictions_materialize_exactly_the_requested_tiles(
    project: Project, label_store_resource, rasters, registry: FakeRegistry, instance
) -> None:
    registry.add_version(project_model_name(project.project_id), 2, "current")
    others = ["15-1-1", "15-1-2"]  # registered between the project's tiles: inside the run's range
    order = [project.tile_keys[0], *others, *project.tile_keys[1:]]
    instance.add_dynamic_partitions(TILE_KEYS, order)
    _tile_files(rasters, order)
    cache = rasters.embeddings_dir(f"{STARTER}-v1", project.aoi_id)
    cache.mkdir(parents=True)
    (cache / "embeddings.json").write_text("{}")
    compute = FakeCompute().answer(_predict_answer)

    result = dg.materialize(
        [inference.predictions],
        instance=instance,
        resources={
            "label_store": label_store_resource,
            "rasters": rasters,
            "mlflow": registry,
            "stac": StacResource(url="http://127.0.0.1:9"),
            "compute": compute,
        },
        run_config={
            "ops": {"predictions": label_run_config(project.project_id, project.tile_keys)["ops"]["predictions"]}
        },
        tags=range_tags(covering_range(order, project.tile_keys)),
    )

    assert result.success
    ((task, extras),) = compute.calls
    assert task == "predict"
    assert [t["key"] for t in extras["tiles"]] == project.tile_keys
    assert all(t["cache_dir"] for t in extras["tiles"])  # head-only over the AOI's embedding cache
    # the project's latest version
    assert extras["model"] == {"name": project_model_name(project.project_id), "version": "2"}
    assert instance.get_materialized_partitions(dg.AssetKey("predictions")) == set(project.tile_keys)
    assert [e.passed for e in result.get_asset_check_evaluations()] == [True]


def _retrain_answer(candidate: float | None, champion: float | None, name: str = "pearl-project-1"):
    def answer(task: str, extras: dict) -> FakeInvocation:
        assert task == "retrain"
        # The project has no champion yet: its first version is compared with the starter it began from.
        assert extras["champion"] == {"name": STARTER, "version": "1"}
        assert extras["parent"] == {"name": STARTER, "version": "1"}
        assert extras["aliases"] == ["current"]
        metadata = {"model_uri": f"models:/{name}/1", "model_name": name, "model_version": 1}
        metadata["champion_model"] = f"models:/{STARTER}/1"
        if candidate is not None:
            metadata["holdout_macro_f1"] = candidate
        if champion is not None:
            metadata["champion_holdout_macro_f1"] = champion
        return FakeInvocation(materialization=dg.MaterializeResult(metadata=metadata))

    return answer


@pytest.mark.parametrize(
    ("candidate", "champion", "passed", "promoted"),
    [(0.55, 0.70, False, False), (0.80, 0.70, True, True), (0.695, 0.70, True, True), (None, None, True, False)],
    ids=["worse-blocks", "better-promotes", "within-tolerance", "no-holdout-keeps-champion"],
)
def test_champion_moves_only_past_the_blocking_check(
    candidate, champion, passed, promoted, project: Project, label_store_resource, rasters, registry, instance
) -> None:
    cache = rasters.embeddings_dir(f"{STARTER}-v1", project.aoi_id)
    cache.mkdir(parents=True)
    (cache / "embeddings.json").write_text("{}")
    name = project_model_name(project.project_id)
    registry.add_version(name, 1)
    config = {"project_id": project.project_id}
    result = dg.materialize(
        [labels.label_set, models.landcover_model, models.champion_model, checks.model_not_worse_than_champion],
        instance=instance,
        resources={
            "label_store": label_store_resource,
            "rasters": rasters,
            "mlflow": registry,
            "compute": FakeCompute().answer(_retrain_answer(candidate, champion, name)),
        },
        run_config={"ops": {"label_set": {"config": config}, "landcover_model": {"config": config}}},
        raise_on_error=False,
    )
    evaluation = next(e for e in result.get_asset_check_evaluations() if e.asset_check_key == CHAMPION_CHECK)
    assert evaluation.passed is passed
    champion_runs = result.asset_materializations_for_node("champion_model")
    if passed:
        (materialization,) = champion_runs
        assert materialization.metadata["promoted"].value is promoted
    else:
        assert champion_runs == []  # blocked: downstream of a failed blocking check does not run
    # The project's own champion moves; the starter's (which regional maps use by default) never does.
    assert registry.alias(name, "champion") == ("1" if promoted else None)
    assert registry.alias(STARTER, "champion") == "1"


@pytest.mark.parametrize("same_labels", [True, False], ids=["same-label-set-adopts", "other-label-set-refits"])
def test_label_run_adopts_the_review_apps_version_of_the_same_label_set(
    same_labels: bool, project: Project, label_store_resource, rasters, registry: FakeRegistry, instance
) -> None:
    """One burst, one fit: the review app registered a version for these labels; the Dagster run reuses it."""
    cache = rasters.embeddings_dir(f"{STARTER}-v1", project.aoi_id)
    cache.mkdir(parents=True)
    (cache / "embeddings.json").write_text("{}")
    name = project_model_name(project.project_id)
    digest = project.store.label_set_digest(project.project_id)
    registry.add_version(name, 1, **{TAG_LABEL_STORE: "older-labels", TAG_SOURCE: "review-app"})
    registry.add_version(name, 2, **{TAG_LABEL_STORE: digest if same_labels else "x", TAG_SOURCE: "review-app"})
    registry.add_version(name, 3, **{TAG_LABEL_STORE: digest, TAG_SOURCE: "dagster"})  # not the app's
    compute = FakeCompute().answer(_retrain_answer(0.8, 0.7, name))
    config = {"project_id": project.project_id}
    result = dg.materialize(
        [labels.label_set, models.landcover_model],
        instance=instance,
        resources={"label_store": label_store_resource, "rasters": rasters, "mlflow": registry, "compute": compute},
        run_config={"ops": {"label_set": {"config": config}, "landcover_model": {"config": config}}},
    )
    assert result.success
    ((_, extras),) = compute.calls
    assert extras["adopt"] == ({"name": name, "version": "2"} if same_labels else None)


def test_retrain_without_labels_fails_with_what_to_do(label_store, label_store_resource, rasters, registry) -> None:
    from tests.defs.conftest import add_project

    empty = add_project(label_store, "empty", n_labels=0)
    config = {"project_id": empty.project_id}
    result = dg.materialize(
        [labels.label_set, models.landcover_model],
        resources={
            "label_store": label_store_resource,
            "rasters": rasters,
            "mlflow": registry,
            "compute": FakeCompute(),
        },
        run_config={"ops": {"label_set": {"config": config}, "landcover_model": {"config": config}}},
        raise_on_error=False,
    )
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert "has no labels yet" in failure.step_failure_data.user_failure_data.description
