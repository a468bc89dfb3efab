"""AOIs: the areas a mapper draws to map live (over the imagery, within the size limit), inference over one, and
"label here next" suggestions inside one."""

from __future__ import annotations

import functools
from pathlib import Path

import rasterio
from shapely.geometry import box, mapping, shape

from pearl_pipelines.geo.grid import AoiError, aoi_to_tile_keys
from pearl_pipelines.geo.maps import MapError, class_areas
from pearl_pipelines.labels.store import AoiRow, LabelStore, check_text
from pearl_pipelines.settings import Settings
from review_app import geometry, tasks
from review_app.jobs import Job, JobRunner
from review_app.links import prediction_links
from review_app.schemas import AoiCreate, AoiOut, PredictionLayer
from review_app.services import aoi_files
from review_app.services.aoi_files import FileAoi
from review_app.services.classes import ClassSchemas
from review_app.services.errors import Conflict, QuotaExceeded
from review_app.services.model_cache import ModelCache
from review_app.services.quotas import Quotas
from review_app.suggestions import SuggestionCollection, SuggestionMethod, aoi_suggestions
from review_app.workspace import StateStore

AREA_COLUMNS = ("class_index", "class_name", "title", "pixels", "area_m2", "area_ha", "percent")


class AoiService:
    def __init__(
        self,
        *,
        settings: Settings,
        store: LabelStore,
        states: StateStore,
        classes: ClassSchemas,
        model_cache: ModelCache,
        runner: JobRunner,
        quotas: Quotas,
    ) -> None:
        self.settings, self.store, self.states = settings, store, states
        self.classes, self.model_cache, self.runner, self.quotas = classes, model_cache, runner, quotas

    def get(self, project_id: int, aoi_id: int) -> AoiRow:
        row = self.store.get_aoi(aoi_id)
        if row.project_id != project_id:
            raise KeyError(f"no AOI {aoi_id} in project {project_id}")
        return row

    def of_project(self, project_id: int) -> list[AoiRow]:
        self.store.get_project(project_id)  # an unknown project is a 404, not an empty list
        return self.store.list_aois(project_id)

    def out(self, row: AoiRow) -> AoiOut:
        layer = self.states.get(row.project_id).aois.get(row.id)
        prediction = None
        if layer is not None and layer.version > 0:
            prediction = PredictionLayer(
                version=layer.version,
                model_version=layer.model_version,
                tilejson=prediction_links(row.project_id, row.id, layer.version),
                embeddings=layer.embeddings,
                partial=layer.partial,
            )
        return AoiOut(
            id=row.id,
            name=row.name,
            geometry=row.geometry,
            area_km2=round(geometry.area_km2(shape(row.geometry)), 4),
            tile_keys=len(row.tile_keys),
            prediction=prediction,
        )

    def add(self, project_id: int, req: AoiCreate) -> AoiRow:
        self.store.get_project(project_id)
        self.quotas.check_new_aoi(project_id)
        geom = geometry.parse_aoi(req.geometry, req.crs, self.settings.live_aoi_max_km2)
        bounds = self._imagery_bounds(project_id)
        if not box(*bounds).intersects(geom):
            raise geometry.GeometryError(
                f"AOI {tuple(round(v, 5) for v in geom.bounds)} is outside the project's imagery "
                f"{tuple(round(v, 5) for v in bounds)}; draw it over the imagery"
            )
        keys = aoi_to_tile_keys(geom)
        name = req.name or f"AOI {len(self.store.list_aois(project_id)) + 1}"
        return self.store.add_aoi(project_id, name, geom, keys)

    def _imagery_bounds(self, project_id: int) -> tuple[float, float, float, float]:
        imagery = self.states.get(project_id).imagery
        if imagery.state != "ready" or imagery.bounds is None:
            raise Conflict(f"the project's imagery is not ready ({imagery.state}): {imagery.message or 'wait for it'}")
        return imagery.bounds

    def add_uploaded(self, project_id: int, aois: list[FileAoi]) -> list[AoiRow]:
        """AOIs read from an uploaded file (services/aoi_files.py): all of them stored, in one transaction, or none
        (AoiFileError listing those refused: outside the imagery, too many tiles, over the AOI quota)."""
        self.store.get_project(project_id)
        bounds = self._imagery_bounds(project_id)
        have = len(self.store.list_aois(project_id))
        if have + len(aois) > self.settings.quota_aois:
            raise QuotaExceeded(
                f"AOI quota: project {project_id} has {have} AOIs, the file adds {len(aois)} and PEARL_QUOTA_AOIS "
                f"allows {self.settings.quota_aois}; upload the features as one AOI or fewer features"
            )
        self.quotas.check_growth(project_id)
        keys: list[list[str]] = []
        problems: list[str] = []
        for aoi in aois:
            if not box(*bounds).intersects(aoi.geometry):
                problems.append(
                    f"{aoi.name!r} {tuple(round(v, 5) for v in aoi.geometry.bounds)} is outside the project's "
                    f"imagery {tuple(round(v, 5) for v in bounds)}"
                )
                continue
            try:
                keys.append(aoi_to_tile_keys(aoi.geometry))
            except AoiError as exc:
                problems.append(f"{aoi.name!r}: {exc}")
        if problems:
            raise aoi_files.refused(problems, len(aois))
        for aoi in aois:
            check_text("AOI name", aoi.name, AoiRow.__table__.c.name)
        rows = [
            AoiRow(project_id=project_id, name=a.name, geometry=mapping(a.geometry), tile_keys=k)
            for a, k in zip(aois, keys, strict=True)
        ]
        with self.store.session() as session:  # one transaction: every AOI of the file, or none
            session.add_all(rows)
        return rows

    def start_inference(
        self, project_id: int, aoi_id: int, view: tuple[float, float, float, float] | None = None
    ) -> Job:
        """Inference over the AOI; `view` (lon/lat west, south, east, north: the mapper's map) picks the block
        predicted and shown first."""
        aoi = self.get(project_id, aoi_id)
        self.model_cache.require(project_id)
        if self.states.get(project_id).imagery.state != "ready":
            raise Conflict("the project's imagery is not ready yet")
        self.quotas.check_growth(project_id)  # a prediction layer and an embedding cache go to disk
        ws, slot = self.states.workspace(project_id), self.model_cache.slot(project_id)
        schema_of = functools.partial(self.classes.get, project_id)
        return self.runner.submit(
            project_id,
            "inference",
            lambda ctx: tasks.run_inference(
                ctx, ws, aoi, model=slot, schema_of=schema_of, settings=self.settings, view=view
            ),
            aoi_id=aoi_id,
        )

    def suggestions(self, project_id: int, aoi_id: int, *, n: int, method: SuggestionMethod) -> SuggestionCollection:
        self.get(project_id, aoi_id)
        return aoi_suggestions(
            self.states.workspace(project_id),
            aoi_id,
            model=self.model_cache.slot(project_id),
            schema=self.classes.get(project_id),
            store=self.store,
            n=n,
            method=method,
        )

    def current_classes(self, project_id: int, aoi_id: int) -> tuple[Path, int]:
        """The AOI's current classified map (COG) and its layer version; 409 until the AOI is predicted."""
        self.get(project_id, aoi_id)
        layer = self.states.get(project_id).aois.get(aoi_id)
        if layer is None or layer.version == 0:
            raise Conflict(f"AOI {aoi_id} has no prediction yet: run inference first")
        # a map another app process published (remote object store only): its folder here first
        self.states.workspace(project_id).local_map_dir(aoi_id, layer.version)
        return self.states.paths(project_id).classes_path(aoi_id, layer.version), layer.version

    def areas(self, project_id: int, aoi_id: int) -> tuple[list[list[object]], int]:
        """Area per class of the AOI's current map, one row per class of the project's schema (`AREA_COLUMNS`),
        percent of the pixels mapped to one of them; and the layer version."""
        path, version = self.current_classes(project_id, aoi_id)
        schema = self.classes.get(project_id)
        with rasterio.open(path) as src:
            try:
                areas = class_areas(src.read(1), src.transform, src.crs)
            except MapError:
                raise Conflict("areas need a projected CRS; this map is in degrees") from None
        mapped = int(areas.pixels[: len(schema)].sum()) or 1
        rows: list[list[object]] = []
        for i, c in enumerate(schema.classes):
            n = int(areas.pixels[i])
            rows.append(
                [i, c.name, c.title, n, round(areas.m2(i), 2), round(areas.hectares(i), 4), round(100 * n / mapped, 3)]
            )
        return rows, version
