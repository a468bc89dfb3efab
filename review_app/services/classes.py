"""Each project's class schema: read on every prediction tile (its colours), so cached; changed only through here."""

from __future__ import annotations

import threading

from pearl_pipelines.classes import ClassSchema
from pearl_pipelines.labels.store import LabelStore, LabelStoreError
from review_app.events import EventHub
from review_app.schemas import ClassCreate, ClassesChangedEvent, ClassUpdate


class ClassSchemas:
    def __init__(self, *, store: LabelStore, hub: EventHub) -> None:
        self.store, self.hub = store, hub
        self._lock = threading.Lock()
        self._schemas: dict[int, ClassSchema] = {}

    def get(self, project_id: int) -> ClassSchema:
        with self._lock:
            if project_id not in self._schemas:
                self._schemas[project_id] = self.store.schema(project_id)
            return self._schemas[project_id]

    def colormap(self, project_id: int) -> dict[int, tuple[int, int, int, int]]:
        return self.get(project_id).colormap()

    def add(self, project_id: int, req: ClassCreate) -> ClassSchema:
        title = req.title or req.name.replace("_", " ").capitalize()
        schema = self.store.add_class(project_id, req.name, title, req.color)
        self._changed(project_id)
        return schema

    def update(self, project_id: int, name: str, req: ClassUpdate) -> ClassSchema:
        if req.name is None and req.title is None and req.color is None:
            raise LabelStoreError("nothing to change: send any of name, title, color")
        schema = self.store.update_class(project_id, name, new_name=req.name, title=req.title, color=req.color)
        self._changed(project_id)
        return schema

    def _changed(self, project_id: int) -> None:
        with self._lock:
            self._schemas.pop(project_id, None)
        self.hub.publish(project_id, ClassesChangedEvent())
