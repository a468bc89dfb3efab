"""k8s mode of the session launcher: the worker task as a GPU pod, the pod `GpuCompute` gives Dagster's runs.

Why not `PipesK8sClient.run`: it needs a Dagster op context, and outside a run the only one is a directly
invoked op's, whose run id is "EPHEMERAL" - the client names pods `dagster-EPHEMERAL-...`, which an API server
refuses (pod names are lower case) - and which cannot take the worker's exception (the handler reports it as
an engine event of a step there is none of). So this takes the client's steps with the same dagster-k8s
pieces: the env context injector, the pod-log message reader, `build_pod_body` over GpuCompute's pod spec,
and the Kubernetes client's create / wait / delete; the session handler streams the messages.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import kubernetes
from dagster._core.pipes.context import PipesMessageHandler
from dagster._core.pipes.utils import PipesEnvContextInjector
from dagster_k8s.client import DagsterKubernetesClient, WaitForPodState
from dagster_k8s.pipes import WAIT_TIMEOUT_FOR_READY, PipesK8sPodLogsMessageReader, build_pod_body

from pearl_pipelines.worker.session_pipes import (
    POLL_S,
    OnMessage,
    SessionHandler,
    bootstrap_env,
    context_data,
    deliver,
    raise_if_failed,
)

if TYPE_CHECKING:
    from pearl_pipelines.defs.resources import GpuCompute

log = logging.getLogger(__name__)


class _LogContext:
    """What the pod-log reader uses of a Dagster context: a logger (for its reconnect warnings)."""

    log = log


def load_config(compute: GpuCompute) -> None:
    """Kubernetes client configuration as `PipesK8sClient` loads it (in-cluster, or a kubeconfig file)."""
    if compute.load_incluster_config:
        kubernetes.config.load_incluster_config()
    else:
        kubernetes.config.load_kube_config(config_file=compute.kubeconfig_file)


def _consume(reader: PipesK8sPodLogsMessageReader, client: DagsterKubernetesClient, name: str, namespace: str) -> None:
    """Stream the pod's log into the reader's handler until the log ends (a reader failure is logged, not raised:
    the pod's status decides the outcome)."""
    try:
        reader.consume_pod_logs(cast(Any, _LogContext()), client.core_api, name, namespace)
    except Exception:
        log.warning("reading the log of pod %s failed", name, exc_info=True)


def pod_name(task: str) -> str:
    return f"pearl-session-{task}-{uuid.uuid4().hex[:10]}"


def run_pod(
    compute: GpuCompute, task: str, extras: Mapping[str, Any], *, on_message: OnMessage | None = None
) -> list[Any]:
    """Run the task as a pod on `compute`'s namespace; its custom messages in order (streamed from the pod log).

    Raises WorkerTaskError with the worker's exception when the task fails, or the pod's failure otherwise.
    """
    load_config(compute)
    client = DagsterKubernetesClient.production_client()
    handler, reader = SessionHandler(), PipesK8sPodLogsMessageReader()
    name, namespace = pod_name(task), compute.namespace
    received: list[Any] = []
    failure: str | None = None
    with (
        PipesEnvContextInjector().inject_context(context_data(extras)) as context_params,
        reader.read_messages(cast(PipesMessageHandler, handler)) as message_params,
    ):
        pod = build_pod_body(
            pod_name=name,
            image=None,
            command=compute.worker_command(task),
            env_vars={**bootstrap_env(context_params, message_params), **compute.env},
            base_pod_meta=compute.pod_meta(task),
            base_pod_spec=compute.pod_spec(),
        )
        client.core_api.create_namespaced_pod(namespace, pod)
        try:
            every = compute.poll_interval
            try:
                client.wait_for_pod(
                    name,
                    namespace,
                    wait_for_state=WaitForPodState.Ready,
                    wait_time_between_attempts=every,
                    wait_timeout=WAIT_TIMEOUT_FOR_READY,
                )
            except Exception as exc:  # ended before it was ready (e.g. the task failed at once): its log remains
                log.info("pod %s did not become ready: %s", name, exc)
            logs = threading.Thread(target=_consume, args=(reader, client, name, namespace), daemon=True)
            logs.start()
            while logs.is_alive():
                deliver(handler, received, on_message, POLL_S)
            client.wait_for_pod(
                name, namespace, wait_for_state=WaitForPodState.Terminated, wait_time_between_attempts=every
            )
        except Exception as exc:  # the pod failed or never ran: the worker's exception says more, if it sent one
            failure = f"failed as pod {name}: {exc}"
        finally:
            client.core_api.delete_namespaced_pod(name, namespace)
    deliver(handler, received, on_message, 0)
    raise_if_failed(handler, task, failure)
    return received
