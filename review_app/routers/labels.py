"""Labels: points and polygons per class, inside an AOI; delete, undo; export as GeoJSON and GeoPackage."""

from __future__ import annotations

import tempfile
from pathlib import Path

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import JSONResponse, Response

from review_app.deps import MAX_ID, LabelId, LabelsDep, ProjectDep, ProjectId
from review_app.schemas import ErrorOut, LabelCollection, LabelCreate, LabelFeature, UndoOut
from review_app.services.labels import label_feature

router = APIRouter(prefix="/api/projects/{project_id}/labels", tags=["labels"])
ERRORS: dict[int | str, dict] = {404: {"model": ErrorOut}, 422: {"model": ErrorOut}}
GPKG_MEDIA_TYPE = "application/geopackage+sqlite3"


@router.get("", response_model=LabelCollection, responses=ERRORS)
def list_labels(
    labels: LabelsDep, project: ProjectDep, aoi_id: int | None = Query(default=None, ge=1, le=MAX_ID)
) -> LabelCollection:
    """Live labels as a GeoJSON FeatureCollection (lon/lat); `properties.class_name` names the class."""
    rows = labels.of_project(project.id, aoi_id=aoi_id)
    return LabelCollection(features=[label_feature(r) for r in rows])


@router.post("", response_model=LabelFeature, status_code=status.HTTP_201_CREATED, responses=ERRORS)
def create_label(labels: LabelsDep, project_id: ProjectId, body: LabelCreate, request: Request) -> LabelFeature:
    """A Point or Polygon of a class, inside an AOI. Stored and committed before this answers."""
    feature = label_feature(labels.add(project_id, body))
    request.state.audit_target = {"label_id": str(feature.id)}  # the audit trail names the label added
    return feature


@router.delete("/{label_id}", response_model=LabelFeature, responses=ERRORS)
def delete_label(labels: LabelsDep, project_id: ProjectId, label_id: LabelId) -> LabelFeature:
    """Erase a label (undo brings it back)."""
    return label_feature(labels.delete(project_id, label_id))


@router.post("/undo", response_model=UndoOut, responses=ERRORS)
def undo(labels: LabelsDep, project_id: ProjectId) -> UndoOut:
    """Revert the newest add or delete; `undone` is null when there is nothing left to undo."""
    row = labels.undo(project_id)
    if row is None:
        return UndoOut(undone=None, restored=False)
    return UndoOut(undone=label_feature(row), restored=row.deleted_at is None)


def _attachment(name: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{name}"'}


@router.get("/export.geojson", responses=ERRORS)
def export_geojson(labels: LabelsDep, project: ProjectDep) -> JSONResponse:
    """All live labels as a GeoJSON file (EPSG:4326)."""
    return JSONResponse(
        labels.geojson(project.id),
        media_type="application/geo+json",
        headers=_attachment(f"project{project.id}-labels.geojson"),
    )


@router.get("/export.gpkg", response_class=Response, responses=ERRORS)
def export_geopackage(labels: LabelsDep, project: ProjectDep) -> Response:
    """All live labels as a GeoPackage (layer `labels`, EPSG:4326) that opens in QGIS."""
    frame = labels.frame(project.id)
    rows = {r.id: r for r in labels.of_project(project.id)}
    frame["aoi_id"] = [rows[i].aoi_id for i in frame["label_id"]]
    frame["created_at"] = [rows[i].created_at.isoformat() for i in frame["label_id"]]
    with tempfile.TemporaryDirectory(prefix="pearl-export-") as tmp:
        path = Path(tmp) / "labels.gpkg"
        if len(frame):
            frame.to_file(path, layer="labels", driver="GPKG", engine="pyogrio")
        else:  # an empty frame has no geometry type to declare: write a typed empty layer
            frame.to_file(path, layer="labels", driver="GPKG", engine="pyogrio", geometry_type="Unknown")
        content = path.read_bytes()
    return Response(content, media_type=GPKG_MEDIA_TYPE, headers=_attachment(f"project{project.id}-labels.gpkg"))
