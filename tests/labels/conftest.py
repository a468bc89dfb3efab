"""Label-store fixtures on `store_url` (tests/conftest.py): every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from shapely.geometry import box

from pearl_pipelines.classes import load_schema
from pearl_pipelines.labels.store import LabelStore, ProjectRow


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
