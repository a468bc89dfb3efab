"""Sensors: new labels -> the label loop; new AOIs -> tile partitions + onboarding (embeddings).

Both read the label store (SQLite WAL: reading never blocks the review app's writes) and keep a cursor:
the last label event id, the last AOI id.
"""

import json
import time
from typing import Any

import dagster as dg

from pearl_pipelines.defs.jobs import (
    aoi_onboarding_job,
    label_run_exists,
    label_run_request,
    label_to_map_job,
    project_tile_keys,
)
from pearl_pipelines.defs.partitions import TILE_KEYS, keys_to_add, tile_keys_partitions
from pearl_pipelines.defs.resources import LabelStoreResource, automation_enabled
from pearl_pipelines.settings import get_settings

DEFAULT_STATUS = dg.DefaultSensorStatus.RUNNING if automation_enabled() else dg.DefaultSensorStatus.STOPPED


@dg.sensor(
    job=label_to_map_job,
    minimum_interval_seconds=5,
    default_status=DEFAULT_STATUS,
    description="Label events since the cursor -> one label_to_map_job run per changed project.",
)
def label_submission_sensor(
    context: dg.SensorEvaluationContext, label_store: LabelStoreResource
) -> dg.SensorResult | dg.SkipReason:
    """Cursor (JSON): `events`, the label event id up to which every project was handled; `seen`, the newest event id
    the previous tick saw; `quiet`, the projects seen changing, as {project: [newest event id, first seen at]};
    `done`, the newest event id submitted per project while `events` has not passed it.

    A project is submitted once its newest event has stayed the same for `label_quiet_s`; until then `events`
    stays put, so the next tick sees it again. `events` moves only to what the *previous* tick saw: event ids are
    taken when a row is inserted, not when its transaction commits (PostgreSQL), so an event with a lower id can
    become visible after a higher one; a tick (at least 5 s) later it has. `done` keeps that second look from
    submitting a project again.
    """
    store = label_store.store()
    cursor = _label_cursor(context.cursor)
    latest = store.max_event_id()
    if latest <= cursor["events"]:
        return dg.SkipReason(f"no label events after {cursor['events']}")
    settled = min(cursor.get("seen", cursor["events"]), latest)
    quiet_s, now = get_settings().label_quiet_s, time.time()
    order = list(context.instance.get_dynamic_partitions(TILE_KEYS))
    requests: list[dg.RunRequest] = []
    new_keys: list[str] = []
    skipped: list[int] = []
    submitted: list[int] = []
    waiting: dict[str, list[float]] = {}
    done: dict[str, int] = dict(cursor.get("done", {}))
    for project_id in store.projects_changed_since(cursor["events"]):
        keys = project_tile_keys(store, project_id)
        if not keys:
            skipped.append(project_id)
            continue
        event_id = store.max_event_id(project_id)
        if done.get(str(project_id), 0) >= event_id:
            continue  # submitted by an earlier tick
        if label_run_exists(context.instance, project_id, event_id):
            submitted.append(project_id)  # the review app's direct trigger was faster
            continue
        seen_event, seen_at = cursor["quiet"].get(str(project_id), (event_id, now))
        if seen_event != event_id:
            seen_at = now  # still labelling: the quiet period starts again
        if now - seen_at < quiet_s:
            waiting[str(project_id)] = [event_id, seen_at]
            continue
        new_keys += keys_to_add([*order, *new_keys], keys)
        done[str(project_id)] = event_id
        # run_key: one run per project and label event, so a re-evaluated tick never submits twice.
        requests.append(
            label_run_request(
                project_id, keys, [*order, *new_keys], event_id, run_key=f"labels-{project_id}-{event_id}"
            )
        )
    if skipped:
        context.log.info(f"projects {skipped} have labels but no AOI: nothing to retrain on yet")
    if submitted:
        context.log.info(f"projects {submitted}: runs for their latest labels were already submitted")
    if waiting:
        context.log.info(f"projects {sorted(map(int, waiting))}: labels changed less than {quiet_s:g} s ago")
    events = cursor["events"] if waiting else settled
    done = {project: event for project, event in done.items() if event > events}
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[tile_keys_partitions.build_add_request(new_keys)] if new_keys else [],
        cursor=json.dumps({"events": events, "seen": latest, "quiet": waiting, "done": done}),
    )


def _label_cursor(raw: str | None) -> dict[str, Any]:
    """The label sensor's cursor; a bare event id is the form it had before the quiet period."""
    if not raw:
        return {"events": 0, "quiet": {}}
    if raw.strip().isdigit():
        return {"events": int(raw), "quiet": {}}
    return json.loads(raw)


@dg.sensor(
    job=aoi_onboarding_job,
    minimum_interval_seconds=10,
    default_status=DEFAULT_STATUS,
    description="New review AOIs -> their tile keys as partitions, and their embeddings computed.",
)
def aoi_registration_sensor(
    context: dg.SensorEvaluationContext, label_store: LabelStoreResource
) -> dg.SensorResult | dg.SkipReason:
    store = label_store.store()
    cursor = int(context.cursor or 0)
    new_aois = [a for p in store.list_projects() for a in store.list_aois(p.id) if a.id > cursor]
    if not new_aois:
        return dg.SkipReason(f"no AOIs after id {cursor}")
    existing = context.instance.get_dynamic_partitions(TILE_KEYS)
    keys = keys_to_add(existing, [k for a in sorted(new_aois, key=lambda a: a.id) for k in a.tile_keys])
    by_project: dict[int, list[int]] = {}
    for aoi in new_aois:
        by_project.setdefault(aoi.project_id, []).append(aoi.id)
    top = max(a.id for a in new_aois)
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"aoi-{project_id}-{max(ids)}",
                run_config={"ops": {"embeddings": {"config": {"project_id": project_id, "aoi_ids": ids}}}},
                tags={"pearl/project_id": str(project_id)},
            )
            for project_id, ids in by_project.items()
        ],
        dynamic_partitions_requests=[tile_keys_partitions.build_add_request(keys)] if keys else [],
        cursor=str(top),
    )
