"""Local services (STAC API, MLflow, Dagster, review app) as child processes with health checks.

Each service runs in its own process group so that stopping it stops its children too
(`dagster dev` spawns four), and starts with SIGINT at its default so Ctrl-C reaches it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import httpx

from pearl_pipelines.http_probe import probe

if TYPE_CHECKING:
    from pearl_pipelines.settings import Settings


def venv_bin(name: str) -> str:
    """A console script of this interpreter's environment (falls back to PATH)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def _reset_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.setpgrp()


def _unwind_on_sigterm() -> None:
    """SIGTERM to a process that started services unwinds it like Ctrl-C, so its `with` blocks and exit stacks
    stop them: each service has its own process group, which the signal would not reach (a killed bench used to
    leave MLflow, Dagster and the STAC API running). A handler the program installed itself is kept."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


class Service:
    """A child process that is ready once `health_url` answers 200."""

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        health_url: str,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.health_url = health_url
        self.cwd = cwd
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def healthy(self) -> bool:
        try:
            return probe(self.health_url, 1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self, timeout: float = 60.0) -> Self:
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        _unwind_on_sigterm()
        self.process = subprocess.Popen(
            self.cmd,
            cwd=self.cwd,
            env={**os.environ, **(self.env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_reset_signals,  # noqa: PLW1509 - own process group, default SIGINT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                where = f"; see {self.log_path}" if self.log_path else ""
                raise RuntimeError(f"{self.name} exited with code {self.process.returncode} while starting{where}")
            if self.healthy():
                return self
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"{self.name} did not answer {self.health_url} within {timeout:.0f} s")

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            self.process = None
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass
        self.process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def mlflow_server(
    home: Path, port: int, host: str = "127.0.0.1", *, storage_url: str | None = None, env: dict[str, str] | None = None
) -> Service:
    """MLflow tracking server: sqlite backend store, artifacts proxied from a local folder, or with `storage_url`
    (PEARL_STORAGE_URL=s3://bucket/prefix) from `s3://bucket/prefix/mlflow` of the object store (the server's boto3
    reaches the endpoint AWS_ENDPOINT_URL with the AWS_* keys; clients only talk to the server)."""
    mlflow_dir = Path(home) / "mlflow"
    mlflow_dir.mkdir(parents=True, exist_ok=True)
    artifacts = str(mlflow_dir / "artifacts")
    server_env = dict(env or {})
    if storage_url:
        from pearl_pipelines.storage import parse_storage_url

        bucket, prefix = parse_storage_url(storage_url)
        artifacts = "/".join(("s3:/", bucket, *([prefix] if prefix else []), "mlflow"))
        endpoint = server_env.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            server_env.setdefault("MLFLOW_S3_ENDPOINT_URL", endpoint)
    cmd = [
        venv_bin("mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{mlflow_dir / 'mlflow.db'}",
        "--artifacts-destination",
        artifacts,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    return Service("MLflow", cmd, f"http://{host}:{port}/health", env=server_env, log_path=mlflow_dir / "server.log")


@contextlib.contextmanager
def ensure_mlflow(settings: Settings) -> Iterator[str]:
    """Yield a tracking URI that answers: the configured one, or a local server started here (stopped after)."""
    from pearl_pipelines.ml.tracking import mlflow_reachable  # imports mlflow: only where MLflow is wanted

    uri = settings.resolved_mlflow_uri
    if mlflow_reachable(uri, timeout=2.0):
        yield uri
        return
    if settings.mlflow_tracking_uri and settings.mlflow_tracking_uri != f"http://127.0.0.1:{settings.mlflow_port}":
        raise ConnectionError(
            f"MLflow tracking server {uri} does not answer; start it or unset PEARL_MLFLOW_TRACKING_URI"
        )
    print(f"starting a local MLflow server on {uri} (store under {settings.home_abs / 'mlflow'})")
    with mlflow_server(settings.home_abs, settings.mlflow_port, storage_url=settings.storage_url).start(timeout=120):
        yield uri


def dagster_home(home: Path) -> Path:
    return Path(home).resolve() / "dagster"


def write_dagster_yaml(home: Path) -> Path:
    """`PEARL_HOME/dagster/dagster.yaml`: SQLite storage and the DefaultRunCoordinator.

    The default queued coordinator adds 1-3 s to every run launch (the daemon polls the queue);
    launching directly matters for the label-to-map latency. Telemetry stays off.
    """
    dagster_dir = dagster_home(home)
    storage = dagster_dir / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    path = dagster_dir / "dagster.yaml"
    path.write_text(
        "# Written by pearl_pipelines.services.write_dagster_yaml; local instance of `make demo`.\n"
        "storage:\n"
        "  sqlite:\n"
        f"    base_dir: {storage}\n"
        "run_coordinator:\n"
        "  module: dagster._core.run_coordinator\n"
        "  class: DefaultRunCoordinator\n"
        "telemetry:\n"
        "  enabled: false\n"
    )
    return path


class DagsterDev(Service):
    """`dagster dev -w workspace.yaml` (webserver + daemon + code server) with DAGSTER_HOME under PEARL_HOME.

    Started like every Service (own process group, default SIGINT), so stopping it also stops the
    children that `dagster dev` spawns. Healthy once the webserver answers `/server_info`.
    """

    def __init__(self, home: Path, port: int, host: str = "127.0.0.1", env: dict[str, str] | None = None) -> None:
        from pearl_pipelines.settings import REPO_ROOT

        self.host, self.port = host, port
        home = Path(home).resolve()
        write_dagster_yaml(home)
        cmd = [venv_bin("dagster"), "dev", "-w", str(REPO_ROOT / "workspace.yaml"), "-h", host, "-p", str(port)]
        super().__init__(
            "Dagster",
            cmd,
            f"{self.url}/server_info",
            cwd=REPO_ROOT,
            env={"DAGSTER_HOME": str(dagster_home(home)), "PEARL_HOME": str(home), **(env or {})},
            log_path=dagster_home(home) / "dagster-dev.log",
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 120.0) -> Self:
        return super().start(timeout)


def dagster_dev(settings: Any, port: int | None = None, host: str = "127.0.0.1") -> DagsterDev:
    """The local Dagster (UI on host:port; sensors and schedules run in its daemon)."""
    port = port or settings.dagster_port
    return DagsterDev(settings.home_abs, port, host)


def review_app(
    settings: Any, port: int | None = None, host: str | None = None, env: dict[str, str] | None = None
) -> Service:
    """The review app (`uvicorn review_app.main:app`: API, tiles, websocket, front-end) on host:port.

    It reads everything else from the environment like any `pearl` command; PEARL_HOME is passed explicitly.
    """
    from pearl_pipelines.settings import REPO_ROOT

    host = host or settings.review_host
    port = port or int(settings.review_port)
    cmd = [sys.executable, "-m", "uvicorn", "review_app.main:app", "--host", host, "--port", str(port)]
    return Service(
        "review app",
        cmd,
        f"http://{host}:{port}/healthz",
        cwd=REPO_ROOT,
        env={"PEARL_HOME": str(settings.home_abs), **(env or {})},
        log_path=settings.home_abs / "review" / "uvicorn.log",
    )
