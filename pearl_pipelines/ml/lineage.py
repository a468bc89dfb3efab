"""The one owner of a registered model version's identity: its lineage tags, its registration, its look-ups.

- `Lineage`: every `pearl.*` tag a version (and the run that logged it) carries, as typed fields;
  `to_tags()` / `from_tags()` are the only place the tag keys are written or read.
- `ModelRegistry`: the project's only MLflow client class (register, resolve, aliases, find by lineage, download).
  Dagster exposes it as the `MlflowRegistry` resource (`defs.resources`), the review app and the worker use it as is.
- `register_version`: log a head-only version (run: params, metrics, checkpoint) and register it under the project's
  registered model with its lineage; the review app's publisher and the Dagster worker both call it.

Light on purpose: MLflow and the engine (torch) are imported when a method needs them, so Dagster definitions and
the review app can read lineage without loading either.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from pearl_pipelines.ml.refs import model_uri, parse_model_uri, project_model_name

if TYPE_CHECKING:
    import geopandas as gpd
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion as RegisteredVersion

    from pearl_pipelines.ml.models import LandcoverModel
    from pearl_pipelines.ml.versions import ModelVersion

# -- tag keys: written here only ---------------------------------------------------------------------------
TAG_VERSION = "pearl.version_id"  # the engine's version id (ml.versions.ModelVersion.id)
TAG_PARENT = "pearl.parent_version_id"  # the parent's engine version id
TAG_LABEL_SET = "pearl.label_set_digest"  # the engine's digest of the labels it was trained on
TAG_BASE_MODEL = "pearl.base_model_id"  # the backbone's digest
TAG_SCHEMA = "pearl.schema_id"
TAG_BASE_MODEL_URI = "pearl.base_model"  # models:/name/N of the version whose backbone a head-only version uses
TAG_PROJECT = "pearl.project_id"
TAG_STRATEGY = "pearl.strategy"
TAG_PARENT_MODEL = "pearl.parent_model"  # models:/name/N of the parent version
TAG_APP_VERSION = "pearl.app_version"  # the review app's version number of the project
TAG_LABEL_STORE = "pearl.label_store_digest"  # LabelStore.label_set_digest of the labels it was trained on
TAG_SOURCE = "pearl.source"  # review-app | dagster
TAG_TASK = "pearl.task"  # the worker task that logged a run
TAG_PATCHES = "pearl.patches_digest"  # digest of the map patches in force on the version's maps (review app)
PATCHES_ARTIFACT = "patches/patches.geojson"  # those patches, on the version's run (`log_patches`)
RUN_ID_TAG = "dagster_run_id"  # MLflow tag on every training, retraining and inference run of a Dagster run
RUN_NAME_TAG = "mlflow.runName"

Source = Literal["review-app", "dagster"]


class Lineage(BaseModel):
    """A registered version's lineage, as typed fields; unset fields are not tags."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version_id: str | None = None
    parent_version_id: str | None = None
    label_set_digest: str | None = None
    base_model_id: str | None = None
    schema_id: str | None = None
    base_model: str | None = None
    project_id: int | None = None
    strategy: str | None = None
    parent_model: str | None = None
    app_version: int | None = None
    label_store_digest: str | None = None
    source: Source | None = None
    dagster_run_id: str | None = None
    patches_digest: str | None = None

    KEYS: ClassVar[dict[str, str]] = {
        "version_id": TAG_VERSION,
        "parent_version_id": TAG_PARENT,
        "label_set_digest": TAG_LABEL_SET,
        "base_model_id": TAG_BASE_MODEL,
        "schema_id": TAG_SCHEMA,
        "base_model": TAG_BASE_MODEL_URI,
        "project_id": TAG_PROJECT,
        "strategy": TAG_STRATEGY,
        "parent_model": TAG_PARENT_MODEL,
        "app_version": TAG_APP_VERSION,
        "label_store_digest": TAG_LABEL_STORE,
        "source": TAG_SOURCE,
        "dagster_run_id": RUN_ID_TAG,
        "patches_digest": TAG_PATCHES,
    }

    def to_tags(self) -> dict[str, str]:
        """MLflow tags of the set fields (`None` is no tag; an empty string is an empty tag)."""
        return {self.KEYS[name]: str(value) for name, value in self if value is not None}

    @classmethod
    def from_tags(cls, tags: Mapping[str, str] | None) -> Lineage:
        """The lineage recorded in a version's (or a run's) tags; other tags are ignored."""
        tags = tags or {}
        return cls.model_validate(
            {name: tags[key] for name, key in cls.KEYS.items() if tags.get(key) not in (None, "")}
        )

    @classmethod
    def of_version(cls, version: ModelVersion, **fields: Any) -> Lineage:
        """The engine's lineage of `version` (ids, label set, backbone, schema, strategy), plus `fields`."""
        return cls(
            version_id=version.id,
            parent_version_id=version.parent_id or "",
            label_set_digest=version.label_set_digest or "",
            base_model_id=version.base_model_id,
            schema_id=version.schema.id,
            strategy=version.strategy,
            **fields,
        )


def task_run_tags(
    task: str, *, dagster_run_id: str = "", asset: str = "", extra: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """Tags of a worker task's MLflow run: the Dagster run and asset, the task."""
    return {
        RUN_ID_TAG: dagster_run_id,
        "dagster_asset": asset,
        TAG_TASK: task,
        **{k: str(v) for k, v in (extra or {}).items()},
    }


# -- the MLflow client ---------------------------------------------------------------------------------------
MODEL_ARTIFACT_PATH = "model"  # run artifact folder that a model version points at


@dataclass
class ModelRegistry:
    """Registered models on one MLflow tracking server: the project's only MLflow client wrapper."""

    tracking_uri: str
    _client: MlflowClient | None = field(default=None, init=False, repr=False)

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = mlflow_client(self.tracking_uri)
        return self._client

    def register(
        self,
        name: str,
        run_id: str,
        *,
        artifact_path: str = MODEL_ARTIFACT_PATH,
        aliases: Iterable[str] = (),
        tags: dict[str, str] | None = None,
        description: str | None = None,
    ) -> RegisteredVersion:
        """Create `name` if needed, add a version whose source is the run's `artifact_path`, set `aliases`."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(name, description=description)
        version = self.client.create_model_version(
            name, f"runs:/{run_id}/{artifact_path}", run_id=run_id, tags=tags, description=description
        )
        for alias in aliases:
            self.set_alias(name, alias, version.version)
        return self.client.get_model_version(name, version.version)

    def set_alias(self, name: str, alias: str, version: str | int) -> None:
        self.client.set_registered_model_alias(name, alias, str(version))

    def get_version(self, name: str, alias: str) -> RegisteredVersion | None:
        """The version holding `alias`, or None when the model or the alias does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(name, alias)
        except MlflowException:
            return None

    version_by_alias = get_version

    def set_alias_if_missing(self, name: str, alias: str, version: str | int) -> bool:
        """Give `alias` to `version` unless some version already holds it (first model becomes champion)."""
        if self.get_version(name, alias) is not None:
            return False
        self.set_alias(name, alias, version)
        return True

    def model_version(self, name: str, version: str | int) -> RegisteredVersion:
        return self.client.get_model_version(name, str(version))

    def resolve(self, name: str, alias_or_version: str | int) -> RegisteredVersion:
        """The registered version behind an alias or a version number (KeyError when there is none)."""
        from mlflow.exceptions import MlflowException

        ref = str(alias_or_version)
        try:
            if ref.isdigit():
                return self.client.get_model_version(name, ref)
            return self.client.get_model_version_by_alias(name, ref)
        except MlflowException as exc:
            raise KeyError(f"{model_uri(name, ref)} does not exist on {self.tracking_uri}: {exc.message}") from exc

    def resolve_ref(self, model_ref: str) -> tuple[str, str]:
        """`models:/name@alias` or `models:/name/3` -> (name, version number); KeyError when it does not exist."""
        name, version = parse_model_uri(model_ref)
        if not version.isdigit():
            found = self.get_version(name, version)
            if found is None:
                raise KeyError(f"{model_ref} does not exist on {self.tracking_uri} (no model {name!r} or alias)")
            version = str(found.version)
        return name, version

    def find_version(self, name: str, **tags: str) -> RegisteredVersion | None:
        """The newest version of `name` carrying all of `tags` (None when there is none, or no such model).
        Build `tags` with `Lineage(...).to_tags()`."""
        query = " and ".join([f"name = '{name}'", *(f"tags.`{k}` = '{v}'" for k, v in tags.items())])
        found = self.client.search_model_versions(query, max_results=1, order_by=["version_number DESC"])
        return found[0] if found else None

    def lineage(self, name: str, version: str | int) -> Lineage:
        """The lineage a registered version's tags record."""
        return Lineage.from_tags(self.model_version(name, version).tags)

    def version_id(self, name: str, version: str | int) -> str | None:
        """The engine's version id of a registered version (its tag, else its run's tag)."""
        registered = self.model_version(name, version)
        found = Lineage.from_tags(registered.tags).version_id
        if found is None and registered.run_id:
            found = Lineage.from_tags(self.client.get_run(registered.run_id).data.tags).version_id
        return found

    def download(self, name: str, alias_or_version: str | int, dst: Path) -> Path:
        """Download a version's model folder into `dst`; returns the local folder that holds `model.pt`.

        Resolves the version with this client and downloads its source, so MLflow's process-wide
        registry URI (which `models:/` URIs would need) is never touched.
        """
        import mlflow

        version = self.resolve(name, alias_or_version)
        dst.mkdir(parents=True, exist_ok=True)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=version.source, dst_path=str(dst), tracking_uri=self.tracking_uri
        )
        return Path(local)

    def load_model(
        self, name: str, alias_or_version: str | int = "champion", cache_dir: Path | None = None
    ) -> LandcoverModel:
        """`models:/name@alias` (or a version number) as a LandcoverModel in eval mode, read without unpickling code."""
        from pearl_pipelines.ml.models import MODEL_FILE, load_model

        if cache_dir is not None:
            return load_model(self.download(name, alias_or_version, cache_dir) / MODEL_FILE)
        with tempfile.TemporaryDirectory(prefix="pearl-model-") as tmp:
            return load_model(self.download(name, alias_or_version, Path(tmp)) / MODEL_FILE)


# -- a project's versions: one registered model per project, head-only versions on a registered base ------------
EXPERIMENT = "pearl-model-versions"
CHECKPOINT_ARTIFACT_DIR = "checkpoint"
CONFUSION_ARTIFACT = "confusion_matrix.png"
METRICS_ARTIFACT = "metrics.json"


def version_tags(version: ModelVersion) -> dict[str, str]:
    """The run tags of a version: its lineage (`ml.lineage.Lineage.of_version`), named by its id."""
    return {**Lineage.of_version(version).to_tags(), RUN_NAME_TAG: version.id}


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
    keys = ("seed", "n_labels", "n_user_samples", "n_replay_samples", "unlearned_classes", "prior_centred")
    values = {key: version.info.get(key) for key in keys}
    values.update(replay_scale=version.replay_scale, prior_scale=version.prior_scale, new_classes=version.new_classes)
    for key, value in values.items():
        if value is not None:
            params[key] = ",".join(value) if isinstance(value, list) else value
    return {k: str(v)[:6000] for k, v in params.items()}


def mlflow_client(tracking_uri: str) -> MlflowClient:
    """The MLflow client of one tracking server: every part of the project gets its client here."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of experiment `name`, created when missing."""
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
    from mlflow.entities import Metric, Param

    from pearl_pipelines.ml.metrics import confusion_figure

    client = mlflow_client(tracking_uri)
    run = client.create_run(experiment_id(client, experiment), tags={**version_tags(version), **(tags or {})})
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
    client = mlflow_client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    query = f"tags.`{TAG_VERSION}` = '{version_id}'"
    runs = client.search_runs([found.experiment_id], filter_string=query, max_results=1)
    return runs[0] if runs else None


def register_version(
    tracking_uri: str,
    version: ModelVersion,
    lineage: Lineage,
    *,
    labels: gpd.GeoDataFrame | None,
    run_tags: Mapping[str, str] | None = None,
    aliases: Iterable[str] = (),
    description: str | None = None,
) -> RegisteredVersion:
    """Log `version` (run: params, metrics, confusion matrix, checkpoint = head + labels) and register it as a
    version of `project_model_name(lineage.project_id)`, tagged with `lineage` completed from the version.

    The backbone is not copied: `lineage.base_model` names the registered version it sits on, and
    `ml.registry.load_registered` composes the two."""
    if lineage.project_id is None or lineage.base_model is None:
        raise ValueError("a project's version needs its project_id and its base_model in the lineage")
    full = Lineage.of_version(version, **lineage.model_dump(exclude_none=True, exclude=set(_VERSION_FIELDS)))
    tags = full.to_tags()
    run_id = log_version(version, tracking_uri=tracking_uri, labels=labels, tags={**tags, **(run_tags or {})})
    return ModelRegistry(tracking_uri).register(
        project_model_name(lineage.project_id),
        run_id,
        artifact_path=CHECKPOINT_ARTIFACT_DIR,
        aliases=aliases,
        tags=tags,
        description=description,
    )


# Fields the version itself decides (`Lineage.of_version`); a caller's lineage cannot contradict them.
_VERSION_FIELDS = ("version_id", "parent_version_id", "label_set_digest", "base_model_id", "schema_id", "strategy")


def log_patches(tracking_uri: str, run_id: str, patches: Mapping[str, Any]) -> None:
    """The map patches in force on a version's maps (a GeoJSON FeatureCollection) as the artifact `PATCHES_ARTIFACT`
    of the run that logged the version; the version's `TAG_PATCHES` names their digest."""
    folder, name = PATCHES_ARTIFACT.rsplit("/", 1)
    with tempfile.TemporaryDirectory(prefix="pearl-patches-") as tmp:
        path = Path(tmp) / name
        path.write_text(json.dumps(patches))
        mlflow_client(tracking_uri).log_artifact(run_id, str(path), folder)
