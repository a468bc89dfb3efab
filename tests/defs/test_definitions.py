"""The code location loads, validates with the Dagster CLI, and its lineage reads right."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from pearl_pipelines.definitions import defs
from pearl_pipelines.settings import REPO_ROOT

LINEAGE = {
    "imagery_index": set(),
    "imagery_tiles": {"imagery_index"},
    "starter_model": {"imagery_index"},
    "embeddings": {"imagery_tiles", "starter_model"},
    "label_set": set(),
    "landcover_model": {"label_set", "embeddings", "starter_model"},
    "champion_model": {"landcover_model"},
    "predictions": {"imagery_tiles", "embeddings", "landcover_model"},
    "landcover_map": {"imagery_index", "predictions", "champion_model"},
}


@pytest.mark.parametrize("target", [["-w", "workspace.yaml"], ["-m", "pearl_pipelines.definitions"]])
def test_dagster_definitions_validate(target: list[str], tmp_path: Path) -> None:
    dagster = Path(sys.executable).parent / "dagster"
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "PEARL_HOME": str(tmp_path / "pearl")}
    done = subprocess.run(
        [str(dagster), "definitions", "validate", *target],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Validation successful" in done.stdout + done.stderr


def test_asset_lineage() -> None:
    graph = defs.resolve_asset_graph()
    parents = {
        key.to_user_string(): {p.to_user_string() for p in graph.get(key).parent_keys}
        for key in graph.get_all_asset_keys()
    }
    assert parents == LINEAGE


def test_partitions() -> None:
    graph = defs.resolve_asset_graph()
    tiles = {"imagery_tiles", "predictions"}
    regions = {"imagery_index", "landcover_map"}
    for key in graph.get_all_asset_keys():
        partitions = graph.get(key).partitions_def
        name = key.to_user_string()
        if name in tiles:
            assert isinstance(partitions, dg.DynamicPartitionsDefinition) and partitions.name == "tile_keys"
        elif name in regions:
            assert isinstance(partitions, dg.StaticPartitionsDefinition)
            assert set(partitions.get_partition_keys()) >= {"demo", "holdout", "train-a"}
        else:
            assert partitions is None, name


def test_champion_gate_is_a_blocking_check() -> None:
    graph = defs.resolve_asset_graph()
    key = dg.AssetCheckKey(dg.AssetKey("landcover_model"), "model_not_worse_than_champion")
    assert key in graph.asset_check_keys
    assert graph.get_check_spec(key).blocking
    label_job = defs.resolve_job_def("label_to_map_job")
    assert key in label_job.asset_layer.asset_graph.asset_check_keys


def test_jobs_select_what_their_automation_runs() -> None:
    selected = {
        name: {k.to_user_string() for k in defs.resolve_job_def(name).asset_layer.executable_asset_keys}
        for name in ("label_to_map_job", "regional_refresh_job", "aoi_onboarding_job", "starter_model_job")
    }
    assert selected["label_to_map_job"] == {
        "embeddings",
        "label_set",
        "landcover_model",
        "champion_model",
        "predictions",
    }
    assert selected["regional_refresh_job"] == {"imagery_index", "landcover_map"}
    assert selected["aoi_onboarding_job"] == {"embeddings"}
    assert selected["starter_model_job"] == {"starter_model"}
    assert {s.name for s in defs.sensors} == {"label_submission_sensor", "aoi_registration_sensor"}


def test_resources_by_deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    from pearl_pipelines.defs.resources import build_resources
    from pearl_pipelines.settings import Settings

    local = build_resources(Settings())
    assert local["compute"].mode == "local"
    monkeypatch.setenv("PEARL_K8S_WORKER_IMAGE", "registry.example/pearl-worker:1.0")
    k8s = build_resources(Settings(deployment="k8s"))
    assert k8s["compute"].mode == "k8s"
    assert k8s["compute"].image == "registry.example/pearl-worker:1.0"
    assert set(local) == set(k8s) == {"stac", "rasters", "label_store", "mlflow", "compute"}
