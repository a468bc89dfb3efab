"""Map patches: a mapper's hand corrections of the map (fill a polygon with a class, or paint in another checkpoint's
map), stored like labels (who, when, remove, undo) and painted over every map of the AOIs they touch until removed.

- Every AOI map passes `patch_map` before it is published (review_app/tasks.py `_finish_map`): later retrains,
  restores and inferences carry the patches, and so do the tiles and the exports (classes.tif, areas.csv).
- Adding, removing or undoing a patch re-applies the patches to the current maps it touches as a job
  (`tasks.run_repatch`): the model's output is kept beside the patched map, so no model runs and a removal restores it.
- A checkpoint patch paints that version's map of the AOI, predicted once from the AOI's embedding cache with the
  version's head and kept (`ProjectPaths.checkpoint_map_dir`).
- Patches are not labels; `as_labels` copies a fill patch into labels of its class when the mapper asks.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from pearl_pipelines.geo.grid import AoiError, aoi_to_lonlat
from pearl_pipelines.geo.patching import MapPatch, apply_patches, model_file
from pearl_pipelines.labels.accounts import User, UserRow
from pearl_pipelines.labels.patches import NewPatch, PatchRow, PatchStore
from pearl_pipelines.labels.store import AoiRow, LabelRow, LabelStore, LabelStoreError
from pearl_pipelines.layout import CLASSES_FILE, cache_complete
from pearl_pipelines.settings import Settings
from pearl_pipelines.storage import MAP_FILES
from review_app import geometry, tasks
from review_app.events import EventHub
from review_app.geometry import MAX_VERTICES, _count_positions
from review_app.jobs import Job, JobRunner
from review_app.schemas import LabelsChangedEvent, PatchCreate, PatchOut
from review_app.services.classes import ClassSchemas
from review_app.services.models import ModelService
from review_app.workspace import StateStore

log = logging.getLogger(__name__)


class PatchService:
    def __init__(
        self,
        *,
        settings: Settings,
        store: LabelStore,
        states: StateStore,
        classes: ClassSchemas,
        models: ModelService,
        runner: JobRunner,
        hub: EventHub,
    ) -> None:
        self.settings, self.store, self.states, self.classes, self.models = settings, store, states, classes, models
        self.runner, self.hub = runner, hub
        self.patches = PatchStore(store)
        states.map_patcher = self.patch_map  # every AOI map passes here before it is published

    # -- reading --------------------------------------------------------------------------------------------------
    def of_project(self, project_id: int, *, include_removed: bool = False) -> list[PatchRow]:
        self.store.get_project(project_id)  # an unknown project is a 404, not an empty list
        return self.patches.every(project_id) if include_removed else self.patches.live(project_id)

    def out(self, row: PatchRow) -> PatchOut:
        schema = self.classes.get(row.project_id)
        class_name = None
        if row.class_index is not None and row.class_index < len(schema):
            class_name = schema.classes[row.class_index].name
        return PatchOut(
            id=row.id,
            kind="fill" if row.kind == "fill" else "checkpoint",
            geometry=row.geometry,
            class_name=class_name,
            checkpoint=row.source_version,
            aoi_ids=[a.id for a in self._touched(row.project_id, shape(row.geometry))],
            user=self._user_name(row.user_id),
            created_at=row.created_at,
            removed_at=row.removed_at,
        )

    def _user_name(self, user_id: int) -> str:
        with self.store.session() as s:
            user = s.get(UserRow, user_id)
            return user.name if user is not None else "?"

    def _touched(self, project_id: int, geom: BaseGeometry) -> list[AoiRow]:
        """The project's AOIs whose polygon the patch overlaps (not just touches at an edge)."""
        return [a for a in self.store.list_aois(project_id) if shape(a.geometry).intersection(geom).area > 0]

    # -- changes ----------------------------------------------------------------------------------------------------
    def add(self, project_id: int, req: PatchCreate, user: User) -> tuple[PatchRow, Job | None]:
        self.store.get_project(project_id)
        limit = self.settings.patch_max_per_project
        if len(self.patches.live(project_id)) >= limit:
            raise LabelStoreError(
                f"the project has {limit} map patches in force, the most allowed (PEARL_PATCH_MAX_PER_PROJECT); "
                "remove some, or use a larger one instead of many small ones"
            )
        geom = self._polygon(req)
        aois = self._touched(project_id, geom)
        if not aois:
            raise geometry.GeometryError("the patch covers no AOI of this project; draw it over a mapped AOI")
        class_index = source = None
        if req.kind == "fill":
            schema = self.classes.get(project_id)
            if req.class_name is None or req.class_name not in schema.names:
                raise LabelStoreError(
                    f"a fill patch needs `class_name`, one of: {', '.join(schema.names)} (got {req.class_name!r})"
                )
            if req.checkpoint is not None:
                raise LabelStoreError("a fill patch takes `class_name` only; `checkpoint` is for checkpoint patches")
            class_index = schema.index(req.class_name)
        else:
            if req.checkpoint is None or req.class_name is not None:
                raise LabelStoreError("a checkpoint patch takes `checkpoint` (a model version number) only")
            known = [e.number for e in self.states.version_entries(project_id)]
            try:
                self.models.checkpoint_info(project_id, req.checkpoint)
            except KeyError:
                raise LabelStoreError(
                    f"no model version {req.checkpoint} in this project; it has: {', '.join(map(str, known)) or 'none'}"
                ) from None
            source = req.checkpoint
        row = self.patches.add(
            project_id, NewPatch(kind=req.kind, geometry=geom, class_index=class_index, source_version=source), user.id
        )
        return row, self._repatch(project_id, geom)

    def remove(self, project_id: int, patch_id: int) -> tuple[PatchRow, Job | None]:
        row = self.patches.remove(project_id, patch_id)
        return row, self._repatch(project_id, shape(row.geometry))

    def undo(self, project_id: int) -> tuple[PatchRow | None, Job | None]:
        self.store.get_project(project_id)
        row = self.patches.undo(project_id)
        if row is None:
            return None, None
        return row, self._repatch(project_id, shape(row.geometry))

    def as_labels(self, project_id: int, patch_id: int) -> list[LabelRow]:
        """Labels of the fill patch's class: its polygon clipped to each AOI it covers (one label per polygon part),
        so the next retrain learns from it. The patch stays."""
        row = self.patches.get(project_id, patch_id)
        if row.removed_at is not None:
            raise KeyError(f"no patch {patch_id} in project {project_id}")
        if row.kind != "fill" or row.class_index is None:
            raise LabelStoreError("only a fill patch (one class) can become labels; a checkpoint patch has no class")
        schema = self.classes.get(project_id)
        class_name = schema.classes[row.class_index].name
        geom = shape(row.geometry)
        added: list[LabelRow] = []
        with_aoi = []
        for aoi in self._touched(project_id, geom):
            clipped = geom.intersection(shape(aoi.geometry))
            parts = getattr(clipped, "geoms", [clipped])
            polygons = [p for p in parts if p.geom_type == "Polygon" and p.area > 0 and p.is_valid]
            if polygons:
                with_aoi.append((aoi.id, polygons))
        if not with_aoi:
            raise geometry.GeometryError("the patch covers no AOI of this project any more: nothing to label")
        for aoi_id, polygons in with_aoi:
            added += self.store.add_labels(project_id, [(class_name, p) for p in polygons], aoi_id=aoi_id)
        self.hub.publish(project_id, LabelsChangedEvent())
        return added

    @staticmethod
    def _polygon(req: PatchCreate) -> BaseGeometry:
        """The patch's lon/lat Polygon/MultiPolygon, checked as an AOI is (vertex limit, validity, CRS, degrees)."""
        geometry.check_crs(req.crs)
        if _count_positions(req.geometry.get("coordinates"), MAX_VERTICES) > MAX_VERTICES:
            raise geometry.GeometryError(f"the patch has more than {MAX_VERTICES} vertices; simplify it")
        try:
            geom = aoi_to_lonlat(req.geometry, req.crs)
        except AoiError as exc:
            raise geometry.GeometryError(str(exc).replace("AOI", "patch", 1)) from None
        if geometry.area_km2(geom) <= 0:
            raise geometry.GeometryError("the patch has no area; draw a polygon with at least three distinct corners")
        return geom

    def _repatch(self, project_id: int, geom: BaseGeometry) -> Job | None:
        """Re-apply the patches to the current maps of the AOIs `geom` covers (a job: after running jobs' maps)."""
        aoi_ids = [a.id for a in self._touched(project_id, geom)]
        layers = self.states.get(project_id).aois
        aoi_ids = [a for a in aoi_ids if a in layers and layers[a].version > 0]
        if not aoi_ids:
            return None
        ws = self.states.workspace(project_id)

        def repatch(ctx: Any) -> str:
            # Maps another app process published (remote object store): their folders here first, with the model's
            # output kept beside a patched map, so the patches are re-applied to the model's map, not on top of
            # the patched one. Without a remote store this reads nothing more.
            if self.states.remote is not None:
                current = ws.state().aois
                for aoi_id in aoi_ids:
                    if aoi_id in current and current[aoi_id].version > 0:
                        ws.local_map_dir(aoi_id, current[aoi_id].version)
            return tasks.run_repatch(ctx, ws, aoi_ids, store=self.store)

        return self.runner.submit(project_id, "patch", repatch)

    # -- the map step -------------------------------------------------------------------------------------------------
    def patch_map(self, project_id: int, aoi_id: int, version: int, aoi_geometry: Mapping[str, Any]) -> None:
        """Paint the patches in force over the AOI's map `version` (StateStore.map_patcher; runs in a job)."""
        aoi = shape(aoi_geometry)
        rows = [r for r in self.patches.live(project_id, bounds=aoi.bounds) if shape(r.geometry).intersects(aoi)]
        if not rows:
            return
        patches = []
        for row in rows:
            if row.kind == "fill":
                patches.append(MapPatch(row.geometry, class_index=row.class_index))
                continue
            source = self._checkpoint_map(project_id, aoi_id, row.source_version)
            if source is None:
                log.info("project %s AOI %s: no cached embeddings yet, patch %s waits", project_id, aoi_id, row.id)
                continue
            patches.append(MapPatch(row.geometry, source=source))
        paths = self.states.paths(project_id)
        directory = paths.prediction_dir(aoi_id, version)
        apply_patches(directory, patches, aoi_geometry=aoi_geometry)
        # The model's output kept beside the patched map goes to the remote store with the map (which
        # review_app/tasks.py `_store_map` uploads next): another process re-applies patches from it. No-op locally.
        self.states.publish_files(directory, tuple(model_file(directory, n).name for n in MAP_FILES))

    def _checkpoint_map(self, project_id: int, aoi_id: int, number: int | None) -> Path | None:
        """Model version `number`'s class map of the AOI, predicted from its embedding cache (no backbone) once and
        kept; None while the AOI has no complete cache (its whole map's publication applies the patch)."""
        if number is None:
            return None
        paths = self.states.paths(project_id)
        directory = paths.checkpoint_map_dir(aoi_id, number)
        self.states.fetch_folder(directory, marker=CLASSES_FILE)  # another process made it (remote store only)
        if (directory / CLASSES_FILE).is_file():
            return directory / CLASSES_FILE
        ws = self.states.workspace(project_id)
        cache = ws.ensure_local_cache(aoi_id)  # another process's cache (remote store): downloaded
        if not cache_complete(cache):
            return None
        from pearl_pipelines.ml import loop  # torch: imported where a checkpoint map is made

        version = self.models.load_version(project_id, number)
        tmp = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        loop.repredict(cache, version, self.classes.get(project_id), tmp)
        shutil.rmtree(directory, ignore_errors=True)
        tmp.rename(directory)
        self.states.publish_folder(directory, last=(CLASSES_FILE,))  # for the other processes (remote store)
        return directory / CLASSES_FILE
