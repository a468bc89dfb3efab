"""Run one worker task outside a Dagster run (the review app's jobs), where Dagster would run it.

Same command as `GpuCompute` (`python -m pearl_pipelines.worker <task>`, so the warm worker server takes it
when one runs), same Dagster Pipes protocol. Dagster's Pipes clients report into a run's context (logs,
engine events, materializations); a web app has no run, and it wants the task's custom messages while the
task runs (progress). So the launcher side here is built from Dagster's own pieces - the temp-file context
injector and message reader, `dagster_pipes` bootstrap encoding - around a small handler: custom messages
go to a callback, logs to Python logging, and the exception of the worker's closing message is raised.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, cast

from dagster._core.pipes.context import PipesMessageHandler
from dagster._core.pipes.utils import PipesTempFileContextInjector, PipesTempFileMessageReader
from dagster_pipes import (
    DAGSTER_PIPES_CONTEXT_ENV_VAR,
    DAGSTER_PIPES_MESSAGES_ENV_VAR,
    PipesContextData,
    encode_param,
)

if TYPE_CHECKING:
    from pearl_pipelines.defs.resources import GpuCompute
    from pearl_pipelines.settings import Settings

log = logging.getLogger(__name__)
OnMessage = Callable[[Any], None]
POLL_S = 0.05
STDERR_TAIL = 2000  # characters of the worker's output quoted when it dies without a Pipes exception


class WorkerTaskError(RuntimeError):
    """A worker task failed; the message is the worker's own exception (or its output's tail if it had none)."""


class SessionHandler:
    """The launcher's end of the message channel, for one task without a Dagster run.

    Duck-types the two methods Dagster's message readers call (`handle_message`,
    `report_pipes_framework_exception`); materializations and checks have no asset to go to and are ignored.
    """

    def __init__(self) -> None:
        self.custom: queue.Queue[Any] = queue.Queue()
        self.exception: Mapping[str, Any] | None = None

    def handle_message(self, message: Mapping[str, Any]) -> None:
        method, params = message.get("method"), message.get("params") or {}
        if method == "closed":
            self.exception = params.get("exception")
        elif method == "report_custom_message":
            self.custom.put(params.get("payload"))
        elif method == "log":
            level = logging.getLevelName(str(params.get("level", "info")).upper())
            log.log(level if isinstance(level, int) else logging.INFO, "[worker] %s", params.get("message"))

    def report_pipes_framework_exception(self, origin: str, exc_info: Any) -> None:
        log.error("pipes message reader failed in %s", origin, exc_info=exc_info)


def bootstrap_env(context_params: Mapping[str, Any], message_params: Mapping[str, Any]) -> dict[str, str]:
    """The two Pipes bootstrap variables `open_dagster_pipes` reads, encoded as Dagster encodes them."""
    return {
        DAGSTER_PIPES_CONTEXT_ENV_VAR: encode_param(context_params),
        DAGSTER_PIPES_MESSAGES_ENV_VAR: encode_param(message_params),
    }


def raise_if_failed(handler: SessionHandler, task: str, failure: str | None) -> None:
    """The worker's own exception if its closing message carried one, else `failure` (how the process ended)."""
    if handler.exception is not None:
        exc = handler.exception  # its message is the exception's last traceback line: "Name: text"
        raise WorkerTaskError(f"worker task {task!r} failed: {str(exc.get('message') or exc.get('name')).strip()}")
    if failure is not None:
        raise WorkerTaskError(f"worker task {task!r} {failure}")


def context_data(extras: Mapping[str, Any]) -> PipesContextData:
    """What `open_dagster_pipes` reads in the worker: no asset, no partition, a session id for a run id."""
    return PipesContextData(
        asset_keys=None,
        code_version_by_asset_key=None,
        provenance_by_asset_key=None,
        partition_key=None,
        partition_key_range=None,
        partition_time_window=None,
        run_id=f"session-{uuid.uuid4().hex[:12]}",
        job_name=None,
        retry_number=0,
        extras=dict(extras),
    )


def _tail(output: IO[bytes]) -> str:
    output.seek(0)
    return output.read().decode(errors="replace")[-STDERR_TAIL:].strip()


def deliver(handler: SessionHandler, received: list[Any], on_message: OnMessage | None, wait: float) -> None:
    """Pass on the custom messages that arrived (waiting up to `wait` s for the first), in order."""
    try:
        message = handler.custom.get(timeout=wait) if wait else handler.custom.get_nowait()
        while True:
            received.append(message)
            if on_message is not None:
                on_message(message)
            message = handler.custom.get_nowait()
    except queue.Empty:
        return


def run_local(
    task: str,
    command: Sequence[str],
    extras: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    on_message: OnMessage | None = None,
) -> list[Any]:
    """Run `command` (a worker task) as a local process speaking Pipes; its custom messages, in order.

    `on_message` is called in this thread as the messages arrive. Raises WorkerTaskError when the task fails.
    """
    handler = SessionHandler()
    reader = PipesTempFileMessageReader()
    received: list[Any] = []
    with (
        tempfile.TemporaryFile(prefix="pearl-session-") as output,
        PipesTempFileContextInjector().inject_context(context_data(extras)) as context_params,
        reader.read_messages(cast(PipesMessageHandler, handler)) as message_params,
    ):
        bootstrap = bootstrap_env(context_params, message_params)
        process = subprocess.Popen(
            list(command),
            env={**os.environ, **(env or {}), **bootstrap},
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            while process.poll() is None:
                deliver(handler, received, on_message, POLL_S)
        finally:
            if process.poll() is None:  # the callback raised: do not leave the task running
                process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(10)
        code = process.returncode
        tail = _tail(output)
    deliver(handler, received, on_message, 0)  # the reader thread has read the file to its end
    raise_if_failed(handler, task, None if code == 0 else f"exited with code {code}: {tail or '(no output)'}")
    if tail:
        log.debug("worker task %s output:\n%s", task, tail)
    return received


def run_task(
    task: str,
    extras: Mapping[str, Any],
    *,
    on_message: OnMessage | None = None,
    settings: Settings | None = None,
    compute: GpuCompute | None = None,
) -> list[Any]:
    """Run a worker task on the compute Dagster uses (`gpu_compute(settings)` unless given); its custom messages.

    Extras hold paths relative to PEARL_HOME, as for Dagster's runs. Raises WorkerTaskError when the task fails.
    """
    from pearl_pipelines.defs.resources import gpu_compute

    compute = compute or gpu_compute(settings)
    extras = compute.worker_extras(extras)
    if compute.mode == "k8s":
        from pearl_pipelines.worker.session_k8s import run_pod

        return run_pod(compute, task, extras, on_message=on_message)
    return run_local(
        task,
        compute.worker_command(task),
        extras,
        env=compute.env,
        cwd=compute.env.get("PEARL_HOME"),
        on_message=on_message,
    )
