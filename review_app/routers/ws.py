"""The project websocket: the browser's only source of progress and "prediction updated" events (no polling)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import APIRouter, FastAPI, WebSocket, WebSocketDisconnect, WebSocketException
from pydantic import TypeAdapter
from starlette.websockets import WebSocketState

from review_app.container import ReviewServices
from review_app.deps import ProjectId
from review_app.schemas import HelloEvent, PingEvent, WsEvent

router = APIRouter(tags=["websocket"])
PING_S = 20.0
PING = PingEvent().model_dump(mode="json")
EVENT_COMPONENT = "WsEvent"


@router.websocket("/api/projects/{project_id}/ws")
async def project_events(websocket: WebSocket, project_id: ProjectId) -> None:
    """Server -> browser JSON events: `hello`, `job` (progress/state), `imagery_ready`, `model_status`,
    `prediction_updated` (layer version and TileJSON to fetch), `metrics_updated`, `labels_changed`,
    `classes_changed`, `error`, `ping`: the `WsEvent` union of the OpenAPI schema's components."""
    services: ReviewServices = websocket.app.state.services
    try:
        services.projects.get(project_id)
    except KeyError:
        raise WebSocketException(code=4404, reason=f"no project {project_id}") from None
    await websocket.accept()
    queue = services.hub.subscribe(project_id)
    jobs = [j.out() for j in services.runner.active(project_id)]
    await websocket.send_json(HelloEvent(project_id=project_id, active_jobs=jobs).model_dump(mode="json"))
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
                event = PING  # keeps proxies from closing an idle socket
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


def add_event_schemas(app: FastAPI) -> None:
    """Put the websocket's events into the app's OpenAPI schema: `WsEvent` (the union, discriminated by `type`) and
    one component per event (`HelloEvent`, `JobEvent`...). OpenAPI has no place for a websocket's messages and no
    path refers to these components; they are there for the front-end's generated types (`make types`) and for
    readers of /docs. Models the events share with the REST API (`JobOut`, `TileJsonLinks`) keep their one
    component."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()  # FastAPI's, cached in app.openapi_schema: the events are added to it once
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        if EVENT_COMPONENT not in components:
            union = TypeAdapter(WsEvent).json_schema(mode="serialization", ref_template="#/components/schemas/{model}")
            for name, definition in union.pop("$defs", {}).items():
                components.setdefault(name, definition)
            components[EVENT_COMPONENT] = {"title": EVENT_COMPONENT, **union}
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
