"""GpuCompute in k8s mode, tested as far as possible without a cluster.

Tested here: the Pod that `dagster_k8s.PipesK8sClient.run` would create for each worker task is built
with the client's own `build_pod_body` and validated offline against the Kubernetes 1.32.0 schema
(`kubernetes-validate --strict`, Python API and CLI); it requests `nvidia.com/gpu`, lands on GPU nodes
and mounts PEARL_HOME.

Not tested here (needs a cluster): scheduling on a real GPU node, image pulls, the PVC being shared with
the Dagster run pods, log streaming from a running pod, and CUDA inside the container. The client flow
against a fake API server is in `test_compute_kmock.py`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest

from pearl_pipelines.defs.resources import GpuCompute
from pearl_pipelines.worker.tasks import TASKS

K8S_VERSION = "1.32.0"
BOOTSTRAP = {"DAGSTER_PIPES_CONTEXT": "eyJ4IjogMX0=", "DAGSTER_PIPES_MESSAGES": "eyJ5IjogMX0="}


def gpu_compute(**overrides) -> GpuCompute:
    return GpuCompute(
        mode="k8s",
        image="registry.example/pearl-worker:1.0",
        namespace="pearl",
        gpus=1,
        node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        mlflow_tracking_uri="http://mlflow.pearl.svc:5000",
        **overrides,
    )


@pytest.mark.parametrize("task", sorted(TASKS))
def test_worker_pod_is_valid_for_kubernetes(task: str) -> None:
    manifest = gpu_compute().pod_manifest(task, pod_name=f"dagster-run-0123abcd-{task}", env_vars=BOOTSTRAP)
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)

    (container,) = manifest["spec"]["containers"]
    assert container["command"] == ["python", "-m", "pearl_pipelines.worker", task]
    assert container["image"] == "registry.example/pearl-worker:1.0"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert env["PEARL_HOME"] == "/data/pearl"
    # The database, the object store and its keys come from the chart's Secrets, never as values in the pod spec.
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert secrets["PEARL_STORAGE_URL"] == {"name": "pearl-object-store", "key": "storage-url", "optional": True}
    assert secrets["AWS_SECRET_ACCESS_KEY"]["name"] == "pearl-object-store"
    assert secrets["PEARL_LABEL_STORE_URL"]["name"] == "pearl-label-store"
    assert env["PEARL_MLFLOW_TRACKING_URI"] == "http://mlflow.pearl.svc:5000"
    assert BOOTSTRAP.items() <= env.items()  # the Pipes bootstrap reaches the worker
    assert manifest["spec"]["restartPolicy"] == "Never"
    assert manifest["spec"]["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert manifest["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert manifest["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "pearl-home"
    assert manifest["metadata"]["labels"]["pearl/task"] == task


def test_cli_validates_the_pod_strictly(tmp_path: Path) -> None:
    path = tmp_path / "pod.json"
    path.write_text(json.dumps(gpu_compute().pod_manifest("predict", env_vars=BOOTSTRAP)))
    cli = Path(sys.executable).parent / "kubernetes-validate"
    done = subprocess.run(
        [str(cli), "--strict", "-k", K8S_VERSION, str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_invalid_pods_are_caught() -> None:
    """Neither check is a rubber stamp: a typo in a setting fails when the pod is built, and a manifest
    with an unknown field or a wrongly typed value fails strict validation."""
    compute = gpu_compute().model_copy(update={"tolerations": [{"key": "nvidia.com/gpu", "operater": "Exists"}]})
    with pytest.raises(Exception, match="operater"):
        compute.pod_manifest("predict", env_vars=BOOTSTRAP)
    manifest = gpu_compute().pod_manifest("predict", env_vars=BOOTSTRAP)
    manifest["spec"]["containers"][0]["resourcez"] = manifest["spec"]["containers"][0].pop("resources")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    manifest = gpu_compute().pod_manifest("predict", env_vars=BOOTSTRAP)
    manifest["spec"]["activeDeadlineSeconds"] = "an hour"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def test_local_mode_runs_the_same_worker_command() -> None:
    local = GpuCompute()
    assert local.worker_command("predict")[1:] == gpu_compute().worker_command("predict")[1:]
    assert local.worker_command("predict")[0] == sys.executable


def test_worker_secrets_are_the_documented_ones() -> None:
    """Every Secret key a worker pod reads is one deploy/README.md tells the operator to create."""
    readme = (Path(__file__).resolve().parents[2] / "deploy" / "README.md").read_text()
    documented = set(re.findall(r"^\| `([a-z0-9-]+)` \| `([a-z0-9-]+)` \|", readme, flags=re.MULTILINE))
    (container,) = gpu_compute().pod_spec()["containers"]
    refs = {
        (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container["env"]
        if "valueFrom" in e
    }
    assert refs and refs <= documented, refs - documented
    with pytest.raises(ValueError, match="must be 'secret/key'"):
        gpu_compute(secret_env={"PEARL_STORAGE_URL": "no-key"}).pod_spec()
