from __future__ import annotations

import numpy as np
from mlflow import MlflowClient
from shapely.geometry import Point

from pearl_pipelines.ml.metrics import compute_metrics
from pearl_pipelines.ml.models import LandcoverModel
from pearl_pipelines.ml.tracking import (
    CONFUSION_ARTIFACT,
    TAG_LABEL_SET,
    TAG_PARENT,
    TAG_VERSION,
    find_version_run,
    log_version,
)
from pearl_pipelines.ml.versions import ModelVersion
from tests.ml.conftest import labels_frame


def test_version_is_logged_with_lineage_metrics_and_checkpoint(mlflow_uri: str, fcn: LandcoverModel) -> None:
    parent = ModelVersion.from_model(fcn)
    names = parent.schema.names
    version = ModelVersion(
        id="v-tracked",
        parent_id=parent.id,
        base_model_id=parent.base_model_id,
        schema=parent.schema,
        weight=parent.weight + 1,
        bias=parent.bias,
        strategy="logistic_regression",
        strategy_params={"C": 1.0, "max_iter": 500},
        label_set_digest="ls-0123",
        metrics=compute_metrics(np.array([0, 1, 2, 3, 1]), np.array([0, 1, 2, 1, 1]), names, method="grouped_cv:5"),
        info={"seed": 0, "n_user_samples": 5, "new_classes": []},
    )
    labels = labels_frame([Point(500_130, 4_400_450)], ["water"])
    run_id = log_version(version, tracking_uri=mlflow_uri, labels=labels)

    run = MlflowClient(mlflow_uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "v-tracked"
    assert run.data.tags[TAG_VERSION] == "v-tracked" and run.data.tags[TAG_PARENT] == parent.id
    assert run.data.tags[TAG_LABEL_SET] == "ls-0123"
    assert run.data.metrics["macro_f1"] == version.metrics.macro_f1
    assert run.data.metrics["f1_built"] == 0.0 and run.data.metrics["recall_tree_canopy"] == 1.0
    assert run.data.params["strategy.C"] == "1.0" and run.data.params["classes"] == ",".join(names)
    client = MlflowClient(mlflow_uri)
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {CONFUSION_ARTIFACT, "metrics.json", "checkpoint"} <= top
    assert {a.path for a in client.list_artifacts(run_id, "checkpoint")} == {
        "checkpoint/version.json",
        "checkpoint/head.npz",
        "checkpoint/labels.parquet",
    }
    local = client.download_artifacts(run_id, "checkpoint")
    restored = ModelVersion.load(local)
    np.testing.assert_array_equal(restored.weight, version.weight)
    found = find_version_run(mlflow_uri, "v-tracked")
    assert found is not None and found.info.run_id == run_id
    assert find_version_run(mlflow_uri, "v-missing") is None
