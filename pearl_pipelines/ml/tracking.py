"""MLflow tracking: one run per model version (lineage as tags, the checkpoint as artifacts), one per inference task.

Plain `mlflow.MlflowClient` calls against an explicit tracking URI: no global `mlflow.set_tracking_uri`,
no active-run state, so concurrent callers cannot log into each other's runs.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import geopandas as gpd
import httpx
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run

from pearl_pipelines.ml.metrics import confusion_figure
from pearl_pipelines.ml.versions import ModelVersion

EXPERIMENT = "pearl-model-versions"
INFERENCE_EXPERIMENT = "pearl-inference"
TAG_VERSION = "pearl.version_id"
TAG_PARENT = "pearl.parent_version_id"
TAG_LABEL_SET = "pearl.label_set_digest"
TAG_BASE_MODEL = "pearl.base_model_id"
TAG_SCHEMA = "pearl.schema_id"
CHECKPOINT_ARTIFACT_DIR = "checkpoint"
CONFUSION_ARTIFACT = "confusion_matrix.png"
METRICS_ARTIFACT = "metrics.json"


def mlflow_reachable(uri: str, timeout: float = 1.0) -> bool:
    """Whether the tracking server answers its /health probe (a file or database store is local: always).

    MLflow's client retries for minutes on a dead server; callers that can do without it ask this first.
    """
    if not uri.startswith("http"):
        return True
    try:
        return httpx.get(f"{uri.rstrip('/')}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def version_tags(version: ModelVersion) -> dict[str, str]:
    return {
        TAG_VERSION: version.id,
        TAG_PARENT: version.parent_id or "",
        TAG_LABEL_SET: version.label_set_digest or "",
        TAG_BASE_MODEL: version.base_model_id,
        TAG_SCHEMA: version.schema.id,
        "mlflow.runName": version.id,
    }


def version_params(version: ModelVersion) -> dict[str, str]:
    params: dict[str, Any] = {
        "strategy": version.strategy,
        "schema_id": version.schema.id,
        "classes": ",".join(version.schema.names),
        "n_classes": len(version.schema),
        "embed_dim": version.weight.shape[1],
    }
    params.update({f"strategy.{k}": v for k, v in version.strategy_params.items()})
    # What the fit chose is logged beside what it was given: replay share, centring on the prior, the prior's scale.
    chosen = ("replay_scale", "prior_centred", "prior_scale")
    for key in ("seed", "n_labels", "n_user_samples", "n_replay_samples", "new_classes", "unlearned_classes", *chosen):
        if version.info.get(key) is not None:
            value = version.info[key]
            params[key] = ",".join(value) if isinstance(value, list) else value
    return {k: str(v)[:6000] for k, v in params.items()}


def _experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else client.create_experiment(name)


def log_version(
    version: ModelVersion,
    *,
    tracking_uri: str,
    experiment: str = EXPERIMENT,
    labels: gpd.GeoDataFrame | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Log `version` as a finished MLflow run (params, metrics, confusion matrix, checkpoint); returns the run id."""
    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.create_run(_experiment_id(client, experiment), tags={**version_tags(version), **(tags or {})})
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        flat = version.metrics.to_flat_dict() if version.metrics else {}
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in flat.items()],
            params=[Param(k, v) for k, v in version_params(version).items()],
        )
        with tempfile.TemporaryDirectory(prefix="pearl-mlflow-") as tmp:
            if version.metrics:
                confusion_figure(version.metrics, Path(tmp) / CONFUSION_ARTIFACT)
                (Path(tmp) / METRICS_ARTIFACT).write_text(json.dumps(version.metrics.model_dump(mode="json"), indent=2))
                client.log_artifact(run_id, str(Path(tmp) / CONFUSION_ARTIFACT))
                client.log_artifact(run_id, str(Path(tmp) / METRICS_ARTIFACT))
            checkpoint = version.save(Path(tmp) / CHECKPOINT_ARTIFACT_DIR, labels=labels)
            client.log_artifacts(run_id, str(checkpoint), CHECKPOINT_ARTIFACT_DIR)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def find_version_run(tracking_uri: str, version_id: str, experiment: str = EXPERIMENT) -> Run | None:
    """The run that logged `version_id`, if any."""
    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    query = f"tags.`{TAG_VERSION}` = '{version_id}'"
    runs = client.search_runs([found.experiment_id], filter_string=query, max_results=1)
    return runs[0] if runs else None


def log_inference_run(
    tracking_uri: str,
    *,
    tags: Mapping[str, str],
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    experiment: str = INFERENCE_EXPERIMENT,
) -> str:
    """A finished MLflow run for an inference or embedding task (tagged with the Dagster run id)."""
    client = MlflowClient(tracking_uri)
    run = client.create_run(_experiment_id(client, experiment), tags=dict(tags))
    now = int(time.time() * 1000)
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
        params=[Param(k, str(v)[:6000]) for k, v in params.items()],
    )
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
