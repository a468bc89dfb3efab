"""GpuCompute(mode="k8s") through the real `dagster_k8s.PipesK8sClient` against kmock, a fake Kubernetes API.

What runs for real: the client loads a kubeconfig, creates the worker Pod through the Kubernetes API
(kmock stores it; we check it requests `nvidia.com/gpu` and carries the Pipes bootstrap), polls its
status, streams its log for Pipes messages and deletes it; the asset then gets the worker's reported
materialization. kmock runs no pods, so this test plays the kubelet: when the Pod appears, it runs the
Pod's own command with the Pod's own environment as a local subprocess (PEARL_HOME volume mapped to a
temp folder), serves its output as the Pod log, and sets the container status to terminated.

Not tested (needs a real cluster): scheduling on a GPU node, image pull, volume mounts, CUDA in the
container, log-stream reconnects, pod eviction.
"""

import asyncio
import datetime as dt
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import kmock
import pytest
import yaml
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from pearl_pipelines.defs.resources import GpuCompute

NAMESPACE = "pearl"


class PodApiServer(kmock.KubernetesEmulator):
    """kmock's emulator plus the one thing the API server does on pod creation: a Pending status."""

    async def _handle(self, request: Any) -> Any:
        creating = request.action == kmock.action.CREATE and isinstance(request.data, dict)
        if creating and request.resource is not None and request.resource.plural == "pods":
            request.data.setdefault("status", {"phase": "Pending"})
        return await super()._handle(request)


class FakeCluster:
    """kmock's KubernetesEmulator on 127.0.0.1 in a background event loop, plus an emulated kubelet."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.logs: dict[str, bytes] = {}
        self.created: list[dict[str, Any]] = []
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with PodApiServer() as api, kmock.Server(api) as server:
            # Pod logs are a subresource kmock does not store: serve what the emulated kubelet captured.
            api.resources["v1/pods"] = {"namespaced": True, "kind": "Pod", "subresources": ["log", "status"]}
            api[kmock.subresource("log")] << (lambda request: self.logs.get(request.name, b""))
            self.port = server.port
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> "FakeCluster":
        self._thread.start()
        assert self._ready.wait(10), "kmock did not start"
        self.kubeconfig = self.home / "kubeconfig.yaml"
        self.kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "kmock", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
                    "users": [{"name": "dagster", "user": {"token": "test"}}],
                    "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "dagster"}}],
                    "current-context": "kmock",
                }
            )
        )
        self._kubelet_stop = threading.Event()
        self._kubelet = threading.Thread(target=self._run_kubelet, daemon=True)
        self._kubelet.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._kubelet_stop.set()
        self._kubelet.join(10)
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _api(self) -> k8s_client.CoreV1Api:
        return k8s_client.CoreV1Api(k8s_config.new_client_from_config(str(self.kubeconfig)))

    def _run_kubelet(self) -> None:
        api = self._api()
        started: set[str] = set()
        while not self._kubelet_stop.is_set():
            for pod in api.list_namespaced_pod(NAMESPACE).items:
                if pod.metadata.name in started:
                    continue
                started.add(pod.metadata.name)
                self.created.append(api.api_client.sanitize_for_serialization(pod))
                self._run_pod(api, pod)
            time.sleep(0.05)

    def _run_pod(self, api: k8s_client.CoreV1Api, pod: Any) -> None:
        container = pod.spec.containers[0]
        mounts = {m.mount_path: self.home / m.name for m in container.volume_mounts or []}
        env = {}
        for var in container.env or []:
            if var.value is None:  # from a Secret this fake cluster lacks (optional refs): unset, as the kubelet does
                continue
            env[var.name] = str(mounts.get(var.value, var.value))
        for path in mounts.values():
            path.mkdir(parents=True, exist_ok=True)
        command = [sys.executable if part == "python" else part for part in container.command]
        done = subprocess.run(
            command, env={**env, "PATH": "/usr/bin:/bin"}, capture_output=True, timeout=300, check=False
        )
        # Like the kubelet: one RFC 3339 timestamp per line (the client joins lines that share one).
        now = dt.datetime.now(dt.UTC)
        lines = (done.stdout + done.stderr).decode().splitlines()
        stamps = [(now + dt.timedelta(microseconds=i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ") for i in range(len(lines))]
        self.logs[pod.metadata.name] = "".join(f"{t} {line}\n" for t, line in zip(stamps, lines, strict=True)).encode()
        status = {
            "phase": "Succeeded" if done.returncode == 0 else "Failed",
            "containerStatuses": [
                {
                    "name": container.name,
                    "image": container.image,
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {"terminated": {"exitCode": done.returncode, "reason": "Completed"}},
                }
            ],
        }
        api.patch_namespaced_pod_status(pod.metadata.name, NAMESPACE, {"status": status})


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[FakeCluster]:
    with FakeCluster(tmp_path) as fake:
        yield fake


def test_pipes_k8s_client_runs_the_worker_pod(cluster: FakeCluster) -> None:
    compute = GpuCompute(
        mode="k8s",
        image="registry.example/pearl-worker:1.0",
        namespace=NAMESPACE,
        kubeconfig_file=str(cluster.kubeconfig),
        load_incluster_config=False,
        poll_interval=0.1,
    )

    @dg.asset
    def gpu_probe(context: dg.AssetExecutionContext, compute: GpuCompute) -> dg.MaterializeResult:
        return compute.run(context, "probe", {"echo": "hello from the pod"}).get_materialize_result()

    result = dg.materialize([gpu_probe], resources={"compute": compute})

    assert result.success
    meta = result.asset_materializations_for_node("gpu_probe")[0].metadata
    assert meta["echo"].value == "hello from the pod"  # extras in, metadata out, through the pod log
    assert meta["pearl_home"].value == str(cluster.home / "pearl-home")  # the PVC mount, as the pod sees it
    (pod,) = cluster.created
    (container,) = pod["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["command"] == ["python", "-m", "pearl_pipelines.worker", "probe"]
    assert {"DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"} <= {e["name"] for e in container["env"]}
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    # The client deleted the pod once it had the results.
    assert cluster._api().list_namespaced_pod(NAMESPACE).items == []


def test_session_launcher_runs_the_task_as_a_pod_and_streams_its_messages(cluster: FakeCluster) -> None:
    """The review app's launcher in k8s mode (worker/session_k8s.py): the same pod, its messages from the pod log."""
    from pearl_pipelines.worker.session import WorkerTaskError, run_task
    from tests.worker.aoi_data import aoi_extras, build_aoi_home, check_messages, check_outputs

    volume = build_aoi_home(cluster.home / "pearl-home")  # the PVC, as the emulated kubelet mounts it
    compute = GpuCompute(
        mode="k8s",
        image="registry.example/pearl-worker:1.0",
        namespace=NAMESPACE,
        kubeconfig_file=str(cluster.kubeconfig),
        load_incluster_config=False,
        poll_interval=0.1,
        env={"PYTHONPATH": os.environ.get("PYTHONPATH", "")},  # the image's code = this checkout's
    )
    seen: list[Any] = []
    messages = run_task("predict-aoi", aoi_extras(volume), on_message=seen.append, compute=compute)
    assert seen == messages
    check_messages(messages)
    check_outputs(volume)
    (pod,) = cluster.created
    assert pod["metadata"]["name"].startswith("pearl-session-predict-aoi-")
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"

    with pytest.raises(WorkerTaskError, match=r"predict-aoi.*FileNotFoundError: no model version checkpoint"):
        run_task("predict-aoi", {**aoi_extras(volume), "version_dir": "models/missing"}, compute=compute)
    assert cluster._api().list_namespaced_pod(NAMESPACE).items == []
