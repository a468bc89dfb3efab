"""Labels: points and polygons of a class, each inside an AOI of its project; delete, undo, export.

Every change is announced on the websocket and, debounced, to Dagster (one label run per burst of clicks).
"""

from __future__ import annotations

from typing import Any

import geopandas as gpd
from shapely.geometry import shape

from pearl_pipelines.labels.store import AoiRow, LabelRow, LabelStore, LabelStoreError
from review_app import geometry
from review_app.events import EventHub
from review_app.schemas import LabelCreate, LabelFeature, LabelsChangedEvent
from review_app.services.aois import AoiService
from review_app.services.classes import ClassSchemas


def label_feature(row: LabelRow) -> LabelFeature:
    return LabelFeature(
        id=row.id,
        geometry=row.geometry,
        properties={
            "class_name": row.class_name,
            "aoi_id": row.aoi_id,
            "geom_type": row.geom_type,
            "created_at": row.created_at.isoformat() if row.created_at else None,
        },
    )


class LabelService:
    def __init__(self, *, store: LabelStore, classes: ClassSchemas, aois: AoiService, hub: EventHub) -> None:
        self.store, self.classes, self.aois = store, classes, aois
        self.hub = hub

    def of_project(self, project_id: int, *, aoi_id: int | None = None) -> list[LabelRow]:
        return self.store.list_labels(project_id, aoi_id=aoi_id)

    def frame(self, project_id: int) -> gpd.GeoDataFrame:
        """The project's live labels as a GeoDataFrame (lon/lat), one row per label (`label_id`)."""
        return self.store.labels_frame(project_id)

    def add(self, project_id: int, req: LabelCreate) -> LabelRow:
        self.store.get_project(project_id)
        geom = geometry.parse_label(req.geometry, req.crs)
        schema = self.classes.get(project_id)
        if req.class_name not in schema.names:
            raise LabelStoreError(f"unknown class {req.class_name!r}; this project has: {', '.join(schema.names)}")
        aoi: AoiRow | None
        if req.aoi_id is not None:
            aoi = self.aois.get(project_id, req.aoi_id)
            if not geometry.inside(shape(aoi.geometry), geom):
                raise geometry.GeometryError(
                    f"the label is not inside AOI {aoi.id} ({aoi.name}); labels must lie within their AOI"
                )
        else:
            aoi = next((a for a in self.store.list_aois(project_id) if geometry.inside(shape(a.geometry), geom)), None)
            if aoi is None:
                raise geometry.GeometryError(
                    "the label is outside every AOI of this project; draw an AOI around it first"
                )
        (row,) = self.store.add_labels(project_id, [(req.class_name, geom)], aoi_id=aoi.id)
        self._changed(project_id)
        return row

    def delete(self, project_id: int, label_id: int) -> LabelRow:
        row = self.store.delete_label(project_id, label_id)
        self._changed(project_id)
        return row

    def undo(self, project_id: int) -> LabelRow | None:
        self.store.get_project(project_id)
        row = self.store.undo(project_id)
        if row is not None:
            self._changed(project_id)
        return row

    def geojson(self, project_id: int) -> dict[str, Any]:
        self.store.get_project(project_id)
        rows = self.store.list_labels(project_id)
        return {
            "type": "FeatureCollection",
            "features": [label_feature(r).model_dump() for r in rows],
        }

    def _changed(self, project_id: int) -> None:
        # Dagster hears of a label burst once the retrain it starts is in MLflow (container.py: the label run then
        # adopts that version), or from its label sensor after a quiet period when no retrain follows.
        self.hub.publish(project_id, LabelsChangedEvent())
