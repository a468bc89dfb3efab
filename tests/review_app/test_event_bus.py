"""Websocket events between app processes over Redis pub/sub (review_app/events.py, PEARL_EVENTS_URL): two EventHubs
stand for two processes, each with its own event loop and sockets (queues), on a real redis-server."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pearl_pipelines.redis_local import RedisServer
from review_app.events import EventHub, check_events_url
from review_app.schemas import ErrorEvent


class Process:
    """An EventHub bound to its own running event loop, as in one app process."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.hub = EventHub(url)
        self.hub.bind(self.loop)

    def socket(self, project_id: int) -> asyncio.Queue[dict[str, Any]]:
        return asyncio.run_coroutine_threadsafe(self._subscribe(project_id), self.loop).result(5)

    async def _subscribe(self, project_id: int) -> asyncio.Queue[dict[str, Any]]:
        return self.hub.subscribe(project_id)

    def received(self, inbox: asyncio.Queue[dict[str, Any]], timeout: float = 5.0) -> list[dict[str, Any]]:
        """What the socket got within `timeout` (returns as soon as something came, after a short settle)."""
        deadline = time.monotonic() + timeout
        while inbox.empty() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        out = []
        while not inbox.empty():
            out.append(inbox.get_nowait())
        return out

    def close(self) -> None:
        self.hub.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def processes(redis_server: RedisServer) -> Iterator[tuple[Process, Process]]:
    if redis_server.process is None:
        redis_server.start()
    pair = Process(redis_server.url(1)), Process(redis_server.url(1))
    time.sleep(0.5)  # both listeners subscribed
    yield pair
    for process in pair:
        process.close()


def test_an_event_reaches_the_sockets_of_every_process_once(processes: tuple[Process, Process]) -> None:
    one, two = processes
    mine, theirs, other_project = one.socket(7), two.socket(7), two.socket(8)
    one.hub.publish(7, ErrorEvent(job_id="j1", message="from one"))
    assert [e["message"] for e in two.received(theirs)] == ["from one"]
    assert [e["message"] for e in one.received(mine)] == ["from one"]  # delivered directly, its echo skipped
    assert two.received(other_project, timeout=0.5) == []  # another project's sockets get nothing


def test_malformed_messages_on_the_channel_are_ignored(
    processes: tuple[Process, Process], redis_server: RedisServer
) -> None:
    one, two = processes
    inbox = two.socket(7)
    client = redis_server.client()
    prefix = one.hub._bus.prefix  # type: ignore[union-attr]
    for junk in (b"not json", b'{"origin": "x", "event": "not an object"}', b"{}"):
        client.publish(f"{prefix}7", junk)
    client.publish(f"{prefix}not-a-number", b'{"origin": "x", "event": {"type": "error"}}')
    one.hub.publish(7, ErrorEvent(job_id="j2", message="still flowing"))
    assert [e["message"] for e in two.received(inbox)] == ["still flowing"]


def test_events_flow_again_after_redis_comes_back(
    processes: tuple[Process, Process], redis_server: RedisServer
) -> None:
    one, two = processes
    inbox, local = two.socket(7), one.socket(7)
    redis_server.stop()
    one.hub.publish(7, ErrorEvent(job_id="j3", message="while redis is away"))
    assert [e["message"] for e in one.received(local)] == ["while redis is away"]  # this process's sockets still get it
    redis_server.start()
    deadline = time.monotonic() + 20
    got: list[str] = []
    while not got and time.monotonic() < deadline:  # the listener reconnects within RETRY_S
        one.hub.publish(7, ErrorEvent(job_id="j4", message="back"))
        got = [e["message"] for e in two.received(inbox, timeout=1.0) if e["message"] == "back"]
    assert got


def test_a_bad_events_url_is_refused_with_what_is_accepted() -> None:
    assert check_events_url("memory://") == "memory://"
    with pytest.raises(ValueError, match=r"memory:// or redis://host:port/db, not 'example\.org/'") as refused:
        check_events_url("http://user:secret@example.org/")
    assert "secret" not in str(refused.value)  # the password never reaches a message
    with pytest.raises(RuntimeError, match=r"PEARL_EVENTS_URL: the Redis at 127\.0\.0\.1:1/0 does not answer") as down:
        EventHub("redis://:hunter2@127.0.0.1:1/0")
    assert "hunter2" not in str(down.value)
