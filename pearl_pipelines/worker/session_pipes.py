"""The launcher's end of Dagster Pipes for a worker task without a Dagster run (worker/session.py, session_k8s.py).

Dagster's own message handler reports into a run (context logs, engine events, materializations); this one
keeps what a caller outside a run needs: the custom messages, in order, and the worker's exception.
"""

from __future__ import annotations

import logging
import queue
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from dagster_pipes import (
    DAGSTER_PIPES_CONTEXT_ENV_VAR,
    DAGSTER_PIPES_MESSAGES_ENV_VAR,
    PipesContextData,
    encode_param,
)

log = logging.getLogger(__name__)
OnMessage = Callable[[Any], None]
POLL_S = 0.05


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
