"""Alembic migrations on both backends: a fresh upgrade equals the models, a `create_all` database is adopted."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from shapely.geometry import Point, box
from sqlalchemy import MetaData, create_engine, inspect, text

from pearl_pipelines.classes import load_schema
from pearl_pipelines.labels import (
    app_state,  # (session documents, model versions, jobs: compare_metadata sees them; the last test reads it)
    migrate,
    patches,  # noqa: F401  (its tables: compare_metadata sees them)
    project_admin,  # noqa: F401  (project deletions: compare_metadata sees them)
    shares,  # noqa: F401  (share links: compare_metadata sees them)
)
from pearl_pipelines.labels.store import Base, LabelStore, ProjectRow


def _diff(url: str) -> list:
    engine = create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    return diff


def test_fresh_upgrade_matches_the_models(store_url: str) -> None:
    store = LabelStore(store_url)
    with store.engine.connect() as conn:
        assert migrate.current_revision(conn) == migrate.head_revision()
        assert conn.scalar(text("SELECT count(*) FROM alembic_version")) == 1
        indexes = {i["name"] for t in ("aois", "labels", "label_events") for i in inspect(conn).get_indexes(t)}
    assert indexes == {"ix_aois_project_id", "ix_labels_project_id", "ix_label_events_project_id"}
    store.engine.dispose()
    assert _diff(store_url) == []


def test_upgrade_is_idempotent_and_downgrade_empties(store_url: str) -> None:
    engine = create_engine(store_url)
    assert migrate.upgrade(engine) == migrate.head_revision()
    assert migrate.upgrade(engine) == migrate.head_revision()
    with engine.begin() as conn:
        config = migrate.alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    assert migrate.upgrade(engine) == migrate.head_revision()
    engine.dispose()
    assert _diff(store_url) == []


def _legacy_database(url: str) -> None:
    """What the pre-Alembic store left: the first revision's tables (== its `create_all`), no alembic_version, rows
    written through reflected tables so later model changes do not leak in."""
    engine = create_engine(url)
    migrate.upgrade(engine, migrate.FIRST_REVISION)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
        tables = MetaData()
        tables.reflect(conn)
        now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
        schema = load_schema("chesapeake9").model_dump(by_alias=True)
        conn.execute(tables.tables["projects"].insert().values(
            id=1, name="legacy", imagery={"collections": ["demo"]}, class_schema=schema, base_model="m:/x",
            created_at=now,
        ))  # fmt: skip
        conn.execute(tables.tables["aois"].insert().values(
            id=1, project_id=1, name="a", geometry={"type": "Point", "coordinates": [0, 0]}, tile_keys=[],
            created_at=now,
        ))  # fmt: skip
        conn.execute(tables.tables["labels"].insert().values(
            id=1, project_id=1, aoi_id=1, class_name="water", geometry={"type": "Point", "coordinates": [1, 2]},
            geom_type="Point", minx=1, miny=2, maxx=1, maxy=2, created_at=now,
        ))  # fmt: skip
        conn.execute(
            tables.tables["label_events"].insert().values(id=1, project_id=1, label_id=1, action="add", undone=False)
        )
        if conn.dialect.name == "postgresql":  # explicit ids do not advance the id sequences
            for table in ("projects", "aois", "labels", "label_events"):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), 1)"))
    assert "alembic_version" not in inspect(engine).get_table_names()
    engine.dispose()


def test_create_all_database_is_adopted_with_its_rows(store_url: str) -> None:
    """A database made by the pre-Alembic store (create_all, no alembic_version) is stamped, not recreated."""
    _legacy_database(store_url)
    store = LabelStore(store_url)
    with store.engine.connect() as conn:
        assert migrate.current_revision(conn) == migrate.head_revision()
    (legacy,) = store.list_projects()
    assert legacy.name == "legacy"
    (old,) = store.list_labels(legacy.id)
    assert (old.class_name, old.geometry, old.aoi_id) == ("water", {"type": "Point", "coordinates": [1, 2]}, 1)
    assert old.created_at == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert store.max_event_id() == 1
    (new,) = store.add_labels(legacy.id, [("barren", Point(3, 4))])
    assert new.id > old.id
    assert store.undo(legacy.id).id == new.id  # type: ignore[union-attr]
    assert store.add_aoi(legacy.id, "b", box(0, 0, 1, 1), []).id == 2
    store.engine.dispose()
    assert _diff(store_url) == []


def test_half_made_database_is_refused(store_url: str) -> None:
    engine = create_engine(store_url)
    Base.metadata.create_all(engine, tables=[ProjectRow.__table__])  # type: ignore[list-item]
    with pytest.raises(migrate.MigrationError, match="repair"):
        migrate.upgrade(engine)
    engine.dispose()


def test_model_versions_leave_the_session_documents_and_come_back(store_url: str, tmp_path: Path) -> None:
    """Revision 0008 moves each session document's "models" into model_versions rows (their columns from the
    documents) and leaves the rest of the document; downgrading puts them back."""
    engine = create_engine(store_url)
    migrate.upgrade(engine, "0007")
    from review_app.schemas import MetricsOut
    from review_app.workspace import StateStore

    metrics = MetricsOut.empty(2, n_labels=9, message="too few").model_dump(mode="json")
    models = {
        "0": {"id": 0, "engine_id": "root", "kind": "base", "name": "starter (base model)"},
        "2": {"id": 2, "engine_id": "e2", "kind": "retrain", "parent": 0, "metrics": metrics, "mlflow_version": "5"},
        "3": {"id": 3, "engine_id": "e3", "kind": "retrain", "parent": 2},
    }
    with engine.begin() as conn:
        tables = MetaData()
        tables.reflect(conn)
        now = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)
        schema = load_schema("chesapeake9").model_dump(by_alias=True)
        conn.execute(tables.tables["projects"].insert().values(
            id=1, name="p", imagery={}, class_schema=schema, base_model="m:/x", created_at=now,
        ))  # fmt: skip
        document = {"current_model": 3, "next_model_id": 4, "strategy": "s", "models": models}
        conn.execute(tables.tables["project_sessions"].insert().values(
            project_id=1, document=document, revision=7, updated_at=now,
        ))  # fmt: skip
    assert migrate.upgrade(engine) == migrate.head_revision()
    with engine.connect() as conn:
        moved = conn.execute(text("SELECT number, name, mlflow_version, final FROM model_versions ORDER BY number"))
        assert [tuple(row) for row in moved] == [(0, "starter (base model)", None, False), (2, None, "5", True),
                                                 (3, None, None, False)]  # fmt: skip
    store = LabelStore(store_url)
    states = StateStore(tmp_path, store)
    assert states.get(1).current_model == 3 and states.get(1).strategy == "s"
    assert app_state.AppState(store).document(1) == {"current_model": 3, "next_model_id": 4, "strategy": "s"}
    assert states.version(1, 2).metrics.n_labels == 9  # type: ignore[union-attr]
    assert [e.number for e in states.version_entries(1)] == [0, 2, 3]
    store.engine.dispose()
    with engine.begin() as conn:
        config = migrate.alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, "0007")
    with engine.connect() as conn:
        (back,) = conn.execute(text("SELECT document FROM project_sessions")).scalars()
        back = json.loads(back) if isinstance(back, str) else back
        assert back == {**document, "models": models}
        assert "model_versions" not in inspect(conn).get_table_names()
    engine.dispose()
