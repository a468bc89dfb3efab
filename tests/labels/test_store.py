"""LabelStore's public methods, each case on SQLite and on PostgreSQL (see conftest.store_url)."""

from __future__ import annotations

import datetime as dt

import pytest
from shapely.geometry import LineString, Point, Polygon, box

from pearl_pipelines.classes import load_schema
from pearl_pipelines.labels.store import LabelStore, LabelStoreError, ProjectRow
from tests.labels.conftest import square

# label_set_digest of the three labels in test_digest_names_the_live_label_set: equal on both backends.
THREE_LABELS_DIGEST = "d43f186dfa447c20"


def test_projects_round_trip(store: LabelStore, project: ProjectRow) -> None:
    other = store.create_project("delft", {"collections": []}, load_schema("chesapeake4"), "models:/s@starter")
    assert other.id > project.id
    assert [p.name for p in store.list_projects()] == ["rotterdam", "delft"]
    got = store.get_project(project.id)
    assert got.imagery == {"stac_url": "http://127.0.0.1:1", "collections": ["demo"]}
    assert got.base_model == "m:/x"
    assert got.created_at is not None
    assert store.schema(other.id) == load_schema("chesapeake4")


def test_duplicate_project_name_and_unknown_id_are_refused(store: LabelStore, project: ProjectRow) -> None:
    with pytest.raises(LabelStoreError, match="already exists"):
        store.create_project("rotterdam", {}, load_schema("chesapeake9"), "m:/y")
    with pytest.raises(KeyError, match="no project"):
        store.get_project(project.id + 100)
    assert len(store.list_projects()) == 1


def test_add_and_update_class(store: LabelStore, project: ProjectRow) -> None:
    schema = store.add_class(project.id, "solar", "Solar panels", "#FFAA00")
    assert schema.names[-1] == "solar"
    assert store.schema(project.id).classes[-1].color == "#ffaa00"
    with pytest.raises(LabelStoreError, match="already exists"):
        store.add_class(project.id, "water", "Water", "#0000ff")

    store.add_labels(project.id, [("solar", Point(4.5, 51.9)), ("water", Point(4.6, 51.9))])
    renamed = store.update_class(project.id, "solar", new_name="pv", color="#123456")
    assert renamed.names.index("pv") == schema.names.index("solar")  # the index stays
    assert renamed.classes[-1].title == "Solar panels"
    assert sorted(r.class_name for r in store.list_labels(project.id)) == ["pv", "water"]
    with pytest.raises(LabelStoreError, match="cannot rename"):
        store.update_class(project.id, "pv", new_name="water")
    with pytest.raises(KeyError):
        store.update_class(project.id, "nope", title="x")
    assert store.schema(project.id).description == load_schema("chesapeake9").description  # kept by edits


def test_aois(store: LabelStore, project: ProjectRow) -> None:
    aoi = store.add_aoi(project.id, "harbour", box(4.4, 51.9, 4.5, 52.0), ["t1", "t2"])
    second = store.add_aoi(project.id, "centre", box(4.45, 51.9, 4.5, 51.95), [])
    assert [a.id for a in store.list_aois(project.id)] == [aoi.id, second.id]
    got = store.get_aoi(aoi.id)
    assert got.name == "harbour"
    assert got.tile_keys == ["t1", "t2"]
    assert got.geometry["type"] == "Polygon"
    assert got.geometry["coordinates"][0][0] == [4.5, 51.9]
    with pytest.raises(KeyError):
        store.get_aoi(second.id + 1)
    with pytest.raises(KeyError):
        store.add_aoi(project.id + 1, "x", box(0, 0, 1, 1), [])


def test_add_labels_stores_geometry_bbox_and_events(store: LabelStore, project: ProjectRow) -> None:
    aoi = store.add_aoi(project.id, "a", box(4.4, 51.9, 4.5, 52.0), [])
    rows = store.add_labels(project.id, [("water", square(4.41, 51.91)), ("barren", Point(4.42, 51.92))], aoi.id)
    assert [r.id for r in rows] == sorted(r.id for r in rows)
    stored = store.list_labels(project.id)
    assert [(r.id, r.class_name, r.geom_type, r.aoi_id) for r in stored] == [
        (rows[0].id, "water", "Polygon", aoi.id),
        (rows[1].id, "barren", "Point", aoi.id),
    ]
    assert (stored[0].minx, stored[0].miny, stored[0].maxx, stored[0].maxy) == pytest.approx(
        (4.41, 51.91, 4.411, 51.911)
    )
    assert stored[1].geometry == {"type": "Point", "coordinates": [4.42, 51.92]}
    assert store.max_label_id(project.id) == rows[1].id
    assert store.max_event_id(project.id) == store.max_event_id() > 0


@pytest.mark.parametrize(
    ("label", "message"),
    [
        (("lava", Point(0, 0)), "unknown class"),
        (("water", LineString([(0, 0), (1, 1)])), "Points or Polygons"),
        (("water", Polygon([(0, 0), (1, 1), (1, 0), (0, 1)])), "empty or invalid"),
    ],
)
def test_bad_label_stores_nothing(store: LabelStore, project: ProjectRow, label, message: str) -> None:
    with pytest.raises(LabelStoreError, match=message):
        store.add_labels(project.id, [("water", Point(1, 1)), label])
    assert store.list_labels(project.id, include_deleted=True) == []
    assert store.max_event_id() == 0


def test_delete_and_undo_in_reverse_order(store: LabelStore, project: ProjectRow) -> None:
    a, b = store.add_labels(project.id, [("water", Point(0, 0)), ("barren", Point(1, 1))])
    deleted = store.delete_label(project.id, a.id)
    assert deleted.deleted_at is not None
    assert [r.id for r in store.list_labels(project.id)] == [b.id]
    assert [r.id for r in store.list_labels(project.id, include_deleted=True)] == [a.id, b.id]
    with pytest.raises(KeyError):
        store.delete_label(project.id, a.id)  # already deleted
    with pytest.raises(KeyError):
        store.delete_label(project.id + 1, b.id)  # other project

    before = store.max_event_id()
    restored = store.undo(project.id)  # reverts the delete
    assert restored is not None and restored.id == a.id and restored.deleted_at is None
    assert store.max_event_id() == before + 1  # the undo is an event
    assert store.undo(project.id).id == b.id  # then the adds, newest first  # type: ignore[union-attr]
    assert store.undo(project.id).id == a.id  # type: ignore[union-attr]
    assert store.list_labels(project.id) == []
    assert store.undo(project.id) is None
    assert store.max_label_id(project.id) == b.id  # ids never shrink


def test_list_labels_filters_by_aoi(store: LabelStore, project: ProjectRow) -> None:
    one = store.add_aoi(project.id, "one", box(0, 0, 1, 1), [])
    two = store.add_aoi(project.id, "two", box(1, 1, 2, 2), [])
    store.add_labels(project.id, [("water", Point(0.5, 0.5))], one.id)
    (in_two,) = store.add_labels(project.id, [("water", Point(1.5, 1.5))], two.id)
    store.add_labels(project.id, [("water", Point(3, 3))])
    assert [r.id for r in store.list_labels(project.id, aoi_id=two.id)] == [in_two.id]
    assert len(store.list_labels(project.id)) == 3
    frame = store.labels_frame(project.id, aoi_id=two.id)
    assert list(frame.columns) == ["label_id", "class_name", "geometry"]
    assert frame.crs == "EPSG:4326"
    assert frame.geometry.iloc[0].equals(Point(1.5, 1.5))


def test_projects_changed_since(store: LabelStore, project: ProjectRow) -> None:
    other = store.create_project("other", {}, load_schema("chesapeake9"), "m:/x")
    assert store.projects_changed_since(0) == []
    store.add_labels(other.id, [("water", Point(0, 0))])
    cursor = store.max_event_id()
    store.add_labels(project.id, [("water", Point(0, 0))])
    assert store.projects_changed_since(0) == sorted([project.id, other.id])
    assert store.projects_changed_since(cursor) == [project.id]
    store.undo(other.id)
    assert store.projects_changed_since(cursor) == sorted([project.id, other.id])
    assert store.max_label_id() == 2
    assert store.max_label_id(other.id) == 1


def test_digest_names_the_live_label_set(store: LabelStore, project: ProjectRow) -> None:
    empty = store.label_set_digest(project.id)
    rows = store.add_labels(
        project.id, [("water", square(4.41, 51.91)), ("barren", Point(4.42, 51.92)), ("water", Point(4.0, 52.0))]
    )
    digest = store.label_set_digest(project.id)
    assert digest == THREE_LABELS_DIGEST  # same ids, classes, geometries: same digest on every backend
    assert digest != empty
    store.delete_label(project.id, rows[0].id)
    assert store.label_set_digest(project.id) != digest
    store.undo(project.id)
    assert store.label_set_digest(project.id) == digest


def test_reopening_the_store_keeps_everything(store_url: str) -> None:
    first = LabelStore(store_url)
    project = first.create_project("p", {}, load_schema("chesapeake9"), "m:/x")
    first.add_labels(project.id, [("water", Point(0, 0))])
    digest = first.label_set_digest(project.id)
    first.engine.dispose()
    again = LabelStore(store_url)
    assert again.label_set_digest(project.id) == digest
    assert [p.name for p in again.list_projects()] == ["p"]
    again.engine.dispose()


def test_timestamps_are_aware_utc_on_every_backend(store: LabelStore, project: ProjectRow) -> None:
    """SQLite returned naive datetimes and PostgreSQL its session zone: the API printed them differently."""
    (label,) = store.add_labels(project.id, [("water", Point(0, 0))])
    store.delete_label(project.id, label.id)
    (stored,) = store.list_labels(project.id, include_deleted=True)
    for value in (store.get_project(project.id).created_at, stored.created_at, stored.deleted_at):
        assert value is not None
        assert value.utcoffset() == dt.timedelta(0)
        assert value.isoformat().endswith("+00:00")
    assert stored.created_at <= stored.deleted_at <= dt.datetime.now(dt.UTC)  # type: ignore[operator]


def test_over_long_names_are_refused_on_every_backend(store: LabelStore, project: ProjectRow) -> None:
    """PostgreSQL raised a DataError (HTTP 500) where SQLite silently stored the string."""
    with pytest.raises(LabelStoreError, match="at most 120"):
        store.create_project("x" * 121, {}, load_schema("chesapeake9"), "m:/x")
    with pytest.raises(LabelStoreError, match="at most 300"):
        store.create_project("y", {}, load_schema("chesapeake9"), "m" * 301)
    with pytest.raises(LabelStoreError, match="at most 120"):
        store.add_aoi(project.id, "a" * 121, box(0, 0, 1, 1), [])
    assert [p.name for p in store.list_projects()] == ["rotterdam"]
    store.create_project("x" * 120, {}, load_schema("chesapeake9"), "m:/x")  # the limit itself is fine
