"""Typed worker contracts: each task's extras are one pydantic model, checked before the task runs."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from pearl_pipelines.classes import load_schema
from pearl_pipelines.ml.versions import ModelVersion
from pearl_pipelines.worker.contracts import PredictInput, RegisteredRef, RetrainInput, TaskInput, Tile
from pearl_pipelines.worker.run import TASK_NAMES
from pearl_pipelines.worker.tasks import TASKS


def _pipes(extras: dict[str, Any]) -> Any:
    return SimpleNamespace(extras=extras)


def test_the_task_list_is_the_registry() -> None:
    assert tuple(TASKS) == TASK_NAMES
    assert all(issubclass(task.contract, TaskInput) for task in TASKS.values())


def test_an_unknown_field_fails_before_the_task_runs() -> None:
    with pytest.raises(ValidationError) as failed:
        TASKS["probe"](_pipes({"echo": "hi", "ecoh": "typo"}))
    assert "ecoh" in str(failed.value) and "Extra inputs are not permitted" in str(failed.value)


def test_a_malformed_field_is_named() -> None:
    extras = PredictInput(
        mlflow_uri="file:///tmp/mlruns",
        model=RegisteredRef(name="m", version="1"),
        tiles=[Tile(key="k", tile_path="tiles/k.tif", out_dir="out/k")],
    ).extras()
    extras["tiles"][0].pop("tile_path")
    extras["report_check"] = "maybe"
    with pytest.raises(ValidationError) as failed:
        TASKS["predict"].parse(extras)
    message = str(failed.value)
    assert "tiles.0.tile_path" in message and "report_check" in message


def test_retrain_extras_round_trip() -> None:
    schema = load_schema("chesapeake9")
    task = RetrainInput(
        mlflow_uri="file:///tmp/mlruns",
        project_id=3,
        label_set="labels/3.parquet",
        label_set_digest="d",
        schema=schema,
        parent=RegisteredRef(name="p", version=2),  # type: ignore[arg-type]  (a number is taken as its text)
        caches=["cache/1"],
        report_dir="reports",
    )
    extras = task.extras()
    assert extras["schema"]["id"] == "chesapeake9" and extras["parent"] == {"name": "p", "version": "2"}
    parsed = TASKS["retrain"].parse(extras)
    assert parsed == task and parsed.base_ref == parsed.parent


def test_fit_choices_are_typed_fields_of_a_version(tmp_path) -> None:
    schema = load_schema("chesapeake4")
    k = len(schema)
    version = ModelVersion(
        "v1", None, "bb", schema, np.zeros((k, 3)), np.zeros(k), "logistic_regression",
        replay_scale=0.3, prior_scale=1.5, new_classes=["solar"],
    )  # fmt: skip
    manifest = json.loads((version.save(tmp_path / "v1") / "version.json").read_text())
    assert (manifest["replay_scale"], manifest["prior_scale"], manifest["new_classes"]) == (0.3, 1.5, ["solar"])
    assert not {"replay_scale", "prior_scale", "new_classes"} & set(manifest["info"])
    # A checkpoint saved before the typed fields kept the choices as keys of its info: they load as fields.
    for key in ("replay_scale", "prior_scale", "new_classes"):
        manifest["info"][key] = manifest.pop(key)
    (tmp_path / "v1" / "version.json").write_text(json.dumps(manifest))
    loaded = ModelVersion.load(tmp_path / "v1")
    assert (loaded.replay_scale, loaded.prior_scale, loaded.new_classes) == (0.3, 1.5, ["solar"])
    assert loaded.info == {}
    root = ModelVersion("v0", None, "bb", schema, np.zeros((k, 3)), np.zeros(k), "starter")
    assert (root.replay_scale, root.prior_scale, root.new_classes) == (None, None, [])
