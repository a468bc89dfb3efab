"""model versions in rows of their own (issue 23): the session document most requests read no longer grows with
every retrain. Each document's "models" move into `model_versions`; downgrade moves them back.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 18:00:00
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# The two tables as this revision knows them (later model changes must not leak into the data move).
_sessions = sa.table(
    "project_sessions",
    sa.column("project_id", sa.Integer()),
    sa.column("document", sa.JSON()),
    sa.column("revision", sa.Integer()),
)
_versions = sa.table(
    "model_versions",
    sa.column("project_id", sa.Integer()),
    sa.column("number", sa.Integer()),
    sa.column("document", sa.JSON()),
    sa.column("name", sa.Text()),
    sa.column("mlflow_version", sa.String(32)),
    sa.column("final", sa.Boolean()),
)


def _row(project_id: int, number: int, info: dict[str, Any]) -> dict[str, Any]:
    return {
        "project_id": project_id,
        "number": number,
        "document": info,
        "name": info.get("name"),
        "mlflow_version": info.get("mlflow_version"),
        # ModelVersionInfo.final: a retrain whose metrics are in.
        "final": info.get("kind") == "retrain" and info.get("metrics") is not None,
    }


def upgrade() -> None:
    op.create_table(
        "model_versions",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("mlflow_version", sa.String(length=32), nullable=True),
        sa.Column("final", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"]),
        sa.PrimaryKeyConstraint("project_id", "number"),
    )
    conn = op.get_bind()
    for project_id, document, revision in conn.execute(sa.select(_sessions)).all():
        models = dict(document).pop("models", None)
        if models is None:
            continue
        rows = [_row(project_id, int(number), info) for number, info in models.items()]
        if rows:
            conn.execute(_versions.insert(), rows)
        rest = {k: v for k, v in document.items() if k != "models"}
        conn.execute(
            _sessions.update().where(_sessions.c.project_id == project_id).values(document=rest, revision=revision + 1)
        )


def downgrade() -> None:
    conn = op.get_bind()
    models: dict[int, dict[str, Any]] = {}
    for project_id, number, document in conn.execute(
        sa.select(_versions.c.project_id, _versions.c.number, _versions.c.document)
    ):
        models.setdefault(project_id, {})[str(number)] = document
    for project_id, document, revision in conn.execute(sa.select(_sessions)).all():
        conn.execute(
            _sessions.update()
            .where(_sessions.c.project_id == project_id)
            .values(document={**document, "models": models.get(project_id, {})}, revision=revision + 1)
        )
    op.drop_table("model_versions")
