"""A project's imagery mosaic, built in the background: at first start, and again while it is missing (at most every
`IMAGERY_RETRY_S`), so that imagery generated after the app started (`pearl generate`) is picked up."""

from __future__ import annotations

import threading
import time
from typing import Any

from pearl_pipelines.labels.store import LabelStore
from pearl_pipelines.settings import Settings
from review_app import tasks
from review_app.jobs import JobContext, JobRunner
from review_app.services.uploads import fetch_collection
from review_app.workspace import ProjectWorkspace, StateStore

IMAGERY_RETRY_S = 10.0


class ProjectImagery:
    def __init__(self, *, settings: Settings, store: LabelStore, states: StateStore, runner: JobRunner) -> None:
        self.settings, self.store, self.states, self.runner = settings, store, states, runner
        self._lock = threading.Lock()
        self._tried: dict[int, float] = {}  # project -> when its mosaic was last submitted

    def ensure(self, project_id: int) -> None:
        """Submit the mosaic job if the imagery is missing (or failed) and no such job runs or ran just now."""
        state = self.states.get(project_id)
        with self._lock:
            retry = (
                state.imagery.state in ("missing", "error")
                and not any(j.kind == "imagery" for j in self.runner.active(project_id))
                and time.monotonic() - self._tried.get(project_id, -1e9) > IMAGERY_RETRY_S
            )
            if retry:
                self._tried[project_id] = time.monotonic()
        if retry:
            ws, source = self.states.workspace(project_id), self.store.get_project(project_id).imagery
            self.runner.submit(project_id, "imagery", lambda ctx: self._build(ctx, ws, source))

    def _build(self, ctx: JobContext, ws: ProjectWorkspace, source: dict[str, Any]) -> str:
        if self.states.remote is not None and source.get("source", "local") == "local":
            # an upload another app process ingested (remote object store): its collection into this catalog first
            fetch_collection(self.states.remote, self.settings, str(source.get("collection", "")))
        return tasks.build_imagery(ctx, ws, source=source, settings=self.settings)
