"""AOIs (drawn areas to map live), inference over one, and exports of its classified map."""

from __future__ import annotations

import csv
import io
import re
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Query, UploadFile, status
from fastapi.responses import FileResponse, Response

from pearl_pipelines.settings import Settings
from review_app.deps import AoiId, AoisDep, ProjectId
from review_app.schemas import AoiCreate, AoiOut, ErrorOut, InferenceRequest, JobOut, PlainText
from review_app.security import FileRoute
from review_app.services.aoi_files import ACCEPTED, AoiFileLimits, AoiFileTooLarge, Grouping, read_aoi_upload
from review_app.services.aois import AREA_COLUMNS
from review_app.suggestions import (
    DEFAULT_SUGGESTIONS,
    MAX_SUGGESTIONS,
    SuggestionCollection,
    SuggestionMethod,
)

router = APIRouter(prefix="/api/projects/{project_id}/aois", tags=["aois"])
ERRORS: dict[int | str, dict] = {404: {"model": ErrorOut}, 409: {"model": ErrorOut}, 422: {"model": ErrorOut}}


@router.get("", response_model=list[AoiOut])
def list_aois(aois: AoisDep, project_id: ProjectId) -> list[AoiOut]:
    return [aois.out(a) for a in aois.of_project(project_id)]


@router.post("", response_model=AoiOut, status_code=status.HTTP_201_CREATED, responses=ERRORS)
def create_aoi(aois: AoisDep, project_id: ProjectId, body: AoiCreate) -> AoiOut:
    """A GeoJSON Polygon/MultiPolygon over the project's imagery, at most `live_aoi_max_km2` (default 25 km^2)."""
    return aois.out(aois.add(project_id, body))


UPLOAD_ERRORS: dict[int | str, dict] = {**ERRORS, 403: {"model": ErrorOut}, 413: {"model": ErrorOut}}
MULTIPART_SLACK = 64 << 10  # the form's boundaries and small fields around the file


def file_routes(settings: Settings) -> list[FileRoute]:
    """The upload's exception to the JSON-only write rule and its body limit (review_app/security.py)."""
    return [
        FileRoute(
            method="POST",
            path=re.compile(r"/api/projects/[^/]+/aois/upload"),
            content_types=frozenset({"multipart/form-data"}),
            max_bytes=settings.aoi_upload_max_bytes + MULTIPART_SLACK,
            setting="PEARL_AOI_UPLOAD_MAX_BYTES",
        )
    ]


@router.post("/upload", response_model=list[AoiOut], status_code=status.HTTP_201_CREATED, responses=UPLOAD_ERRORS)
def upload_aois(
    aois: AoisDep,
    project_id: ProjectId,
    file: Annotated[UploadFile, File(description=ACCEPTED + ", in any CRS")],
    grouping: Annotated[
        Grouping, Form(description="per_feature: one AOI per polygon feature; one: all features as one AOI")
    ] = "per_feature",
    name_field: Annotated[
        PlainText | None,
        Form(max_length=100, description="per_feature: the attribute that names each AOI (default: a 'name' one)"),
    ] = None,
) -> list[AoiOut]:
    """AOIs from a file (multipart form): Polygons/MultiPolygons, reprojected to lon/lat. Each AOI within
    `live_aoi_max_km2` and PEARL_AOI_MAX_VERTICES; the file within PEARL_AOI_UPLOAD_MAX_BYTES and
    PEARL_AOI_UPLOAD_MAX_FEATURES. Every AOI of the file is stored, or none (422 lists those refused)."""
    limits = AoiFileLimits.of(aois.settings)
    try:
        read = read_aoi_upload(
            file.file, file.filename or "upload", grouping=grouping, name_field=name_field or None, limits=limits
        )
    except AoiFileTooLarge as exc:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, str(exc)) from None
    return [aois.out(row) for row in aois.add_uploaded(project_id, read)]


@router.get("/{aoi_id}", response_model=AoiOut, responses=ERRORS)
def get_aoi(aois: AoisDep, project_id: ProjectId, aoi_id: AoiId) -> AoiOut:
    return aois.out(aois.get(project_id, aoi_id))


@router.post("/{aoi_id}/inference", response_model=JobOut, status_code=status.HTTP_202_ACCEPTED, responses=ERRORS)
def start_inference(
    aois: AoisDep, project_id: ProjectId, aoi_id: AoiId, body: InferenceRequest | None = None
) -> JobOut:
    """Predict the AOI with the current model and cache its embeddings; progress and the new layer arrive on the
    websocket (`job`, `prediction_updated`). A new AOI shows first the block nearest the centre of `view` (the
    mapper's map; default the AOI's centre) as a `partial` layer version, then the whole AOI as the next one."""
    return aois.start_inference(project_id, aoi_id, body.view if body is not None else None).out()


@router.get("/{aoi_id}/suggestions", response_model=SuggestionCollection, responses=ERRORS)
def get_suggestions(
    aois: AoisDep,
    project_id: ProjectId,
    aoi_id: AoiId,
    n: Annotated[int, Query(ge=1, le=MAX_SUGGESTIONS, description="how many points")] = DEFAULT_SUGGESTIONS,
    method: Annotated[SuggestionMethod, Query(description="margin (top-2 probabilities) or entropy")] = "margin",
) -> SuggestionCollection:
    """Label here next: up to `n` lon/lat Points of the AOI where the current model is least sure, spread over
    the AOI and away from existing labels (fewer when the AOI cannot hold `n`). 409 until the AOI is predicted."""
    return aois.suggestions(project_id, aoi_id, n=n, method=method)


@router.get("/{aoi_id}/export/classes.tif", response_class=FileResponse, responses=ERRORS)
def export_classes(aois: AoisDep, project_id: ProjectId, aoi_id: AoiId) -> FileResponse:
    """The AOI's current classified map: a COG (uint8 class index, colour table, nodata 255)."""
    path, version = aois.current_classes(project_id, aoi_id)
    return FileResponse(
        path,
        media_type="image/tiff; application=geotiff; profile=cloud-optimized",
        filename=f"project{project_id}-aoi{aoi_id}-v{version}-classes.tif",
    )


@router.get("/{aoi_id}/export/areas.csv", response_class=Response, responses=ERRORS)
def export_areas(aois: AoisDep, project_id: ProjectId, aoi_id: AoiId) -> Response:
    """Area per class of the AOI's current map (pixels, m^2, ha, percent of the mapped area)."""
    rows, version = aois.areas(project_id, aoi_id)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(AREA_COLUMNS)
    writer.writerows(rows)
    filename = f"project{project_id}-aoi{aoi_id}-v{version}-areas.csv"
    return Response(
        out.getvalue(), media_type="text/csv", headers={"Content-Disposition": f'attachment; filename="{filename}"'}
    )
