"""Initial label-store schema: exactly the tables `Base.metadata.create_all` made before Alembic.

Revision ID: 0001
Revises:
Create Date: 2026-12-04

Databases created by `create_all` have no alembic_version table; `migrate.upgrade` stamps them at this revision.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("imagery", sa.JSON(), nullable=False),
        sa.Column("class_schema", sa.JSON(), nullable=False),
        sa.Column("base_model", sa.String(length=300), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "aois",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("geometry", sa.JSON(), nullable=False),
        sa.Column("tile_keys", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_aois_project_id"), "aois", ["project_id"], unique=False)
    op.create_table(
        "labels",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("aoi_id", sa.Integer(), nullable=True),
        sa.Column("class_name", sa.String(length=48), nullable=False),
        sa.Column("geometry", sa.JSON(), nullable=False),
        sa.Column("geom_type", sa.String(length=16), nullable=False),
        sa.Column("minx", sa.Float(), nullable=False),
        sa.Column("miny", sa.Float(), nullable=False),
        sa.Column("maxx", sa.Float(), nullable=False),
        sa.Column("maxy", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["aoi_id"], ["aois.id"]),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_labels_project_id"), "labels", ["project_id"], unique=False)
    op.create_table(
        "label_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("label_id", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=8), nullable=False),
        sa.Column("undone", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["label_id"], ["labels.id"]),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_label_events_project_id"), "label_events", ["project_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_label_events_project_id"), table_name="label_events")
    op.drop_table("label_events")
    op.drop_index(op.f("ix_labels_project_id"), table_name="labels")
    op.drop_table("labels")
    op.drop_index(op.f("ix_aois_project_id"), table_name="aois")
    op.drop_table("aois")
    op.drop_table("projects")
