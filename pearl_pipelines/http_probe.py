"""One HTTP client for liveness probes (MLflow's /health, Dagster's /server_info, local services): a new httpx
client builds an SSL context each time (~5 ms of CPU, even for http:// URLs), and the review app probes MLflow after
every retrain, on the cores that serve the mapper's tiles."""

from __future__ import annotations

import os
import threading

import httpx

_lock = threading.Lock()
_client: httpx.Client | None = None
_pid = 0


def probe(url: str, timeout: float) -> httpx.Response:
    """GET `url` through the process's shared client (httpx.HTTPError when it does not answer)."""
    global _client, _pid
    with _lock:
        if _client is None or _pid != os.getpid():  # a forked child opens its own connections
            _client, _pid = httpx.Client(), os.getpid()
        client = _client
    return client.get(url, timeout=timeout)
