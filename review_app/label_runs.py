"""Tell Dagster that a project's labels changed: the review app's one call into the orchestrator."""

from __future__ import annotations

import logging

from pearl_pipelines.labels.store import LabelStore
from pearl_pipelines.settings import Settings
from review_app.workspace import StateChange, StateStore

log = logging.getLogger(__name__)


def _seen(change: StateChange, events: int) -> str:
    """What a label run submitted now would see: the project's label events and its newest version in MLflow
    (a version logged after the labels is what the run adopts)."""
    logged = max((e.number for e in change.version_entries() if e.mlflow_version), default=0)
    return f"{events}/{logged}"


def claim_label_run(project_id: int, store: LabelStore, states: StateStore) -> bool:
    """Whether this process submits the project's label run now: yes for the first app process to ask since the
    labels or the logged versions changed. Each process debounces its own clicks (jobs.Debouncer); the claim, made
    under the project's row lock, keeps a burst spread over several processes to one Dagster run."""
    events = store.max_event_id(project_id)
    with states.change(project_id) as change:
        seen = _seen(change, events)
        if change.state.label_run == seen:
            return False
        change.state.label_run = seen
    return True


def submit_label_run(project_id: int, settings: Settings, store: LabelStore, states: StateStore) -> None:
    """Direct run submission, once per change across app processes. Dagster not reachable: logged; its label sensor
    catches up."""
    from pearl_pipelines.trigger import TriggerError, submit_label_run

    if not claim_label_run(project_id, store, states):
        log.info("label run for project %s: another app process submitted it for these labels", project_id)
        return
    try:
        run_id = submit_label_run(project_id, settings=settings, store=store)
    except TriggerError as exc:
        log.info("label run for project %s not submitted: %s", project_id, exc)
        return
    log.info("label run %s submitted for project %s", run_id, project_id)
