"""Label-store fixtures: every test runs on SQLite and on a real PostgreSQL server started for the session.

Without PostgreSQL binaries the postgresql cases skip, unless PEARL_REQUIRE_POSTGRES=1 (CI), where they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from shapely.geometry import box

from pearl_pipelines.classes import load_schema
from pearl_pipelines.labels.store import LabelStore, ProjectRow
from tests.pg_server import PostgresServer, find_bin_dir

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        message = (
            "PostgreSQL binaries not found (initdb in PATH or /usr/lib/postgresql/*/bin); apt-get install postgresql"
        )
        if os.environ.get("PEARL_REQUIRE_POSTGRES") == "1":
            pytest.fail(message + " (PEARL_REQUIRE_POSTGRES=1)", pytrace=False)
        pytest.skip(message)
    server = PostgresServer(bin_dir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of an empty database: a fresh SQLite file, or a fresh database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'labels.db'}"
    return request.getfixturevalue("postgres_server").new_database()


@pytest.fixture
def store(store_url: str) -> Iterator[LabelStore]:
    label_store = LabelStore(store_url)
    yield label_store
    label_store.engine.dispose()


@pytest.fixture
def project(store: LabelStore) -> ProjectRow:
    return store.create_project(
        "rotterdam", {"stac_url": "http://127.0.0.1:1", "collections": ["demo"]}, load_schema("chesapeake9"), "m:/x"
    )


def square(x: float, y: float, size: float = 0.001):
    """A small lon/lat square polygon with its lower-left corner at (x, y)."""
    return box(x, y, x + size, y + size)
