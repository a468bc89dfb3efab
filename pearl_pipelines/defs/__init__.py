"""Dagster objects, one domain per module; `pearl_pipelines.definitions` assembles them."""
