"""MLflow tracking: one run per model version (lineage as tags, the checkpoint as artifacts), one per inference task.

Plain `mlflow.MlflowClient` calls against an explicit tracking URI: no global `mlflow.set_tracking_uri`,
no active-run state, so concurrent callers cannot log into each other's runs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import httpx
from mlflow.entities import Metric, Param

from pearl_pipelines.http_probe import probe
from pearl_pipelines.ml.lineage import (  # noqa: F401  (re-exported: ml.lineage owns a version's runs and tags)
    CHECKPOINT_ARTIFACT_DIR,
    CONFUSION_ARTIFACT,
    EXPERIMENT,
    METRICS_ARTIFACT,
    RUN_NAME_TAG,
    TAG_BASE_MODEL,
    TAG_LABEL_SET,
    TAG_PARENT,
    TAG_SCHEMA,
    TAG_VERSION,
    experiment_id,
    find_version_run,
    log_version,
    mlflow_client,
    version_params,
    version_tags,
)

INFERENCE_EXPERIMENT = "pearl-inference"


def mlflow_reachable(uri: str, timeout: float = 1.0) -> bool:
    """Whether the tracking server answers its /health probe (a file or database store is local: always).

    MLflow's client retries for minutes on a dead server; callers that can do without it ask this first.
    """
    if not uri.startswith("http"):
        return True
    try:
        return probe(f"{uri.rstrip('/')}/health", timeout).status_code == 200
    except httpx.HTTPError:
        return False


def log_inference_run(
    tracking_uri: str,
    *,
    tags: Mapping[str, str],
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    experiment: str = INFERENCE_EXPERIMENT,
) -> str:
    """A finished MLflow run for an inference or embedding task (tagged with the Dagster run id)."""
    client = mlflow_client(tracking_uri)
    run = client.create_run(experiment_id(client, experiment), tags=dict(tags))
    now = int(time.time() * 1000)
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
        params=[Param(k, str(v)[:6000]) for k, v in params.items()],
    )
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
