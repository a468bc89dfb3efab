"""A warm worker for local mode: torch, scikit-learn, MLflow and the engine imported once, one fork per task.

Importing the worker's libraries costs 2-5 s on two cores, more than a retrain itself. When this server
runs (`make demo` and the benches start it), `python -m pearl_pipelines.worker <task>` - the command Dagster
Pipes launches - hands its task to the server instead of importing everything again: the server forks,
the fork takes over the launcher's stdin/stdout/stderr (passed over a Unix socket), environment (with
the Pipes bootstrap variables) and working directory, runs the task, and the launcher exits with the
task's exit code. If the launcher dies (a run is terminated), the fork is killed.

Without a server (Kubernetes pods, tests, a plain `dagster dev`) the launcher runs the task itself:
the same command, the same Pipes protocol, only slower to start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import signal
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Self

from pearl_pipelines.services import Service
from pearl_pipelines.worker.run import run_task

PRELOAD = (
    "torch",
    "sklearn.linear_model",
    "geopandas",
    "rasterio",
    "mlflow",
    "pearl_pipelines.ml.inference",
    "pearl_pipelines.ml.retrain",
    "pearl_pipelines.ml.tracking",
    "pearl_pipelines.ml.registry",
    "pearl_pipelines.ml.metrics",
    "pearl_pipelines.ml.loop",
    "pearl_pipelines.worker.tasks",
)
FORKED_ENV = "PEARL_WORKER_FORKED"  # set in a forked task, so a task can tell (the probe reports it)
MAX_MESSAGE = 1 << 22


def socket_path(home: str | Path | None = None) -> Path:
    """The server's socket for a PEARL_HOME (under the temp dir: Unix socket paths must stay short)."""
    home = Path(home or os.environ.get("PEARL_HOME", ".pearl")).expanduser().resolve()
    digest = hashlib.sha256(str(home).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"pearl-worker-{digest}.sock"


# -- launcher side ---------------------------------------------------------------------------------------
def delegate(task: str, timeout: float = 1.0) -> int | None:
    """Run `task` in the warm server if one answers; its exit code, or None when there is no server."""
    path = socket_path()
    if not path.exists():
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(timeout)
        conn.connect(str(path))
        conn.settimeout(None)
        request = {"task": task, "env": dict(os.environ), "cwd": os.getcwd()}
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        socket.send_fds(conn, [json.dumps(request).encode()], [0, 1, 2])
    except OSError:
        conn.close()
        return None  # stale socket or server gone: run the task here
    with conn:
        reply = b""
        while chunk := conn.recv(64):
            reply += chunk
    try:
        return int(json.loads(reply)["exit_code"])
    except (ValueError, KeyError):
        print("pearl worker server closed the connection without an exit code", file=sys.stderr)
        return 1


# -- server side -----------------------------------------------------------------------------------------
def _serve_one(conn: socket.socket) -> None:
    """In a fork of the server: become the launcher's process, run the task in a grandchild, report its code."""
    message, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, 3)
    if not message or len(fds) != 3:  # a health probe, or a launcher that gave up
        for fd in fds:
            os.close(fd)
        return
    request = json.loads(message)
    pid = os.fork()
    if pid == 0:  # the task: the launcher's stdio, environment and working directory
        conn.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.environ.clear()
        os.environ.update({**request["env"], FORKED_ENV: "1"})
        os.chdir(request["cwd"])
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        from pearl_pipelines.settings import get_settings

        get_settings.cache_clear()  # settings come from the launcher's environment
        code = 1
        try:
            code = run_task(request["task"])  # what the launcher would have run itself
        except BaseException:  # a failed task is reported (Pipes), printed, and becomes the exit code
            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(code)
    for fd in fds:
        os.close(fd)
    # Wait for the task; if the launcher goes away (run terminated), stop the task.
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"exit_code": code if code >= 0 else 128 - code}).encode())
            return
        readable, _, _ = select.select([conn], [], [], 0.1)
        if readable and not conn.recv(1):
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
            return


def serve(home: str | Path | None = None) -> None:
    """Preload the worker's libraries, then fork per connection until SIGTERM."""
    import importlib

    started = time.perf_counter()
    for module in PRELOAD:
        importlib.import_module(module)
    path = socket_path(home)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(16)
    signal.signal(signal.SIGCHLD, lambda *_: _reap())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(
        f"pearl worker server: {len(PRELOAD)} modules preloaded in {time.perf_counter() - started:.1f} s; "
        f"listening on {path}",
        flush=True,
    )
    try:
        while True:
            try:
                conn, _ = server.accept()
            except InterruptedError:
                continue
            if os.fork() == 0:
                server.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                try:
                    _serve_one(conn)
                finally:
                    os._exit(0)
            conn.close()
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


class WorkerServer(Service):
    """The warm worker as a local service (own process group, stopped with SIGTERM)."""

    def __init__(self, home: Path, log_path: Path | None = None) -> None:
        self.home = Path(home).resolve()
        self.path = socket_path(self.home)
        super().__init__(
            "worker server",
            [sys.executable, "-m", "pearl_pipelines.worker.forkserver"],
            health_url="",  # healthy() below checks the socket instead
            env={"PEARL_HOME": str(self.home)},
            log_path=log_path or self.home / "logs" / "worker-server.log",
        )
        assert self.log_path is not None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)

    def healthy(self) -> bool:
        if not self.path.exists():
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.path))
            except OSError:
                return False
        return True

    def start(self, timeout: float = 120.0) -> Self:
        return super().start(timeout)


def main(argv: Any = None) -> int:
    serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
