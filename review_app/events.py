"""Websocket fan-out: worker threads publish project events, every open socket of that project receives them.

Events are the models of review_app/schemas.py (`WsEvent`, one per `type`), turned into JSON once, by `publish`.
Jobs run in a thread pool, so `publish` is thread-safe: it hands the event to the event loop with
`call_soon_threadsafe`. A slow browser gets a bounded queue; when it is full the oldest progress
event is the one dropped (progress is superseded by the next one anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from typing import Any

from review_app.schemas import WsEventModel

log = logging.getLogger(__name__)
QUEUE_SIZE = 256


class EventHub:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscribers: dict[int, set[asyncio.Queue[dict[str, Any]]]] = defaultdict(set)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def subscribe(self, project_id: int) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self._subscribers[project_id].add(queue)
        return queue

    def unsubscribe(self, project_id: int, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers[project_id].discard(queue)

    def subscriber_count(self, project_id: int) -> int:
        return len(self._subscribers[project_id])

    def publish(self, project_id: int, event: WsEventModel) -> None:
        """Send `event` to every socket of the project; callable from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        message = event.model_dump(mode="json")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._deliver(project_id, message)
        else:
            loop.call_soon_threadsafe(self._deliver, project_id, message)

    def _deliver(self, project_id: int, event: dict[str, Any]) -> None:
        for queue in list(self._subscribers[project_id]):
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()  # drop the oldest: a stale progress figure
            queue.put_nowait(event)
