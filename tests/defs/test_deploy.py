"""Deployment files, checked as far as possible without a cluster.

The `pearl` chart (deploy/helm/pearl) is rendered here by Helm's own Go SDK (helm-python-sdk, no helm binary, no
cluster) with its default values and with the other branches of its templates, linted, and every object
validated against the Kubernetes 1.32.0 schema (`kubernetes-validate --strict`); so are the plain manifests of
deploy/k8s (the chart rendered by deploy/render.py, which must match it). Then the facts that make an install
work: the review app runs >= 2 pods, its probes call the app's real health route, the PDB and the Service select
its pods, the HPA scales it, the Service and the Ingress reach its port, every Secret key read is one
deploy/README.md tells the operator to create, every PEARL_ variable is a setting, and the Dagster values queue
GPU runs below the chart's GPU quota. Last, the app is started as the manifest starts it, with the manifest's
settings, and the kubelet's probe requests (by pod IP) get 200.

Not tested here (needs a cluster): deploy/README.md, "What only a real cluster can test".
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import helm_python  # helm-python-sdk (dev extra): Helm's Go SDK, renders and lints the chart
import httpx
import kubernetes_validate
import pytest
import yaml

from pearl_pipelines.settings import REPO_ROOT, Settings


def _load_render() -> ModuleType:
    """deploy/render.py (not a package): writes deploy/k8s from the chart."""
    spec = importlib.util.spec_from_file_location("pearl_deploy_render", REPO_ROOT / "deploy" / "render.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _load_render()
K8S_VERSION = "1.32.0"
DEPLOY = REPO_ROOT / "deploy"
CHART = DEPLOY / "helm" / "pearl"
PLAIN = sorted((DEPLOY / "k8s").glob("*.yaml"))
DAGSTER_VALUES = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
README = (DEPLOY / "README.md").read_text()
APP = "pearl-review-app"

# The other branches of the templates: no object store and the shared claim instead, no Redis, no autoscaler,
# no TLS, local auth, local compute; and everything optional off.
VARIANTS: dict[str, dict[str, Any] | None] = {
    "defaults": None,
    "shared-volume": {
        "reviewApp": {
            "objectStore": False,
            "redis": False,
            "mountPearlHome": True,
            "deployment": "local",
            "auth": {"mode": "local"},
            "autoscaling": {"enabled": False},
            "replicas": 3,
            "ingress": {"tlsSecret": "", "className": ""},
            "extraEnv": [{"name": "PEARL_QUOTA_PROJECTS", "value": "40"}],
            "nodeSelector": {"pool": "web"},
        },
        "imagePullSecrets": [{"name": "registry"}],
        "mlflow": {"image": "registry.example/mlflow:3.17.2"},
    },
    "minimal": {
        "reviewApp": {"enabled": False},
        "mlflow": {"enabled": False},
        "worker": {"gpuQuota": {"enabled": False}},
        "pearlHome": {"create": False},
    },
}


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key twice in one mapping (the API server's decoder does too)."""


def _no_duplicates(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
    duplicates = {k for k in keys if keys.count(k) > 1}
    assert not duplicates, f"duplicate keys {duplicates} at {node.start_mark}"
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def rendered_text(values: dict[str, Any] | None) -> dict[str, str]:
    with helm_python.Chart.load(CHART) as chart:
        return chart.render(copy.deepcopy(values), name="pearl", namespace="pearl", is_install=True)


def objects(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    out = []
    for text in rendered_text(values).values():
        out += [d for d in yaml.load_all(text, Loader=_UniqueKeyLoader) if d]
    return out


def find(docs: list[dict[str, Any]], kind: str, name: str = APP) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def secret_refs(node: Any) -> set[tuple[str, str]]:
    return {
        (n["secretKeyRef"]["name"], n["secretKeyRef"]["key"])
        for n in walk(node)
        if isinstance(n, dict) and "secretKeyRef" in n
    }


@pytest.fixture(scope="module")
def default() -> list[dict[str, Any]]:
    return objects()


# -- rendering and schema ------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_chart_renders_objects_valid_for_kubernetes_1_32(variant: str) -> None:
    docs = objects(VARIANTS[variant])
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        assert doc["metadata"]["namespace"] == "pearl", doc["metadata"]["name"]
    kinds = {d["kind"] for d in docs}
    if variant == "minimal":  # what Dagster's run pods need, and nothing else
        assert kinds == {"ServiceAccount", "Role", "RoleBinding"}
        assert [s["name"] for s in find(docs, "RoleBinding", "pearl-pipes-workers")["subjects"]] == ["pearl-runs"]
    elif variant == "shared-volume":  # a fixed replica count, no autoscaler, no TLS, no GPU pods from the app
        assert "HorizontalPodAutoscaler" not in kinds
        assert find(docs, "Deployment")["spec"]["replicas"] == 3
        assert "tls" not in find(docs, "Ingress")["spec"]
        assert [s["name"] for s in find(docs, "RoleBinding", "pearl-pipes-workers")["subjects"]] == ["pearl-runs"]
    if variant != "minimal":
        assert {"Deployment", "Service", "PodDisruptionBudget", "Role", "RoleBinding"} <= kinds


def test_chart_lints_clean() -> None:
    report = helm_python.lint(str(CHART), strict=True, namespace="pearl", kube_version=f"v{K8S_VERSION}")
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error
    assert problems == []


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"reviewapp": {"replicas": 3}}, "additional properties 'reviewapp' not allowed"),  # a typo is no default
        ({"reviewApp": {"auth": {"mode": "saml"}}}, "value must be one of 'local', 'oidc'"),
        ({"reviewApp": {"deployment": "slurm"}}, "value must be one of 'local', 'k8s'"),
        ({"worker": {"gpuQuota": {"gpus": 0}}}, "minimum: got 0, want 1"),
        ({"secrets": {"auth": "Pearl_Auth"}}, "does not match pattern"),
    ],
)
def test_values_schema_refuses_bad_values(values: dict[str, Any], problem: str) -> None:
    with pytest.raises(helm_python.HelmError, match=re.escape(problem)):
        rendered_text(values)


def test_oidc_mode_needs_an_issuer() -> None:
    with pytest.raises(helm_python.HelmError, match="oidcIssuer is required"):
        rendered_text({"reviewApp": {"auth": {"oidcIssuer": ""}}})


@pytest.mark.parametrize("path", PLAIN, ids=[p.name for p in PLAIN])
def test_plain_manifests_validate_for_kubernetes_1_32(path: Path) -> None:
    documents = [d for d in yaml.load_all(path.read_text(), Loader=_UniqueKeyLoader) if d]
    assert documents
    for document in documents:
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def test_plain_manifests_are_the_chart_rendered() -> None:
    expected = render.plain_manifests()
    assert sorted(expected) == [p.name for p in PLAIN], "run: .venv/bin/python deploy/render.py"
    for name, text in expected.items():
        assert (DEPLOY / "k8s" / name).read_text() == text, f"deploy/k8s/{name} is stale: run deploy/render.py"


# -- the review app's objects fit together -------------------------------------------------------------------


def app_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def test_review_app_runs_at_least_two_pods(default: list[dict[str, Any]]) -> None:
    assert find(default, "Deployment")["spec"]["replicas"] >= 2
    hpa = find(default, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": APP}
    # The autoscaler's CPU target is a share of the request: the container must request CPU.
    assert app_container(default)["resources"]["requests"]["cpu"]
    pdb = find(default, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] < find(default, "Deployment")["spec"]["replicas"]  # a drain can proceed
    # A values file asking for one replica is refused (values.schema.json), as is an autoscaler floor of one.
    for values in ({"reviewApp": {"replicas": 1}}, {"reviewApp": {"autoscaling": {"minReplicas": 1}}}):
        with pytest.raises(helm_python.HelmError, match="minimum: got 1, want 2"):
            rendered_text(values)


def test_selectors_match_the_pods(default: list[dict[str, Any]]) -> None:
    deployment = find(default, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert find(default, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    assert find(default, "Service")["spec"]["selector"] == selector
    for other in default:  # no other pod template of the chart is selected by the app's selector
        if other["kind"] == "Deployment" and other is not deployment:
            labels = other["spec"]["template"]["metadata"]["labels"]
            assert not selector.items() <= labels.items()


def test_service_and_ingress_reach_the_container_port(default: list[dict[str, Any]]) -> None:
    container = app_container(default)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    (service_port,) = find(default, "Service")["spec"]["ports"]
    target = service_port["targetPort"]
    assert (ports[target] if isinstance(target, str) else target) == ports["http"] == 8000
    assert f"--port={ports['http']}" in container["args"]  # uvicorn listens where the Service sends
    (rule,) = find(default, "Ingress")["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    backend = path["backend"]["service"]
    assert backend["name"] == find(default, "Service")["metadata"]["name"]
    assert backend["port"] in ({"name": service_port["name"]}, {"number": service_port["port"]})
    assert rule["host"] == "pearl.example.org"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert yaml.safe_load(env["PEARL_ALLOWED_HOSTS"]) == [rule["host"]]  # the app answers to the ingress host
    (tls,) = find(default, "Ingress")["spec"]["tls"]
    assert tls["hosts"] == [rule["host"]]


def test_probes_call_the_health_route(default: list[dict[str, Any]]) -> None:
    container = app_container(default)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/healthz", probe
        assert get["port"] == "http", probe
    mlflow = find(default, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert mlflow["readinessProbe"]["httpGet"]["path"] == "/health"  # MLflow's own health route


def test_mlflow_answers_its_cluster_names(default: list[dict[str, Any]]) -> None:
    """MLflow refuses Host names it was not given (DNS-rebinding guard; default: loopback and private IPs), and
    the run pods and workers call it by its Service's name: MLflow's own check, with the manifest's list."""
    from mlflow.server.security_utils import is_allowed_host_header

    (container,) = find(default, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    allowed = [h.strip() for h in env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")]
    uri = httpx.URL({e["name"]: e.get("value") for e in app_container(default)["env"]}["PEARL_MLFLOW_TRACKING_URI"])
    dagster_uri = httpx.URL(
        {e["name"]: e.get("value") for e in DAGSTER_VALUES["dagster-user-deployments"]["deployments"][0]["env"]}[
            "PEARL_MLFLOW_TRACKING_URI"
        ]
    )
    for url in (uri, dagster_uri):
        assert url.host.split(".")[0] == "mlflow" and url.port == 5000
        assert is_allowed_host_header(allowed, f"{url.host}:{url.port}"), url
    for host in ("mlflow:5000", "mlflow.pearl.svc.cluster.local:5000", "localhost:5000"):
        assert is_allowed_host_header(allowed, host), host
    assert not is_allowed_host_header(allowed, "evil.example")
    assert f"--port={container['ports'][0]['containerPort']}" in container["args"]
    (service_port,) = find(default, "Service", "mlflow")["spec"]["ports"]
    assert service_port["port"] == uri.port


def test_app_connections_come_from_secrets_and_replicas_share_pearl_home(default: list[dict[str, Any]]) -> None:
    container = app_container(default)
    from_secret = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert from_secret["PEARL_LABEL_STORE_URL"] == {"name": "pearl-label-store", "key": "url"}
    assert from_secret["PEARL_RATE_LIMIT_STORAGE"]["name"] == from_secret["PEARL_EVENTS_URL"]["name"] == "pearl-redis"
    assert from_secret["PEARL_STORAGE_URL"] == {"name": "pearl-object-store", "key": "storage-url"}
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert from_secret[name]["name"] == "pearl-object-store"
    assert from_secret["PEARL_AUTH_SECRET"] == {"name": "pearl-auth", "key": "auth-secret"}
    # Imagery mosaics, embedding caches and versions are still files: every replica mounts the one claim.
    claim = [{"name": "pearl-home", "persistentVolumeClaim": {"claimName": "pearl-home"}}]
    assert find(default, "Deployment")["spec"]["template"]["spec"]["volumes"] == claim
    shared = find(objects(VARIANTS["shared-volume"]), "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert shared == claim
    scratch = {"reviewApp": {"mountPearlHome": False}}
    (volume,) = find(objects(scratch), "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert "emptyDir" in volume


def test_every_secret_key_read_is_documented(default: list[dict[str, Any]]) -> None:
    documented = set(re.findall(r"^\| `([a-z0-9-]+)` \| `([a-z0-9-]+)` \|", README, flags=re.MULTILINE))
    assert documented, "deploy/README.md: the Secrets table, `| `secret` | `key` | ... |`"
    read = secret_refs(DAGSTER_VALUES)
    for values in VARIANTS.values():
        read |= secret_refs(objects(values))
    for path in PLAIN:
        read |= secret_refs(list(yaml.safe_load_all(path.read_text())))
    # The Dagster chart reads its PostgreSQL password from global.postgresqlSecretName, key postgresql-password.
    read.add((DAGSTER_VALUES["global"]["postgresqlSecretName"], "postgresql-password"))
    assert read - documented == set()
    assert documented - read == set(), "the README documents a Secret key nothing reads"


def test_every_pearl_variable_is_a_setting(default: list[dict[str, Any]]) -> None:
    """A misspelt PEARL_ variable is silently ignored by pydantic-settings: each one set must be a field."""
    resources = (REPO_ROOT / "pearl_pipelines" / "defs" / "resources.py").read_text()
    k8s_vars = set(re.findall(r'EnvVar\("(PEARL_K8S_\w+)"\)', resources))
    assert k8s_vars
    (deployment,) = DAGSTER_VALUES["dagster-user-deployments"]["deployments"]
    containers = [app_container(default), app_container(objects(VARIANTS["shared-volume"])), deployment]
    for container in containers:
        for name in (e["name"] for e in container["env"]):
            if name.startswith("PEARL_") and name not in k8s_vars:
                assert name.removeprefix("PEARL_").lower() in Settings.model_fields, name
    app_env = {e["name"]: e.get("value") for e in app_container(default)["env"]}
    assert k8s_vars <= app_env.keys()  # the live-mapping GPU pods are configured like Dagster's
    dagster_env = {e["name"]: e.get("value") for e in deployment["env"]}
    for name in k8s_vars:
        assert app_env[name] == dagster_env[name], name


# -- Dagster: K8sRunLauncher, PostgreSQL, GPU pods through Pipes, capped ------------------------------------


def test_helm_values_wire_the_k8s_deployment() -> None:
    values = DAGSTER_VALUES
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    env = {e["name"]: e.get("value") for e in deployment["env"]}
    assert env["PEARL_DEPLOYMENT"] == "k8s"
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "pearl_pipelines.definitions"]
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is False  # an external PostgreSQL, password from a Secret
    assert values["generatePostgresqlPasswordSecret"] is False


def test_run_pods_may_start_worker_pods(default: list[dict[str, Any]]) -> None:
    launcher = DAGSTER_VALUES["runLauncher"]["config"]["k8sRunLauncher"]
    account = launcher["runK8sConfig"]["podSpecConfig"]["serviceAccountName"]
    find(default, "ServiceAccount", account)
    binding = find(default, "RoleBinding", "pearl-pipes-workers")
    assert {s["name"] for s in binding["subjects"]} == {account, APP}
    rules = find(default, "Role", "pearl-pipes-workers")["rules"]
    allowed = {(resource, verb) for rule in rules for resource in rule["resources"] for verb in rule["verbs"]}
    # What PipesK8sClient does: create the pod, wait for it, stream its logs (the messages), delete it.
    assert {("pods", "create"), ("pods", "get"), ("pods", "watch"), ("pods/log", "get"), ("pods", "delete")} <= allowed
    assert find(default, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == APP
    # The claim the worker pods mount (GpuCompute.pearl_home_claim via PEARL_K8S_HOME_CLAIM) is the chart's.
    env = {e["name"]: e.get("value") for e in DAGSTER_VALUES["dagster-user-deployments"]["deployments"][0]["env"]}
    claim = find(default, "PersistentVolumeClaim", env["PEARL_K8S_HOME_CLAIM"])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert launcher["volumes"][0]["persistentVolumeClaim"]["claimName"] == env["PEARL_K8S_HOME_CLAIM"]


def test_gpu_runs_are_queued_below_the_gpu_quota(default: list[dict[str, Any]]) -> None:
    import dagster as dg

    from pearl_pipelines.definitions import defs
    from pearl_pipelines.defs.jobs import PROJECT_TAG

    # One GPU worker pod per run at a time: the runs in flight bound the GPU pods.
    assert defs.executor is dg.in_process_executor
    queue = DAGSTER_VALUES["dagsterDaemon"]["runCoordinator"]
    assert queue["enabled"] and queue["type"] == "QueuedRunCoordinator"
    config = queue["config"]["queuedRunCoordinator"]
    quota = find(default, "ResourceQuota", "pearl-gpus")["spec"]["hard"]["requests.nvidia.com/gpu"]
    assert 1 <= config["maxConcurrentRuns"] < int(quota)  # the rest is for the review app's live pods
    limits = {limit["key"]: limit for limit in config["tagConcurrencyLimits"]}
    assert limits[PROJECT_TAG]["value"] == {"applyLimitPerUniqueValue": True}
    assert limits[PROJECT_TAG]["limit"] == 1
    assert '"pearl/region"' in (REPO_ROOT / "pearl_pipelines/defs/schedules.py").read_text()
    assert limits["pearl/region"]["limit"] >= 1


def test_workspace_points_at_the_definitions() -> None:
    workspace = yaml.safe_load((REPO_ROOT / "workspace.yaml").read_text())
    (location,) = workspace["load_from"]
    assert location["python_module"]["module_name"] == "pearl_pipelines.definitions"


# -- the app as the manifest starts it -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serve(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", *args], cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


def test_the_app_answers_the_probes_as_deployed(default: list[dict[str, Any]], tmp_path: Path) -> None:
    """uvicorn with the container's args and settings (Secrets stood in for: a SQLite label store, the per-process
    defaults for Redis and the object store); the kubelet calls the pod by its IP, not the ingress host."""
    container = app_container(default)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PEARL_", "AWS_"))}
    env.update({e["name"]: e["value"] for e in container["env"] if "value" in e})
    env.update(
        PEARL_HOME=str(tmp_path / "home"),
        PEARL_LABEL_STORE_URL=f"sqlite:///{tmp_path / 'labels.db'}",
        PEARL_AUTH_SECRET=secrets.token_urlsafe(48),
        PEARL_MLFLOW_TRACKING_URI=f"http://127.0.0.1:{_free_port()}",  # nothing there: the app starts anyway
        PYTHONPATH=str(REPO_ROOT),
    )
    args = [a for a in container["args"] if not a.startswith(("--host=", "--port="))]
    args += ["--host=127.0.0.1", f"--port={port}"]
    assert args[0] == "uvicorn" and args[1] == "review_app.main:app"
    url, pod = f"http://127.0.0.1:{port}", {"Host": f"10.244.1.17:{container['ports'][0]['containerPort']}"}
    log = tmp_path / "uvicorn.log"
    with _serve(args, env, log) as process:
        deadline = time.monotonic() + 120
        started = None
        while started is None:  # until the server answers at all (uvicorn listens once the app's startup is done)
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                started = httpx.get(url + container["startupProbe"]["httpGet"]["path"], headers=pod, timeout=2)
            time.sleep(0.5)
        assert started.status_code == 200, started.text
        for probe in ("readinessProbe", "livenessProbe"):
            response = httpx.get(url + container[probe]["httpGet"]["path"], headers=pod, timeout=5)
            assert response.status_code == 200, probe
            assert response.json() == {"status": "ok"}
        # Anything else by pod IP is refused (PEARL_ALLOWED_HOSTS); by the ingress host it asks for a sign-in (oidc).
        assert httpx.get(url + "/api/projects", headers=pod, timeout=5).status_code == 403
        assert httpx.get(url + "/api/projects", headers={"Host": "pearl.example.org"}, timeout=5).status_code == 401
