"""Abuse limits that answer 429: writes per user (the `limits` library's sliding window), and jobs per project
(at most one running and one waiting of each kind: the job runner coalesces or refuses the rest)."""

from __future__ import annotations

import math
import time

from limits import parse_many, storage, strategies


class TooManyRequests(Exception):
    """Refused for now (429); `retry_after` says when trying again makes sense."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))


class WriteLimiter:
    """Per-user rate limit on writes, e.g. "30/second;600/minute" (a mapper clicks fast; a script must not flood)."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.items = parse_many(spec)
        self._limiter = strategies.SlidingWindowCounterRateLimiter(storage.MemoryStorage())

    def hit(self, user_id: int) -> None:
        for item in self.items:
            if not self._limiter.hit(item, "writes", str(user_id)):
                reset = self._limiter.get_window_stats(item, "writes", str(user_id)).reset_time
                raise TooManyRequests(
                    f"too many writes: at most {item} per user; slow down and retry", reset - time.time()
                )
