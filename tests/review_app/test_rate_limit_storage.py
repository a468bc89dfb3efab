"""The per-user write limit shared between app processes through Redis (PEARL_RATE_LIMIT_STORAGE).

Two app instances (each its own ReviewServices and WriteLimiter, as two uvicorn workers or replicas have) over the
same label store: with one Redis they share a user's budget; with memory:// each counts on its own. A real
redis-server runs on loopback; skipped only where it is not installed and PEARL_REQUIRE_REDIS is unset.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pearl_pipelines.redis_local import RedisServer
from pearl_pipelines.settings import Settings
from review_app.rate_limits import RateLimitConfigError, WriteLimiter
from tests.conftest import free_port
from tests.review_app.conftest import new_home, wait_ready

LIMIT = "5/minute"


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The server, running and empty (a test may have stopped it or left counts behind)."""
    if redis_server.process is None:
        redis_server.start()
    redis_server.client().flushall()
    return redis_server.url()


@pytest.fixture
def home_settings(review_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return new_home(tmp_path_factory, review_assets).model_copy(update={"write_rate_limit": LIMIT})


@contextmanager
def replicas(settings: Settings, count: int = 2) -> Iterator[list[TestClient]]:
    """`count` separate apps over one PEARL_HOME (one label store: the same users), as uvicorn workers are."""
    from review_app.main import create_app

    with ExitStack() as stack:
        clients: list[TestClient] = []
        for _ in range(count):  # one after the other: a replica starting while another builds the mosaic waits
            clients.append(stack.enter_context(TestClient(create_app(settings))))
            wait_ready(clients[-1])
        limiters = {id(c.app.state.services.write_limiter) for c in clients}  # type: ignore[attr-defined]
        assert len(limiters) == count  # each app counts with its own limiter object
        yield clients


def write(client: TestClient) -> int:
    """One write of the local user (a new API token: needs no project), its status."""
    return client.post("/api/tokens", json={"name": "t"}).status_code


def test_replicas_on_one_redis_share_a_users_budget(home_settings: Settings, redis_url: str) -> None:
    settings = home_settings.model_copy(update={"rate_limit_storage": redis_url})
    with replicas(settings) as (a, b):
        assert [write(a) for _ in range(3)] == [201, 201, 201]
        assert [write(b) for _ in range(2)] == [201, 201]
        refused = b.post("/api/tokens", json={"name": "t"})  # the 6th write of this user, 3 + 3 across the apps
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert "at most 5 per 1 minute" in refused.json()["detail"]
        assert write(a) == 429  # and app A sees the same spent budget


def test_replicas_with_memory_storage_count_apart(home_settings: Settings) -> None:
    """The same sequence with the default memory:// store: each app counts on its own, no 429 (why Redis)."""
    assert home_settings.rate_limit_storage == "memory://"
    with replicas(home_settings) as (a, b):
        assert [write(a) for _ in range(3)] + [write(b) for _ in range(3)] == [201] * 6


def test_redis_going_away_fails_open_to_per_process_counts(
    home_settings: Settings, redis_server: RedisServer, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis stopped while the apps run: writes go on (never a 500), each app limits by its own count; when Redis
    is back, the shared count is used again."""
    settings = home_settings.model_copy(update={"rate_limit_storage": redis_url})
    with replicas(settings) as (a, b):
        for client in (a, b):
            client.app.state.services.write_limiter.retry_s = 0  # type: ignore[attr-defined]  # retry Redis at once
        assert [write(a), write(b)] == [201, 201]  # 2 of 5 spent in Redis
        redis_server.stop()
        with caplog.at_level(logging.WARNING, logger="review_app.rate_limits"):
            during = [write(a) for _ in range(6)]
        assert during == [201] * 5 + [429]  # app A's own count: 5/minute per process while Redis is away
        assert "counting writes per process" in caplog.text
        assert write(b) == 201  # app B counts apart meanwhile
        redis_server.start()  # back, empty (no persistence)
        assert write(a) == 201  # Redis counts again (A's own count is spent: this one went to Redis)
        assert redis_server.client().keys("LIMITS*")
        assert [write(b) for _ in range(4)] == [201, 201, 201, 201]
        assert write(b) == 429  # shared again: 1 through A + 4 through B


def test_bad_storage_settings_refuse_to_start(home_settings: Settings) -> None:
    from review_app.main import create_app

    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(RateLimitConfigError, match=r"PEARL_RATE_LIMIT_STORAGE=.*does not answer.*redis://"):
        WriteLimiter(LIMIT, unreachable)
    for uri in ("memcached://127.0.0.1:11211", "async+redis://127.0.0.1:6379", "not a uri"):
        with pytest.raises(RateLimitConfigError, match=r"PEARL_RATE_LIMIT_STORAGE=.*use memory:// .* or redis://"):
            WriteLimiter(LIMIT, uri)
    with pytest.raises(RateLimitConfigError, match=r"PEARL_RATE_LIMIT_STORAGE='redis://:\*\*\*@"):
        WriteLimiter(LIMIT, f"redis://:hunter2@127.0.0.1:{free_port()}/0")  # the password never shows
    with pytest.raises(RateLimitConfigError, match="PEARL_WRITE_RATE_LIMIT"):
        WriteLimiter("5/fortnight")
    settings = home_settings.model_copy(update={"rate_limit_storage": unreachable})
    with pytest.raises(RateLimitConfigError, match="PEARL_RATE_LIMIT_STORAGE"), TestClient(create_app(settings)):
        pass  # the app does not start
