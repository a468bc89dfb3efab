"""The review app as a real server for the tests that need one: `uvicorn review_app.main:app` on loopback,
configured by environment variables only, and a wait until it answers."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from pearl_pipelines.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def log_path(settings: Settings, port: int) -> Path:
    return settings.home_abs / f"uvicorn-{port}.log"


@contextlib.contextmanager
def uvicorn(
    settings: Settings, port: int, *, store_url: str | None = None, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """The app on 127.0.0.1:`port` with `settings`' home and ports (`env`: more settings). `store_url`: the label
    store, for tests that drive load (the write limit is lifted); None: the home's own SQLite store."""
    environment = {
        **os.environ,
        **(env or {}),
        "PEARL_HOME": str(settings.home_abs),
        "PEARL_MLFLOW_PORT": str(settings.mlflow_port),
        "PEARL_DAGSTER_PORT": str(settings.dagster_port),
        "PYTHONPATH": str(REPO),
    }
    if store_url is None:
        environment.pop("PEARL_LABEL_STORE_URL", None)
    else:
        environment.update(PEARL_LABEL_STORE_URL=store_url, PEARL_WRITE_RATE_LIMIT="100000/second")
    with log_path(settings, port).open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "review_app.main:app", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:  # stuck in a request: never leave a server behind
                    process.kill()
                    process.wait(timeout=15)


def ready_project(
    url: str,
    timeout: float = 90.0,
    *,
    ready: bool = True,
    process: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> dict[str, Any]:
    """Project 1 once its imagery and model are ready (`ready=False`: once the app answers at all, even 401).
    With `process`, a server that died fails at once, with its `log`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None:
            assert process.poll() is None, log.read_text() if log else "the review app exited"
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            project = httpx.get(f"{url}/api/projects/1", timeout=2).json()
            if not ready or (project["imagery"]["state"] == "ready" and project["model"]["ready"]):
                return project
        time.sleep(0.2)
    raise TimeoutError(f"the review app at {url} did not become ready")
