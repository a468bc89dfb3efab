"""The local Dagster instance config and the `dagster dev` service definition (started for real in test_e2e.py)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
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
