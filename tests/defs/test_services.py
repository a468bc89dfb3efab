"""The local Dagster instance config and the `dagster dev` service definition (started for real in test_e2e.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import httpx
import yaml

from pearl_pipelines.services import dagster_dev, dagster_home, write_dagster_yaml
from pearl_pipelines.settings import REPO_ROOT, Settings


def test_dagster_yaml_uses_sqlite_and_the_default_run_coordinator(tmp_path: Path) -> None:
    path = write_dagster_yaml(tmp_path)
    assert path == tmp_path.resolve() / "dagster" / "dagster.yaml"
    config = yaml.safe_load(path.read_text())
    assert config["run_coordinator"]["class"] == "DefaultRunCoordinator"
    assert Path(config["storage"]["sqlite"]["base_dir"]).is_relative_to(tmp_path.resolve())
    instance = dg.DagsterInstance.from_config(str(dagster_home(tmp_path)))
    try:
        # What `dagster dev` builds from the file (pytest's plugin swaps the live coordinator for a test one).
        assert instance.get_ref().run_coordinator_data.class_name == "DefaultRunCoordinator"
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"
    finally:
        instance.dispose()


def test_dagster_dev_command(tmp_path: Path) -> None:
    service = dagster_dev(Settings(home=tmp_path), port=3999)
    assert service.cmd[1:] == ["dev", "-w", str(REPO_ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", "3999"]
    assert service.env is not None and service.env["DAGSTER_HOME"] == str(tmp_path.resolve() / "dagster")
    assert service.health_url == "http://127.0.0.1:3999/server_info"
    assert service.url == "http://127.0.0.1:3999"


def test_sigterm_to_a_process_that_started_a_service_stops_the_service(tmp_path: Path) -> None:
    """A bench or script killed with SIGTERM stops what it started: the service runs in its own process group,
    so only the parent's unwinding can reach it."""
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            """
            import signal, sys, time
            from pearl_pipelines.services import Service
            # SIGTERM at its default and deliverable, as a shell starts a program: an ignored or blocked signal
            # stays so across fork and exec, and after a few hundred tests pytest's process may have either (the
            # services rightly leave an ignored SIGTERM alone).
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
            port = int(sys.argv[1])
            cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
            with Service("http", cmd, f"http://127.0.0.1:{port}/") as service:
                print(service.process.pid, flush=True)
                time.sleep(120)
            """
        )
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    parent = subprocess.Popen(
        [sys.executable, str(script), str(port)], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
    parent.terminate()
    assert parent.wait(timeout=30) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.1)
    assert not _alive(child), "the service outlived the process that started it"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie has exited; only its parent has not reaped it yet
        return stat.read().split()[2] != "Z"
