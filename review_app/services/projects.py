"""Projects: create one (imagery source, class schema, base model), describe it for the map, and warm it up (its
imagery mosaic and base model load in the background, so a new or restarted project is ready when looked at)."""

from __future__ import annotations

from collections import Counter

from pearl_pipelines.classes import load_schema
from pearl_pipelines.labels.store import LabelStore, LabelStoreError, ProjectRow
from pearl_pipelines.settings import Settings
from review_app.links import imagery_links
from review_app.schemas import (
    DEFAULT_BASE_MODEL,
    ClassOut,
    ImageryStatus,
    LocalImagery,
    ModelStatus,
    ProjectCreate,
    ProjectOut,
    TileJsonLinks,
)
from review_app.services.aois import AoiService
from review_app.services.classes import ClassSchemas
from review_app.services.model_cache import ModelCache
from review_app.services.project_imagery import ProjectImagery
from review_app.workspace import StateStore

DEMO_PROJECT = "Demo: Chesapeake shoreline"
DEMO_COLLECTION = "demo"


class ProjectService:
    def __init__(
        self,
        *,
        settings: Settings,
        store: LabelStore,
        states: StateStore,
        classes: ClassSchemas,
        model_cache: ModelCache,
        imagery: ProjectImagery,
        aois: AoiService,
    ) -> None:
        self.settings, self.store, self.states = settings, store, states
        self.classes, self.model_cache, self.imagery, self.aois = classes, model_cache, imagery, aois

    def get(self, project_id: int) -> ProjectRow:
        return self.store.get_project(project_id)

    def list_all(self) -> list[ProjectRow]:
        return self.store.list_projects()

    def ensure_demo_project(self) -> None:
        """First start: the demo project (local `demo` collection, chesapeake9, the starter model)."""
        if self.store.list_projects():
            return
        self.create(
            ProjectCreate(
                name=DEMO_PROJECT,
                imagery=LocalImagery(collection=DEMO_COLLECTION),
                class_schema="chesapeake9",
                base_model=DEFAULT_BASE_MODEL,
            )
        )

    def create(self, req: ProjectCreate) -> ProjectRow:
        if isinstance(req.class_schema, str):
            try:
                schema = load_schema(req.class_schema, self.settings.assets_dir)
            except KeyError as exc:  # a bad value in the body, not an unknown path id: 422
                raise LabelStoreError(exc.args[0]) from None
        else:
            schema = req.class_schema
        row = self.store.create_project(req.name, req.imagery.model_dump(), schema, req.base_model)
        self.warm_up(row.id)
        return row

    def warm_up(self, project_id: int) -> None:
        """Start what a project needs in the background: its imagery mosaic and its base model."""
        self.imagery.ensure(project_id)
        self.model_cache.load_in_background(project_id)

    def out(self, project_id: int, *, retry_missing: bool = True) -> ProjectOut:
        row = self.get(project_id)
        state = self.states.get(project_id)
        if retry_missing:
            self.warm_up(project_id)  # e.g. `pearl generate` or the starter training ran after the app started
        schema = self.classes.get(project_id)
        counts = Counter(label.class_name for label in self.store.list_labels(project_id))
        classes = [
            ClassOut(index=i, name=c.name, title=c.title, color=c.color, label_count=counts.get(c.name, 0))
            for i, c in enumerate(schema.classes)
        ]
        imagery = ImageryStatus(
            state=state.imagery.state,
            message=state.imagery.message,
            bounds=state.imagery.bounds,
            tilejson=imagery_links(project_id) if state.imagery.state == "ready" else TileJsonLinks(),
        )
        model = self.model_cache.loaded(project_id)
        return ProjectOut(
            id=row.id,
            name=row.name,
            created_at=row.created_at,
            imagery_source=row.imagery,
            class_schema_id=schema.id,
            classes=classes,
            imagery=imagery,
            model=ModelStatus(
                ready=model is not None,
                message="" if model is not None else self.model_cache.why_missing(project_id),
                base_model=row.base_model,
                current_version=state.current_model,
            ),
            aois=[self.aois.out(a) for a in self.store.list_aois(project_id)],
            live_aoi_max_km2=self.settings.live_aoi_max_km2,
        )
