"""label_submission_sensor and aoi_registration_sensor, evaluated with build_sensor_context on a real label store:
SQLite and PostgreSQL (the sensors' cursors are label-event ids, so both backends must hand out the same ones)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import dagster as dg
import pytest
from shapely.geometry import Point, box
from sqlalchemy import text

from pearl_pipelines.defs import sensors
from pearl_pipelines.defs.jobs import LABEL_EVENT_TAG, PROJECT_TAG, label_run_tags
from pearl_pipelines.defs.partitions import TILE_KEYS
from pearl_pipelines.defs.resources import LabelStoreResource
from pearl_pipelines.defs.sensors import aoi_registration_sensor, label_submission_sensor
from pearl_pipelines.labels.store import LabelStore
from pearl_pipelines.settings import get_settings
from tests.defs.conftest import DEMO_AOI, Project, add_project

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


@pytest.fixture
def label_store(store_url: str) -> Iterator[LabelStore]:
    """Overrides tests/defs/conftest.py's SQLite-only store: every sensor test runs on both backends."""
    store = LabelStore(store_url)
    yield store
    store.engine.dispose()


@pytest.fixture(autouse=True)
def no_quiet_period(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Submit at once (the quiet period has its own test)."""
    monkeypatch.setenv("PEARL_LABEL_QUIET_S", "0")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def events(cursor: str) -> int:
    return int(json.loads(cursor)["events"])


def seen(cursor: str) -> int:
    return int(json.loads(cursor)["seen"])


def evaluate(sensor, instance: dg.DagsterInstance, store, cursor: str | None = None):
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"label_store": LabelStoreResource(url=store.url)}
    )
    return sensor(context), context


def test_no_label_events_skips(label_store, instance) -> None:
    result, _ = evaluate(label_submission_sensor, instance, label_store)
    assert isinstance(result, dg.SkipReason)


def test_one_run_request_per_changed_project_and_cursor_moves(label_store, instance) -> None:
    first = add_project(label_store, "first")
    second = add_project(label_store, "second", aoi=box(-76.4260, 38.9760, -76.4210, 38.9800))
    result, _ = evaluate(label_submission_sensor, instance, label_store)

    assert isinstance(result, dg.SensorResult)
    assert seen(result.cursor) == label_store.max_event_id()
    requests = {int(r.tags[PROJECT_TAG]): r for r in result.run_requests}
    assert set(requests) == {first.project_id, second.project_id}
    # New tile keys are registered as partitions in the same tick, in one request.
    (add,) = result.dynamic_partitions_requests
    assert add.partitions_def_name == TILE_KEYS
    assert set(add.partition_keys) == set(first.tile_keys) | set(second.tile_keys)
    order = list(add.partition_keys)
    for project in (first, second):
        request = requests[project.project_id]
        ops = request.run_config["ops"]
        assert ops["label_set"]["config"] == {"project_id": project.project_id}
        assert ops["landcover_model"]["config"] == {"project_id": project.project_id}
        assert ops["predictions"]["config"]["tile_keys"] == project.tile_keys  # exactly the project's tiles
        covered = order[order.index(request.tags[RANGE_START]) : order.index(request.tags[RANGE_END]) + 1]
        assert set(project.tile_keys) <= set(covered)
        assert request.tags[LABEL_EVENT_TAG] == str(label_store.max_event_id(project.project_id))
        assert request.run_key == f"labels-{project.project_id}-{label_store.max_event_id(project.project_id)}"


def test_next_tick_requests_only_projects_with_new_events(project: Project, label_store, instance) -> None:
    other = add_project(label_store, "other")
    result, _ = evaluate(label_submission_sensor, instance, label_store)
    instance.add_dynamic_partitions(TILE_KEYS, list(result.dynamic_partitions_requests[0].partition_keys))

    # The next tick looks at the same events once more (one committed late would show now) and submits nothing;
    # then the cursor has moved past them.
    again, _ = evaluate(label_submission_sensor, instance, label_store, result.cursor)
    assert again.run_requests == [] and events(again.cursor) == label_store.max_event_id()
    assert isinstance(evaluate(label_submission_sensor, instance, label_store, again.cursor)[0], dg.SkipReason)
    cursor = again.cursor

    label_store.add_labels(other.project_id, [("water", Point(*DEMO_AOI.centroid.coords[0]))], aoi_id=other.aoi_id)
    label_store.undo(project.project_id)  # an undo is an event too
    later, _ = evaluate(label_submission_sensor, instance, label_store, cursor)
    assert sorted(int(r.tags[PROJECT_TAG]) for r in later.run_requests) == sorted(
        [project.project_id, other.project_id]
    )
    assert seen(later.cursor) == label_store.max_event_id() > events(cursor)
    assert later.dynamic_partitions_requests == []  # keys are registered already


def test_an_event_committed_after_a_newer_one_is_not_skipped(project: Project, label_store, instance) -> None:
    """On PostgreSQL an event id is taken at insert: a transaction still open when the sensor ticks commits later
    with a lower id than events the tick saw. The sensor must still submit its project."""
    if label_store.engine.dialect.name != "postgresql":
        pytest.skip("SQLite serialises writers: ids are in commit order")
    other = add_project(label_store, "other")
    first, _ = evaluate(label_submission_sensor, instance, label_store)
    instance.add_dynamic_partitions(TILE_KEYS, list(first.dynamic_partitions_requests[0].partition_keys))
    settled, _ = evaluate(label_submission_sensor, instance, label_store, first.cursor)
    (label,) = label_store.list_labels(other.project_id)[:1]
    with label_store.engine.connect() as slow:
        transaction = slow.begin()  # another writer's transaction: its event id is taken now, committed later
        slow.execute(
            text("INSERT INTO label_events (project_id, label_id, action, undone) VALUES (:p, :l, 'add', false)"),
            {"p": other.project_id, "l": label.id},
        )
        label_store.add_labels(
            project.project_id, [("water", Point(*DEMO_AOI.centroid.coords[0]))], aoi_id=project.aoi_id
        )
        tick, _ = evaluate(label_submission_sensor, instance, label_store, settled.cursor)
        assert [int(r.tags[PROJECT_TAG]) for r in tick.run_requests] == [project.project_id]
        transaction.commit()
    late, _ = evaluate(label_submission_sensor, instance, label_store, tick.cursor)
    assert [int(r.tags[PROJECT_TAG]) for r in late.run_requests] == [other.project_id]


def test_labels_already_submitted_by_the_trigger_are_not_submitted_again(
    project: Project, label_store, instance
) -> None:
    instance.add_dynamic_partitions(TILE_KEYS, project.tile_keys)
    tags = label_run_tags(
        project.project_id, project.tile_keys, project.tile_keys, label_store.max_event_id(project.project_id)
    )
    instance.create_run_for_job(
        job_def=dg.GraphDefinition(name="noop", node_defs=[]).to_job(name="label_to_map_job"), tags=tags
    )
    result, _ = evaluate(label_submission_sensor, instance, label_store)
    assert result.run_requests == []
    assert seen(result.cursor) == label_store.max_event_id()


def test_a_burst_waits_for_the_quiet_period_then_gives_one_run(
    project: Project, label_store, instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While labels keep coming the sensor waits (the review app submits its own run first); then one run."""
    monkeypatch.setenv("PEARL_LABEL_QUIET_S", "30")
    get_settings.cache_clear()
    clock = [1000.0]
    monkeypatch.setattr(sensors.time, "time", lambda: clock[0])
    first, _ = evaluate(label_submission_sensor, instance, label_store, "0")
    assert first.run_requests == [] and events(first.cursor) == 0  # seen now: not quiet yet
    clock[0] += 20
    label_store.add_labels(project.project_id, [("water", Point(*DEMO_AOI.centroid.coords[0]))], aoi_id=project.aoi_id)
    second, _ = evaluate(label_submission_sensor, instance, label_store, first.cursor)
    assert second.run_requests == []  # a new label: the quiet period starts again
    clock[0] += 29
    third, _ = evaluate(label_submission_sensor, instance, label_store, second.cursor)
    assert third.run_requests == []
    clock[0] += 2
    fourth, _ = evaluate(label_submission_sensor, instance, label_store, third.cursor)
    (request,) = fourth.run_requests
    assert request.tags[LABEL_EVENT_TAG] == str(label_store.max_event_id(project.project_id))
    assert events(fourth.cursor) == label_store.max_event_id()
    assert isinstance(evaluate(label_submission_sensor, instance, label_store, fourth.cursor)[0], dg.SkipReason)
    # The cursor of before the quiet period (a bare event id) still reads.
    bare = str(label_store.max_event_id())
    assert isinstance(evaluate(label_submission_sensor, instance, label_store, bare)[0], dg.SkipReason)


def test_projects_without_aoi_are_skipped(label_store, instance) -> None:
    from pearl_pipelines.classes import load_schema

    bare = label_store.create_project("bare", {}, load_schema("chesapeake9"), "models:/x@starter")
    label_store.add_labels(bare.id, [("water", Point(-76.42, 38.97))])
    result, _ = evaluate(label_submission_sensor, instance, label_store)
    assert result.run_requests == []
    assert seen(result.cursor) == label_store.max_event_id()


def test_new_aoi_registers_tile_keys_and_requests_embeddings(label_store, instance) -> None:
    first = add_project(label_store, "first", n_labels=0)
    result, _ = evaluate(aoi_registration_sensor, instance, label_store)
    assert result.cursor == str(first.aoi_id)
    assert list(result.dynamic_partitions_requests[0].partition_keys) == first.tile_keys
    (request,) = result.run_requests
    assert request.run_config["ops"]["embeddings"]["config"] == {
        "project_id": first.project_id,
        "aoi_ids": [first.aoi_id],
    }

    again, _ = evaluate(aoi_registration_sensor, instance, label_store, result.cursor)
    assert isinstance(again, dg.SkipReason)
