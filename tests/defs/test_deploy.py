"""Deployment files: Kubernetes manifests validate strictly offline; Helm values and workspace parse."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from pearl_pipelines.settings import REPO_ROOT

MANIFESTS = sorted((REPO_ROOT / "deploy" / "k8s").glob("*.yaml"))


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_manifests_validate_for_kubernetes_1_32(path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert documents
    for document in documents:
        kubernetes_validate.validate(document, "1.32.0", strict=True)


def test_helm_values_wire_the_k8s_deployment() -> None:
    values = yaml.safe_load((REPO_ROOT / "deploy" / "helm" / "values.yaml").read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    env = {e["name"]: e.get("value") for e in deployment["env"]}
    assert env["PEARL_DEPLOYMENT"] == "k8s"
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "pearl_pipelines.definitions"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"


def test_workspace_points_at_the_definitions() -> None:
    workspace = yaml.safe_load((REPO_ROOT / "workspace.yaml").read_text())
    (location,) = workspace["load_from"]
    assert location["python_module"]["module_name"] == "pearl_pipelines.definitions"
