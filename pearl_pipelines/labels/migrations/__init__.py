"""Alembic migrations of the label store; `pearl_pipelines.labels.migrate` runs them (no alembic.ini needed)."""
