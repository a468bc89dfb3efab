"""Resources: STAC catalog, raster store, label store, MLflow registry, GPU compute; chosen by deployment.

`PEARL_DEPLOYMENT=local` (default) runs the worker as a local subprocess through Dagster Pipes;
`k8s` runs the same worker as a pod that requests `nvidia.com/gpu` through `dagster_k8s.PipesK8sClient`.
Everything else (paths, STAC, MLflow) is configuration, not a fork.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import dagster as dg
from pydantic import Field, PrivateAttr

from pearl_pipelines.geo.stac import StacCatalog
from pearl_pipelines.labels.store import LabelStore
from pearl_pipelines.layout import EMBEDDINGS_META, Layout, cache_complete
from pearl_pipelines.ml.lineage import ModelRegistry
from pearl_pipelines.ml.refs import parse_model_uri
from pearl_pipelines.settings import Settings, get_settings
from pearl_pipelines.stored_files import StoredFiles
from pearl_pipelines.worker.run import NICE_ENV

WORKER_MODULE = "pearl_pipelines.worker"


class RasterStore(dg.ConfigurableResource):
    """Where the file outputs live: one tree under PEARL_HOME (`pearl_pipelines.layout`), addressed by ids.

    Paths handed to the worker are keys relative to this root, so a pod that mounts PEARL_HOME elsewhere
    resolves them against its own PEARL_HOME. With `storage_url` (PEARL_STORAGE_URL, s3://bucket/prefix) the files
    the assets write are also published to their keys in that store, and what a step reads is fetched from it when
    this PEARL_HOME lacks it (`files`): the run pod and the worker pods then share the store, not a volume.
    """

    home: str
    storage_url: str | None = None
    _files: StoredFiles | None = PrivateAttr(default=None)

    @property
    def files(self) -> StoredFiles:
        """This PEARL_HOME's files, mirrored to the store of `storage_url` (none: local files only)."""
        if self._files is None:
            self._files = StoredFiles.open(self.storage_url, self.home)
        return self._files

    def cache_ready(self, directory: Path) -> bool:
        """Whether a complete embedding cache is here or (as chunks, ml/chunked_cache.py) in the store."""
        if cache_complete(directory) or not self.files.remote:
            return cache_complete(directory)
        assert self.files.store is not None
        return self.files.store.exists(f"{self.files.key(directory)}/{EMBEDDINGS_META}")

    def has_tile(self, key: str) -> bool:
        """Whether tile `key`'s imagery is here or in the store (not fetched)."""
        return self.files.exists(self.tile_path(key))

    @property
    def layout(self) -> Layout:
        return Layout.at(self.home)

    @property
    def root(self) -> Path:
        return self.layout.root

    def rel(self, path: Path) -> str:
        """`path` as a key relative to PEARL_HOME (symlinks inside it kept); absolute when it lies outside."""
        try:
            return self.layout.key(path)
        except ValueError:
            return str(Path(path).resolve())

    @property
    def catalog_dir(self) -> Path:
        return self.layout.path(Layout.catalog)

    @property
    def tiles_dir(self) -> Path:
        return self.layout.path(Layout.tiles)

    def tile_path(self, key: str) -> Path:
        return self.layout.path(self.layout.tile(key))

    def embeddings_dir(self, base_model_slug: str, aoi_id: int) -> Path:
        return self.layout.path(Layout.aoi_embeddings(base_model_slug, aoi_id))

    def aoi_predictions_dir(self, base_model_slug: str, aoi_id: int) -> Path:
        return self.layout.path(Layout.aoi_predictions(base_model_slug, aoi_id))

    @property
    def reports_dir(self) -> Path:
        return self.layout.path(Layout.reports)

    def predictions_dir(self, model_slug: str, key: str) -> Path:
        return self.layout.path(Layout.tile_prediction(model_slug, key))

    def index_path(self, region: str) -> Path:
        return self.layout.path(Layout.imagery_index(region))

    def label_set_path(self, project_id: int, digest: str) -> Path:
        return self.layout.path(Layout.label_set(project_id, digest))

    def map_dir(self, region: str, model_slug: str) -> Path:
        return self.layout.path(Layout.region_map(region, model_slug))


class StacResource(dg.ConfigurableResource):
    """The STAC API imagery comes from (local rustac API by default; Planetary Computer NAIP in production)."""

    url: str
    source: Literal["local", "planetary-computer"] = "local"
    collection: str | None = None

    def catalog(self, collections: list[str] | None = None) -> StacCatalog:
        default = [self.collection] if self.collection else None
        return StacCatalog(
            url=self.url,
            collections=collections or default,
            sign_planetary_computer=self.source == "planetary-computer",
            # The local source's API serves the local catalog: asset hrefs may be files in it (stac.checked_href).
            local_root=get_settings().catalog_dir if self.source == "local" else None,
        )


class LabelStoreResource(dg.ConfigurableResource):
    """The review app's label store (SQLite WAL by default: the sensor reads while the app writes)."""

    url: str
    _store: LabelStore | None = PrivateAttr(default=None)

    def store(self) -> LabelStore:
        if self._store is None:
            self._store = LabelStore(self.url)
        return self._store


class MlflowRegistry(dg.ConfigurableResource):
    """Dagster's handle on `ml.lineage.ModelRegistry` (not dagster-mlflow): resolve, alias, find by lineage.

    Model references are `models:/name@alias` or `models:/name/version` (`ml.refs.parse_model_uri`); runs pin
    aliases to version numbers before they hand a model to the worker, so a run's lineage never depends on a moving
    alias.
    """

    tracking_uri: str
    experiment: str = "pearl"

    _registry: ModelRegistry | None = PrivateAttr(default=None)

    @property
    def registry(self) -> ModelRegistry:
        if self._registry is None:
            self._registry = ModelRegistry(self.tracking_uri)
        return self._registry

    @property
    def client(self) -> Any:
        return self.registry.client

    def version_by_alias(self, name: str, alias: str) -> Any | None:
        return self.registry.get_version(name, alias)

    def resolve(self, model_ref: str) -> tuple[str, str]:
        """`models:/name@alias` or `models:/name/3` -> (name, version number); KeyError when it does not exist."""
        name, version = parse_model_uri(model_ref)
        if not version.isdigit():  # through `version_by_alias`, which a test registry replaces
            found = self.version_by_alias(name, version)
            if found is None:
                raise KeyError(f"{model_ref} does not exist on {self.tracking_uri} (no model {name!r} or alias)")
            version = str(found.version)
        return name, version

    def set_alias(self, name: str, alias: str, version: str | int) -> None:
        self.registry.set_alias(name, alias, version)

    def model_version(self, name: str, version: str | int) -> Any:
        return self.registry.model_version(name, version)

    def find_version(self, name: str, **tags: str) -> Any | None:
        """The newest version of `name` carrying all of `tags` (`Lineage(...).to_tags()`), else None."""
        return self.registry.find_version(name, **tags)


DEFAULT_GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
# What a worker pod reads from the chart's Secrets (deploy/README.md): variable -> "secret/key". Optional refs: an
# install without an object store (no such Secret) still starts its pods.
DEFAULT_WORKER_SECRET_ENV = {
    "PEARL_LABEL_STORE_URL": "pearl-label-store/url",
    "PEARL_STORAGE_URL": "pearl-object-store/storage-url",
    "AWS_ENDPOINT_URL": "pearl-object-store/endpoint-url",
    "AWS_ACCESS_KEY_ID": "pearl-object-store/access-key-id",
    "AWS_SECRET_ACCESS_KEY": "pearl-object-store/secret-access-key",
}


class GpuCompute(dg.ConfigurableResource):
    """Runs `python -m pearl_pipelines.worker <task>` through Dagster Pipes, locally or as a GPU pod.

    The worker reads its parameters from the Pipes extras and reports materializations, asset checks
    and per-tile results (custom messages) back through `dagster_pipes`.
    """

    mode: Literal["local", "k8s"] = "local"
    python: str = ""  # local: interpreter for the worker; default this process's
    env: dict[str, str] = Field(default_factory=dict)
    # local: the niceness of Dagster's worker runs (0-19). On a machine that also serves the review app, a label
    # run would otherwise take half the cores from the mapper's live retrain; the app's own tasks run at 0.
    nice: int = Field(default=10, ge=0, le=19)
    # k8s mode: the pod that runs the worker.
    image: str = "ghcr.io/pearl-pipelines/pearl-worker:latest"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    namespace: str = "pearl"
    service_account: str | None = None
    gpus: int = 1
    cpu_request: str = "2"
    memory_request: str = "8Gi"
    memory_limit: str = "16Gi"
    node_selector: dict[str, str] = Field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    tolerations: list[dict[str, str]] = Field(default_factory=lambda: [dict(t) for t in DEFAULT_GPU_TOLERATIONS])
    # Variables the pod reads from Secrets ("secret/key"), never written into the pod spec: the database, the object
    # store and its keys.
    secret_env: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_WORKER_SECRET_ENV))
    # PVC shared with the Dagster run pods, mounted as the pod's PEARL_HOME; "none": a PEARL_HOME of the pod's own
    # (emptyDir), where the pods share only the object store of PEARL_STORAGE_URL (pearl_pipelines/stored_files.py).
    pearl_home_claim: str = "pearl-home"
    pearl_home_mount: str = "/data/pearl"
    mlflow_tracking_uri: str | None = None  # the tracking server as the pod sees it (cluster DNS)
    kubeconfig_file: str | None = None
    load_incluster_config: bool | None = None
    poll_interval: float = 5.0

    def worker_command(self, task: str) -> list[str]:
        python = "python" if self.mode == "k8s" else (self.python or sys.executable)
        return [python, "-m", WORKER_MODULE, task]

    def pod_spec(self) -> dict[str, Any]:
        """Base pod spec (camelCase, as the Kubernetes API takes it) for a worker pod on a GPU node."""
        container: dict[str, Any] = {
            "name": "pearl-worker",
            "image": self.image,
            "imagePullPolicy": self.image_pull_policy,
            "env": [{"name": "PEARL_HOME", "value": self.pearl_home_mount}],
            "resources": {
                "requests": {"cpu": self.cpu_request, "memory": self.memory_request, "nvidia.com/gpu": str(self.gpus)},
                "limits": {"memory": self.memory_limit, "nvidia.com/gpu": str(self.gpus)},
            },
            "volumeMounts": [{"name": "pearl-home", "mountPath": self.pearl_home_mount}],
        }
        if self.mlflow_tracking_uri:
            container["env"].append({"name": "PEARL_MLFLOW_TRACKING_URI", "value": self.mlflow_tracking_uri})
        for name, ref in sorted(self.secret_env.items()):
            secret, _, key = ref.partition("/")
            if not (secret and key):
                raise ValueError(f"GpuCompute.secret_env[{name!r}] must be 'secret/key', not {ref!r}")
            ref_spec = {"name": secret, "key": key, "optional": True}
            container["env"].append({"name": name, "valueFrom": {"secretKeyRef": ref_spec}})
        spec: dict[str, Any] = {
            "restartPolicy": "Never",
            "containers": [container],
            "nodeSelector": dict(self.node_selector),
            "tolerations": [dict(t) for t in self.tolerations],
            "volumes": [{"name": "pearl-home", **self._home_volume()}],
        }
        if self.service_account:
            spec["serviceAccountName"] = self.service_account
        return spec

    def _home_volume(self) -> dict[str, Any]:
        if self.pearl_home_claim in ("", "none"):
            return {"emptyDir": {}}
        return {"persistentVolumeClaim": {"claimName": self.pearl_home_claim}}

    def pod_meta(self, task: str) -> dict[str, Any]:
        return {"labels": {"app.kubernetes.io/name": "pearl-worker", "pearl/task": task}}

    def pod_manifest(
        self, task: str, *, pod_name: str = "pearl-worker", env_vars: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """The Pod that `PipesK8sClient.run` creates for a task (same `build_pod_body` call), as a manifest.

        `env_vars` stands for the Pipes bootstrap variables the client adds at run time.
        """
        from dagster_k8s.pipes import build_pod_body
        from kubernetes.client import ApiClient

        pod = build_pod_body(
            pod_name=pod_name,
            image=None,
            command=self.worker_command(task),
            env_vars={**(env_vars or {}), **self.env},
            base_pod_meta=self.pod_meta(task),
            base_pod_spec=self.pod_spec(),
        )
        return {"apiVersion": "v1", "kind": "Pod", **ApiClient().sanitize_for_serialization(pod)}

    def local_env(self, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a local Dagster run's worker: at the configured niceness (`nice`)."""
        return {**self.env, NICE_ENV: str(self.nice), **(env or {})}

    def worker_extras(self, extras: Mapping[str, Any]) -> dict[str, Any]:
        """Extras as the worker sees them (the pod reaches MLflow by its in-cluster address)."""
        out = dict(extras)
        if self.mode == "k8s" and self.mlflow_tracking_uri and "mlflow_uri" in out:
            out["mlflow_uri"] = self.mlflow_tracking_uri
        return out

    def run(
        self,
        context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext | dg.OpExecutionContext,
        task: str,
        extras: Mapping[str, Any],
        env: Mapping[str, str] | None = None,
    ) -> dg.PipesClientCompletedInvocation:
        extras = self.worker_extras(extras)
        if self.mode == "k8s":
            from dagster_k8s import PipesK8sClient

            client = PipesK8sClient(
                env={**self.env, **(env or {})},
                load_incluster_config=self.load_incluster_config,
                kubeconfig_file=self.kubeconfig_file,
                poll_interval=self.poll_interval,
            )
            return client.run(
                context=context,  # type: ignore[arg-type]
                extras=extras,
                command=self.worker_command(task),
                namespace=self.namespace,
                base_pod_meta=self.pod_meta(task),
                base_pod_spec=self.pod_spec(),
            )
        # cwd: PEARL_HOME, so nothing a library writes by default (e.g. MLflow's ./mlflow.db) lands in the repo.
        subprocess_client = dg.PipesSubprocessClient(env=self.local_env(env), cwd=self.env.get("PEARL_HOME"))
        return subprocess_client.run(
            context=context,  # type: ignore[arg-type]
            command=self.worker_command(task),
            extras=extras,
        )


def automation_enabled() -> bool:
    """Whether sensors and schedules start RUNNING (`PEARL_DAGSTER_AUTOMATION`, default on)."""
    return get_settings().dagster_automation


def gpu_compute(settings: Settings | None = None) -> GpuCompute:
    """The worker's compute for `PEARL_DEPLOYMENT`: Dagster's resource, and the review app's session launcher's."""
    settings = settings or get_settings()
    if settings.deployment == "k8s":
        return GpuCompute(
            mode="k8s",
            image=dg.EnvVar("PEARL_K8S_WORKER_IMAGE").get_value("ghcr.io/pearl-pipelines/pearl-worker:latest") or "",
            namespace=dg.EnvVar("PEARL_K8S_NAMESPACE").get_value("pearl") or "pearl",
            pearl_home_claim=dg.EnvVar("PEARL_K8S_HOME_CLAIM").get_value("pearl-home") or "pearl-home",
            mlflow_tracking_uri=dg.EnvVar("PEARL_K8S_MLFLOW_URI").get_value() or None,
            load_incluster_config=True,
        )
    env = {"PEARL_HOME": str(settings.home_abs)}
    if settings.storage_url:  # the worker publishes its outputs and fetches its inputs there (stored_files.py)
        env["PEARL_STORAGE_URL"] = settings.storage_url
    return GpuCompute(env=env)


def build_resources(settings: Settings | None = None) -> dict[str, Any]:
    """Resources for `PEARL_DEPLOYMENT` (local | k8s); k8s reads its pod settings from PEARL_K8S_* variables."""
    settings = settings or get_settings()
    home = str(settings.home_abs)
    compute = gpu_compute(settings)
    return {
        "stac": StacResource(
            url=settings.resolved_stac_url, source=settings.stac_source, collection=settings.stac_collection
        ),
        "rasters": RasterStore(home=home, storage_url=settings.storage_url),
        "label_store": LabelStoreResource(url=settings.resolved_label_store_url),
        "mlflow": MlflowRegistry(tracking_uri=settings.resolved_mlflow_uri),
        "compute": compute,
    }
