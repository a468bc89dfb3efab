"""The project websocket: the browser's only source of progress and "prediction updated" events (no polling)."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, WebSocket, WebSocketDisconnect, WebSocketException
from starlette.websockets import WebSocketState

from review_app.container import ReviewServices
from review_app.deps import ProjectId

router = APIRouter(tags=["websocket"])
PING_S = 20.0


@router.websocket("/api/projects/{project_id}/ws")
async def project_events(websocket: WebSocket, project_id: ProjectId) -> None:
    """Server -> browser JSON events: `hello`, `job` (progress/state), `imagery_ready`, `model_status`,
    `prediction_updated` (layer version and TileJSON to fetch), `metrics_updated`, `labels_changed`,
    `classes_changed`, `error`, `ping`."""
    services: ReviewServices = websocket.app.state.services
    try:
        services.projects.get(project_id)
    except KeyError:
        raise WebSocketException(code=4404, reason=f"no project {project_id}") from None
    await websocket.accept()
    queue = services.hub.subscribe(project_id)
    jobs = [j.out().model_dump(mode="json") for j in services.runner.active(project_id)]
    await websocket.send_json({"type": "hello", "project_id": project_id, "active_jobs": jobs})
    receiver = asyncio.create_task(_drain(websocket))
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter, receiver}, timeout=PING_S, return_when=asyncio.FIRST_COMPLETED)
            if receiver in done:  # the browser went away
                getter.cancel()
                break
            if getter in done:
                event = getter.result()
            else:
                getter.cancel()
                event = {"type": "ping"}  # keeps proxies from closing an idle socket
            await websocket.send_json(event)
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        services.hub.unsubscribe(project_id, queue)
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect):
            await receiver


async def close_with_code(websocket: WebSocket, exc: Exception) -> None:
    """A refused websocket is accepted, then closed with its 4xxx code and reason (4401 not signed in, 4403 no
    role, 4404 unknown project): a close before accept would reach the browser as a bare HTTP 403 handshake, and
    the page could not tell an expired token (renew, retry) from a refusal (stop)."""
    assert isinstance(exc, WebSocketException)
    if websocket.client_state == WebSocketState.CONNECTING:
        await websocket.accept()
    await websocket.close(code=exc.code, reason=exc.reason or "")


async def _drain(websocket: WebSocket) -> None:
    """Read (and ignore) client messages so a disconnect is noticed."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            await websocket.receive_text()
