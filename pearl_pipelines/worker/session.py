"""Run one worker task outside a Dagster run (the review app's jobs), where Dagster would run it.

Same command as `GpuCompute` (`python -m pearl_pipelines.worker <task>`, so the warm worker server takes it
when one runs), same Dagster Pipes protocol. Dagster's Pipes clients report into a run's context; a web app
has no run, and it wants the task's custom messages while the task runs (progress). So the launcher side is
built from Dagster's own pieces - here the temp-file context injector and message reader - around the handler
of `session_pipes.py`: custom messages go to a callback, and the worker's exception is raised.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, cast

from dagster._core.pipes.context import PipesMessageHandler
from dagster._core.pipes.utils import PipesTempFileContextInjector, PipesTempFileMessageReader

from pearl_pipelines.worker.session_pipes import (
    POLL_S,
    OnMessage,
    SessionHandler,
    WorkerTaskError,
    bootstrap_env,
    context_data,
    deliver,
    raise_if_failed,
)

if TYPE_CHECKING:
    from pearl_pipelines.defs.resources import GpuCompute
    from pearl_pipelines.settings import Settings

__all__ = ["OnMessage", "WorkerTaskError", "run_local", "run_task"]
log = logging.getLogger(__name__)
STDERR_TAIL = 2000  # characters of the worker's output quoted when it dies without a Pipes exception


def _tail(output: IO[bytes]) -> str:
    output.seek(0)
    return output.read().decode(errors="replace")[-STDERR_TAIL:].strip()


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
