"""Durable label storage shared by the review app (writes) and Dagster (sensor cursor, label-set snapshots)."""
