"""Projects: create one (imagery source, class schema, base model), describe it for the map, and warm it up (its
imagery mosaic and base model load in the background, so a new or restarted project is ready when looked at)."""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import cast

from pearl_pipelines.classes import load_schema
from pearl_pipelines.geo.regions import LABEL_SCHEMAS
from pearl_pipelines.labels.accounts import Role, User
from pearl_pipelines.labels.project_admin import ProjectAdmin, ProjectFigures
from pearl_pipelines.labels.store import LabelStore, LabelStoreError, ProjectRow
from pearl_pipelines.layout import Layout
from pearl_pipelines.ml.refs import parse_registered_ref, project_id_of, starter_schema_of
from pearl_pipelines.settings import Settings
from review_app.imagery import ImageryError, resolve_source, shown_source
from review_app.links import imagery_links
from review_app.schemas import (
    BASE_MODEL_REFUSED,
    DEFAULT_BASE_MODEL,
    ClassOut,
    ImageryStatus,
    LocalImagery,
    ModelStatus,
    ProjectCreate,
    ProjectListItem,
    ProjectOut,
    RoleName,
    TileJsonLinks,
)
from review_app.services.aois import AoiService
from review_app.services.classes import ClassSchemas
from review_app.services.model_cache import ModelCache
from review_app.services.project_imagery import ProjectImagery
from review_app.workspace import StateStore

log = logging.getLogger(__name__)


def role_name(role: Role) -> RoleName:
    return cast(RoleName, role.name)


DEMO_PROJECT = "Demo: Chesapeake shoreline"
DEMO_COLLECTION = "demo"


def may_use_base_model(ref: str, readable: AbstractSet[int]) -> bool:
    """Whether a caller who has a role in the projects `readable` may name `ref` as a new project's base model: a
    registered model reference (never a path) to a starter (`pearl-starter-<schema>`, any caller) or to the
    registered model of a project in `readable` (`pearl-project-<id>`). A refusal never says which check failed,
    so it tells nothing about what exists."""
    try:
        name, _ = parse_registered_ref(ref)
    except ValueError:
        return False
    schema_id, project_id = starter_schema_of(name), project_id_of(name)
    return schema_id in LABEL_SCHEMAS or (project_id is not None and project_id in readable)


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
        self.admin = ProjectAdmin(store)  # rename, delete (tombstones), the list's figures

    def get(self, project_id: int) -> ProjectRow:
        """A live project; KeyError (404, the answer of an unknown id) for a deleted one too."""
        row = self.store.get_project(project_id)
        if self.admin.is_deleted(project_id):
            raise KeyError(f"no project with id {project_id}")
        return row

    def list_all(self) -> list[ProjectRow]:
        """The live projects (deleted ones left out)."""
        deleted = self.admin.deleted_ids()
        return [p for p in self.store.list_projects() if p.id not in deleted]

    def rename(self, project_id: int, name: str) -> ProjectRow:
        return self.admin.rename(project_id, name)

    def delete(self, project_id: int, by: User) -> None:
        """Delete a project: its row is marked (a tombstone, ProjectAdmin.delete), then its folder under PEARL_HOME
        (maps, caches, versions, share copies) is moved aside to `Layout.deleted_project`: nothing is erased, and
        nothing of it is served from its old place."""
        self.admin.delete(project_id, by)
        root = self.states.paths(project_id).root
        self._delete_stored(project_id, root)
        if not root.exists():
            return
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = self.settings.layout.path(Layout.deleted_project(project_id, stamp))
        try:
            aside.parent.mkdir(parents=True, exist_ok=True)
            root.rename(aside)
        except OSError as exc:  # deleted all the same (the database says so); its files stay where they were
            log.warning("project %s deleted; moving its folder %s aside failed: %s", project_id, root, exc)

    def _delete_stored(self, project_id: int, root: Path) -> None:
        """With a remote object store, the project's objects are removed from the store: its keys under
        `review/projects/<id>/` (maps, versions, its own embedding caches, share snapshots), the label-set snapshots
        of its Dagster runs and its AOIs' caches under a registered base model's folder. What other projects read
        stays: the shared imagery mosaics (`review/imagery/`) and the other AOIs' caches. The
        local move aside below is what an operator restores from; a failure here is logged, the project is deleted
        all the same (the database says so)."""
        layout = self.states.paths(project_id).layout
        slug = self.states.get(project_id).embeddings_slug
        folders = [root, layout.path(Layout.label_sets_of(project_id))]  # + the label-set snapshots of its runs
        if slug is not None:  # its AOIs' caches where the Dagster loop shares them (AOI ids belong to one project)
            folders += [layout.path(Layout.aoi_embeddings(slug, aoi.id)) for aoi in self.store.list_aois(project_id)]
        try:
            removed = sum(self.states.delete_stored(folder) for folder in folders)
        except Exception:
            log.exception("project %s deleted; removing its objects from the store failed", project_id)
            return
        if removed:
            log.info("project %s deleted: %d objects removed from the store", project_id, removed)

    def list_items(self, rows: list[ProjectRow], roles: Mapping[int, Role]) -> list[ProjectListItem]:
        """The projects page's rows of `rows`, with the caller's `roles` (one query per table, whatever the count)."""
        figures = self.admin.figures([r.id for r in rows])
        items = []
        for row in rows:
            fig = figures.get(row.id, ProjectFigures())
            schema = row.class_schema or {}
            items.append(
                ProjectListItem(
                    id=row.id,
                    name=row.name,
                    created_at=row.created_at,
                    imagery_source=shown_source(row.imagery),
                    class_schema_id=str(schema.get("id", "")),
                    class_count=len(schema.get("classes") or []),
                    label_count=fig.labels,
                    aoi_count=fig.aois,
                    last_activity=max(row.created_at, fig.last_activity or row.created_at),
                    role=role_name(roles[row.id]),
                )
            )
        return items

    def ensure_demo_project(self) -> None:
        """First start: the demo project (local `demo` collection, chesapeake9, the starter model)."""
        if self.store.list_projects():
            return
        demo = ProjectCreate(
            name=DEMO_PROJECT,
            imagery=LocalImagery(collection=DEMO_COLLECTION),
            class_schema="chesapeake9",
            base_model=DEFAULT_BASE_MODEL,
        )
        try:
            self.create(demo, readable=frozenset())
        except LabelStoreError:
            if not self.store.list_projects():  # not another app process starting at the same time: a real error
                raise

    def create(self, req: ProjectCreate, *, readable: AbstractSet[int]) -> ProjectRow:
        """A new project. `readable`: the ids of the projects the caller has a role in, whose registered models it
        may name as its base model (any caller may name a starter)."""
        if not may_use_base_model(req.base_model, readable):
            raise LabelStoreError(f"invalid request: base_model: {BASE_MODEL_REFUSED}")
        if isinstance(req.class_schema, str):
            try:
                schema = load_schema(req.class_schema, self.settings.assets_dir)
            except KeyError as exc:  # a bad value in the body, not an unknown path id: 422
                raise LabelStoreError(exc.args[0]) from None
        else:
            schema = req.class_schema
        try:  # a STAC API the operator configured, by id (SSRF: no request goes to a URL a user names)
            resolve_source(req.imagery.model_dump(), self.settings)
        except ImageryError as exc:
            raise LabelStoreError(str(exc)) from None
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
        ready = self.model_cache.available(project_id)  # an evicted base model reloads when needed
        return ProjectOut(
            id=row.id,
            name=row.name,
            created_at=row.created_at,
            imagery_source=shown_source(row.imagery),
            class_schema_id=schema.id,
            classes=classes,
            imagery=imagery,
            model=ModelStatus(
                ready=ready,
                message="" if ready else self.model_cache.why_missing(project_id),
                base_model=row.base_model,
                current_version=state.current_model,
            ),
            aois=[self.aois.out(a) for a in self.store.list_aois(project_id)],
            live_aoi_max_km2=self.settings.live_aoi_max_km2,
        )
