"""Label-store schema migrations: Alembic, configured in code, run by every `LabelStore` on start.

Several processes (review app, Dagster daemon, workers) may open the store at once, so the upgrade runs in one
transaction under a lock: a PostgreSQL advisory lock, or a file lock next to a SQLite database. A database made
by the old `create_all` (tables, no alembic_version) is stamped at the first revision, keeping its rows.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import tempfile
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, inspect, text
from sqlalchemy.engine import Engine

SCRIPT_LOCATION = "pearl_pipelines.labels:migrations"
FIRST_REVISION = "0001"  # the schema `Base.metadata.create_all` made before Alembic
LEGACY_TABLES = ("projects", "aois", "labels", "label_events")
ADVISORY_LOCK_KEY = int.from_bytes(b"pearl-lb", "big")  # any constant bigint shared by all processes


class MigrationError(RuntimeError):
    """The database cannot be brought to the schema this code expects; the message says why."""


def alembic_config(url: str | None = None) -> Config:
    """Alembic's config without an alembic.ini: the scripts ship inside the package."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


@functools.cache
def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


@contextlib.contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    """Serialise SQLite upgrades across processes without relying on SQLite's busy timeout (5 s)."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        yield
        return
    lock_path = Path(database).with_name(Path(database).name + ".migrate.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _adopt_legacy(connection: Connection, config: Config) -> None:
    """Stamp a `create_all` database (no alembic_version) at the first revision; an empty one is left to upgrade."""
    if current_revision(connection) is not None:
        return
    present = [t for t in LEGACY_TABLES if inspect(connection).has_table(t)]
    if not present:
        return
    if len(present) != len(LEGACY_TABLES):
        missing = sorted(set(LEGACY_TABLES) - set(present))
        raise MigrationError(f"label store has tables {present} but not {missing} and no alembic_version; repair it")
    command.stamp(config, FIRST_REVISION)


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Migrate the database to `revision` (default the newest); returns the revision it is at afterwards."""
    if revision == "head":
        with engine.connect() as probe:
            if current_revision(probe) == head_revision():
                return head_revision()  # the common case: nothing to do, no lock taken
    with _sqlite_file_lock(engine), engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
        elif connection.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN IMMEDIATE")  # pysqlite would autocommit each DDL statement
        config = alembic_config()
        config.attributes["connection"] = connection
        _adopt_legacy(connection, config)
        command.upgrade(config, revision)
        return current_revision(connection) or ""


def new_revision(message: str) -> Path:
    """Autogenerate the next revision from the models (run in a source checkout after changing them): the
    models are compared with a scratch SQLite database at head; review the file, it runs on PostgreSQL too."""
    config = alembic_config()
    config.set_main_option("file_template", "r%%(rev)s_%%(slug)s")
    script = ScriptDirectory.from_config(config)
    rev_id = f"{int(head_revision()) + 1:04d}"
    with tempfile.TemporaryDirectory() as scratch:
        engine = create_engine(f"sqlite:///{scratch}/scratch.db")
        upgrade(engine)
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            result = command.revision(config, message=message, autogenerate=True, rev_id=rev_id)
        engine.dispose()
    assert result is not None and not isinstance(result, list)
    head_revision.cache_clear()
    return Path(result.path) if result.path else Path(script.versions)
