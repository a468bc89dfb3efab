"""`pearl db upgrade` / `pearl db current` against the URL the settings name, on both backends."""

from __future__ import annotations

import pytest

from pearl_pipelines.cli import main
from pearl_pipelines.labels import migrate
from pearl_pipelines.settings import get_settings


def test_pearl_db_upgrade_and_current(store_url: str, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("PEARL_LABEL_STORE_URL", store_url)
    get_settings.cache_clear()
    try:
        assert main(["db", "current"]) == 0
        assert "revision none, behind" in capsys.readouterr().out
        assert main(["db", "upgrade"]) == 0
        assert f"at revision {migrate.head_revision()}" in capsys.readouterr().out
        assert main(["db", "current"]) == 0
        assert "up to date" in capsys.readouterr().out
    finally:
        get_settings.cache_clear()
