"""Abuse limits that answer 429: writes per user (the `limits` library's sliding window), and jobs per project
(at most one running and one waiting of each kind: the job runner coalesces or refuses the rest).

The write counts live in the store that PEARL_RATE_LIMIT_STORAGE names: `memory://` (default) counts in this
process only, so N uvicorn workers or replicas allow N times the limit; `redis://host:port/db` shares one budget
per user between every process that names the same Redis database.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import urllib.parse
from typing import Any

from limits import parse_many, storage, strategies
from limits.errors import ConfigurationError, StorageError
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)

# Schemes whose client ships with the app (the `limits[redis]` extra) and that the suite runs against a real server.
STORAGE_SCHEMES = ("memory", "redis", "rediss", "redis+unix")
ACCEPTED = "memory:// (one process) or redis://[:password@]host:port/db (also rediss://, redis+unix:///path.sock)"
# A write must not hang on a Redis that went away: short socket timeouts and a single, immediate retry.
REDIS_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": 1.0,
    "socket_timeout": 1.0,
    "retry": Retry(NoBackoff(), retries=1),
}


class TooManyRequests(Exception):
    """Refused for now (429); `retry_after` says when trying again makes sense."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))


class RateLimitConfigError(RuntimeError):
    """A rate-limit setting the app cannot run with; the app refuses to start and says what is accepted."""


def _redacted(uri: str) -> str:
    """The URI without its password, for messages and logs."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def open_storage(uri: str) -> storage.Storage:
    """The `limits` storage of PEARL_RATE_LIMIT_STORAGE, checked to answer now: RateLimitConfigError otherwise."""
    scheme = urllib.parse.urlsplit(uri).scheme
    if scheme not in STORAGE_SCHEMES:
        raise RateLimitConfigError(
            f"refusing to start: PEARL_RATE_LIMIT_STORAGE={_redacted(uri)!r} is not a supported storage; use {ACCEPTED}"
        )
    options = REDIS_OPTIONS if scheme != "memory" else {}
    try:
        store = storage.storage_from_string(uri, wrap_exceptions=True, **options)
    except (ConfigurationError, ValueError) as exc:
        raise RateLimitConfigError(
            f"refusing to start: PEARL_RATE_LIMIT_STORAGE={_redacted(uri)!r} is not usable ({exc}); use {ACCEPTED}"
        ) from None
    assert isinstance(store, storage.Storage)  # the accepted schemes are all synchronous storages
    if isinstance(store, storage.RedisStorage):
        try:
            store.get_connection().ping()
        except Exception as exc:
            raise RateLimitConfigError(
                f"refusing to start: the Redis of PEARL_RATE_LIMIT_STORAGE={_redacted(uri)!r} does not answer "
                f"({exc}); start it or fix the URI; use {ACCEPTED}"
            ) from None
    return store


class WriteLimiter:
    """Per-user rate limit on writes, e.g. "30/second;600/minute" (a mapper clicks fast; a script must not flood).

    Counted in `storage_uri` (see the module docstring). When the shared store fails while running (Redis restarted,
    network cut), writes FAIL OPEN to this process's own in-memory count: the failure is logged, the write is counted
    against the same limit per process, and the shared store is tried again after `retry_s` (one log line each time).
    Why not 503: the limit guards against floods, it is not what keeps labels correct (those are in the label
    store), so a Redis outage should not stop mappers from working; and the per-process fallback still bounds a
    flood (at N times the limit with N processes, the situation before a shared store) instead of lifting it.
    """

    def __init__(self, spec: str, storage_uri: str = "memory://", retry_s: float = 5.0) -> None:
        self.spec = spec
        try:
            self.items = parse_many(spec)
        except ValueError as exc:
            raise RateLimitConfigError(
                f"refusing to start: PEARL_WRITE_RATE_LIMIT={spec!r} is not a rate limit ({exc}); "
                "use e.g. '30/second;600/minute'"
            ) from None
        self.storage_uri = _redacted(storage_uri)
        self.retry_s = retry_s
        self._limiter = strategies.SlidingWindowCounterRateLimiter(open_storage(storage_uri))
        self._shared = not storage_uri.startswith("memory:")
        self._fallback = (
            strategies.SlidingWindowCounterRateLimiter(storage.MemoryStorage()) if self._shared else self._limiter
        )
        self._lock = threading.Lock()
        self._down_until: float | None = None  # monotonic time until which the shared store is not tried

    def hit(self, user_id: int) -> None:
        limiter = self._limiter if self._shared_usable() else self._fallback
        try:
            self._hit(limiter, user_id)
        except StorageError as exc:
            self._store_failed(exc)
            self._hit(self._fallback, user_id)

    def _hit(self, limiter: strategies.RateLimiter, user_id: int) -> None:
        for item in self.items:
            if not limiter.hit(item, "writes", str(user_id)):
                reset = limiter.get_window_stats(item, "writes", str(user_id)).reset_time
                raise TooManyRequests(
                    f"too many writes: at most {item} per user; slow down and retry", reset - time.time()
                )

    def _shared_usable(self) -> bool:
        with self._lock:
            if self._down_until is None:
                return True
            if time.monotonic() < self._down_until:
                return False
            self._down_until = None  # try the shared store again; a failure sets the next pause
            log.info("write rate limit: trying the shared store %s again", self.storage_uri)
            return True

    def _store_failed(self, exc: StorageError) -> None:
        with self._lock:
            self._down_until = time.monotonic() + self.retry_s
        log.warning(
            "write rate limit: the shared store %s failed (%s); counting writes per process until it answers "
            "(next try in %.0f s)",
            self.storage_uri,
            exc.storage_error,
            self.retry_s,
        )
