"""Alembic environment: migrates the connection `pearl_pipelines.labels.migrate` hands over, or the config's URL.

Batch mode renders ALTERs as table copies on SQLite, so later revisions work on both backends.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from pearl_pipelines.labels import (
    accounts,  # noqa: F401  (its tables are on the same metadata)
    app_state,  # noqa: F401  (session documents and jobs: same metadata)
    patches,  # noqa: F401  (map patches: same metadata)
    project_admin,  # noqa: F401  (project deletions: same metadata)
    shares,  # noqa: F401  (share links: same metadata)
)
from pearl_pipelines.labels.store import Base

config = context.config


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (conn := config.attributes.get("connection")) is not None:
    _run(conn)
else:
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()
