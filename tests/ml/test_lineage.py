"""One owner of a registered version's identity: `ml.lineage` (tag keys, the lineage record, the MLflow client)."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest
from pydantic import ValidationError

from pearl_pipelines.classes import load_schema
from pearl_pipelines.ml.lineage import RUN_ID_TAG, TAG_BASE_MODEL_URI, TAG_SOURCE, Lineage
from pearl_pipelines.ml.versions import ModelVersion
from pearl_pipelines.settings import REPO_ROOT


def test_pearl_tags_are_written_in_one_module() -> None:
    """`"pearl.` string literals (MLflow tag keys) appear in ml/lineage.py only."""
    found = subprocess.run(
        ["grep", "-rn", '"pearl\\.', "pearl_pipelines", "review_app", "--include=*.py"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    assert found, "the tag keys must be somewhere"
    assert {line.split(":", 1)[0] for line in found} == {"pearl_pipelines/ml/lineage.py"}


def test_run_id_tag_is_defined_once() -> None:
    found = subprocess.run(
        ["grep", "-rnE", r"^RUN_ID_TAG\s*=", "pearl_pipelines", "review_app", "--include=*.py"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    assert [line.split(":", 1)[0] for line in found] == ["pearl_pipelines/ml/lineage.py"]


def test_every_field_is_a_tag_and_back() -> None:
    lineage = Lineage(
        version_id="v1",
        parent_version_id="v0",
        label_set_digest="ls-1",
        base_model_id="bb",
        schema_id="chesapeake4",
        base_model="models:/pearl-starter-chesapeake4/1",
        project_id=7,
        strategy="logistic_regression",
        parent_model="models:/pearl-project-7/2",
        app_version=3,
        label_store_digest="store-1",
        source="review-app",
        dagster_run_id="run-1",
        patches_digest="patches-1",
    )
    assert set(Lineage.KEYS) == set(Lineage.model_fields)
    tags = lineage.to_tags()
    assert len(tags) == len(Lineage.model_fields)
    assert all(re.fullmatch(r"pearl\.[a-z_]+", k) for k in tags if k != RUN_ID_TAG)
    assert tags[TAG_BASE_MODEL_URI] == "models:/pearl-starter-chesapeake4/1" and tags[TAG_SOURCE] == "review-app"
    assert Lineage.from_tags({**tags, "mlflow.runName": "x", "other": "y"}) == lineage


def test_unset_fields_are_not_tags_and_bad_values_fail() -> None:
    assert Lineage(source="dagster").to_tags() == {TAG_SOURCE: "dagster"}
    assert Lineage.from_tags(None) == Lineage()
    with pytest.raises(ValidationError, match="source"):
        Lineage.from_tags({TAG_SOURCE: "somewhere"})
    with pytest.raises(ValidationError, match="unknown"):
        Lineage(unknown="x")  # type: ignore[call-arg]


def test_of_version_takes_the_engine_lineage() -> None:
    schema = load_schema("chesapeake4")
    k = len(schema)
    version = ModelVersion("v2", None, "bb", schema, np.zeros((k, 3)), np.zeros(k), "logistic_regression")
    lineage = Lineage.of_version(version, project_id=1)
    assert (lineage.version_id, lineage.parent_version_id, lineage.label_set_digest) == ("v2", "", "")
    assert (lineage.schema_id, lineage.strategy, lineage.project_id) == ("chesapeake4", "logistic_regression", 1)
