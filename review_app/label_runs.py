"""Tell Dagster that a project's labels changed: the review app's one call into the orchestrator."""

from __future__ import annotations

import logging

from pearl_pipelines.labels.store import LabelStore
from pearl_pipelines.settings import Settings

log = logging.getLogger(__name__)


def submit_label_run(project_id: int, settings: Settings, store: LabelStore) -> None:
    """Direct run submission. Dagster not reachable: logged; its label sensor catches up."""
    from pearl_pipelines.trigger import TriggerError, submit_label_run

    try:
        run_id = submit_label_run(project_id, settings=settings, store=store)
    except TriggerError as exc:
        log.info("label run for project %s not submitted: %s", project_id, exc)
        return
    log.info("label run %s submitted for project %s", run_id, project_id)
