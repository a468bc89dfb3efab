"""map patches (issue 24 item 6): hand corrections of the map (fill with a class, or paint in a checkpoint's map)
and their add/remove events for undo.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "map_patches",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("class_index", sa.Integer(), nullable=True),
        sa.Column("source_version", sa.Integer(), nullable=True),
        sa.Column("geometry", sa.JSON(), nullable=False),
        sa.Column("minx", sa.Float(), nullable=False),
        sa.Column("miny", sa.Float(), nullable=False),
        sa.Column("maxx", sa.Float(), nullable=False),
        sa.Column("maxy", sa.Float(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"]),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("map_patches", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_map_patches_project_id"), ["project_id"], unique=False)

    op.create_table(
        "map_patch_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("patch_id", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=8), nullable=False),
        sa.Column("undone", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["patch_id"], ["map_patches.id"]),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("map_patch_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_map_patch_events_project_id"), ["project_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("map_patch_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_map_patch_events_project_id"))
    op.drop_table("map_patch_events")
    with op.batch_alter_table("map_patches", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_map_patches_project_id"))
    op.drop_table("map_patches")
