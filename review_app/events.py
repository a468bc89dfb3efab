"""Websocket fan-out: worker threads publish project events, every open socket of that project receives them.

Events are the models of review_app/schemas.py (`WsEvent`, one per `type`), turned into JSON once, by `publish`.
Jobs run in a thread pool, so `publish` is thread-safe: it hands the event to the event loop with
`call_soon_threadsafe`. A slow browser gets a bounded queue; when it is full the oldest progress
event is the one dropped (progress is superseded by the next one anyway).

Between app processes (PEARL_EVENTS_URL=redis://...): every event is also published on Redis (pub/sub, one channel
per project), and every process hands what the others published to its own sockets, so a browser sees the events
of a job whichever process runs it. A process delivers its own events directly (no round trip on the live loop's
path) and skips their echo. Redis pub/sub keeps nothing: an event published while Redis is away is lost for the
other processes (the page reloads its state on reconnect), never for this one's sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import threading
import time
import uuid
from collections import defaultdict
from typing import Any
from urllib.parse import urlsplit

import redis

from review_app.schemas import WsEventModel

log = logging.getLogger(__name__)
QUEUE_SIZE = 256


class EventHub:
    def __init__(self, url: str = "memory://") -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscribers: dict[int, set[asyncio.Queue[dict[str, Any]]]] = defaultdict(set)
        self._bus = RedisBus(url, self._from_others) if url != "memory://" else None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        if self._bus is not None:
            self._bus.start()

    def close(self) -> None:
        if self._bus is not None:
            self._bus.close()

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
        if self._bus is not None:
            self._bus.send(project_id, message)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._deliver(project_id, message)
        else:
            loop.call_soon_threadsafe(self._deliver, project_id, message)

    def _deliver(self, project_id: int, event: dict[str, Any]) -> None:
        for inbox in list(self._subscribers[project_id]):
            if inbox.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    inbox.get_nowait()  # drop the oldest: a stale progress figure
            inbox.put_nowait(event)

    def _from_others(self, project_id: int, event: dict[str, Any]) -> None:
        """(The bus's thread.) An event another process published: to this process's sockets of the project."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._deliver, project_id, event)


def _shown(url: str) -> str:
    """The URL without its password, for messages."""
    return url.rsplit("@", maxsplit=1)[-1]


def check_events_url(url: str) -> str:
    """memory:// or redis://host[:port][/db]; ValueError saying what is accepted otherwise."""
    if url == "memory://":
        return url
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError(f"PEARL_EVENTS_URL must be memory:// or redis://host:port/db, not {_shown(url)!r}")
    return url


class RedisBus:
    """Redis pub/sub between app processes: `send` queues an event for a sender thread (never blocks a job or the
    event loop), a listener thread hands the other processes' events to `deliver`. Both reconnect on their own."""

    RETRY_S = 1.0

    def __init__(self, url: str, deliver: Any) -> None:
        self.client = redis.Redis.from_url(check_events_url(url), socket_timeout=5, socket_connect_timeout=5)
        try:
            self.client.ping()  # refuse to start on a Redis that does not answer, as the rate limits do
        except redis.RedisError as exc:
            raise RuntimeError(f"PEARL_EVENTS_URL: the Redis at {_shown(url)} does not answer ({exc})") from None
        db = self.client.connection_pool.connection_kwargs.get("db", 0)
        self.prefix = f"pearl:{db}:events:"  # pub/sub channels ignore the database number: it goes in the name
        self.origin = uuid.uuid4().hex
        self.deliver = deliver
        self._outbox: queue.Queue[tuple[int, dict[str, Any]] | None] = queue.Queue(10_000)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        if self._threads:
            return
        for target, name in ((self._send_loop, "pearl-events-out"), (self._listen_loop, "pearl-events-in")):
            thread = threading.Thread(target=target, daemon=True, name=name)
            thread.start()
            self._threads.append(thread)

    def send(self, project_id: int, event: dict[str, Any]) -> None:
        with contextlib.suppress(queue.Full):  # Redis away for long: drop rather than grow without bound
            self._outbox.put_nowait((project_id, event))

    def _send_loop(self) -> None:
        while (item := self._outbox.get()) is not None:
            project_id, event = item
            payload = json.dumps({"origin": self.origin, "event": event})
            try:
                self.client.publish(f"{self.prefix}{project_id}", payload)
            except redis.RedisError as exc:
                log.warning("event for project %s not sent to the other processes: %s", project_id, exc)

    def _listen_loop(self) -> None:
        while not self._stop.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.psubscribe(f"{self.prefix}*")
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is not None:
                        self._received(message)
            except redis.RedisError as exc:
                log.warning("events from the other processes interrupted (%s); reconnecting", exc)
                self._stop.wait(self.RETRY_S)
            finally:
                with contextlib.suppress(redis.RedisError):
                    pubsub.close()

    def _received(self, message: dict[str, Any]) -> None:
        try:
            data = json.loads(message["data"])
            channel = message["channel"].decode() if isinstance(message["channel"], bytes) else message["channel"]
            project_id = int(channel.removeprefix(self.prefix))
        except (ValueError, TypeError, KeyError):
            log.warning("ignored a malformed event message on %r", message.get("channel"))
            return
        if data.get("origin") != self.origin and isinstance(data.get("event"), dict):
            self.deliver(project_id, data["event"])

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._outbox.put(None, timeout=1)
        deadline = time.monotonic() + 2
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.client.close()
