"""Compare two versions as maps: the change table (GET), making the versions' maps (POST, a job), and the tile layers
of the versions' maps and of the change (ids only, as every tile route: review_app/tiles.py)."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, status

from pearl_pipelines.layout import CLASSES_FILE
from review_app import tiles
from review_app.auth.guard import role_in
from review_app.container import ReviewServices
from review_app.deps import MAX_ID, ProjectId
from review_app.schemas import COMMON_ERRORS, CompareMapsOut, CompareMapsRequest, ErrorOut, JobOut
from review_app.services.compare import CHANGE_FILE, CompareError, CompareService

router = APIRouter(prefix="/api/projects/{project_id}/compare", tags=["compare"])
ERRORS: dict[int | str, dict] = {404: {"model": ErrorOut}, 409: {"model": ErrorOut}, 422: {"model": ErrorOut}}
_VERSION = re.compile(r"^(0|[1-9][0-9]{0,8})$")  # model versions start at 0 (the base model)


def get_compare(request: Request) -> CompareService:
    services: ReviewServices = request.app.state.services
    return services.compare


CompareDep = Annotated[CompareService, Depends(get_compare)]


def _unprocessable(exc: CompareError) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))


@router.get("", response_model=CompareMapsOut, responses=ERRORS)
def get_change(
    *,
    compare: CompareDep,
    project_id: ProjectId,
    aoi: Annotated[int, Query(ge=1, le=MAX_ID, description="AOI of map A (and of B unless aoi_b is given)")],
    a: Annotated[int, Query(ge=0, le=MAX_ID, description="model version of map A (0: the base model)")],
    b: Annotated[int, Query(ge=0, le=MAX_ID, description="model version of map B")],
    aoi_b: Annotated[int | None, Query(ge=1, le=MAX_ID, description="AOI of map B (another date's imagery)")] = None,
    project_b: Annotated[int | None, Query(ge=1, le=MAX_ID, description="project of map B (default: this one)")] = None,
    request: Request,
) -> CompareMapsOut:
    """The change from map A to map B over their overlap: from -> to areas (hectares; changed pairs only, largest
    first, plus the unchanged total; nodata in either map is left out) and the tile layers of A, B and the change
    (pixels whose class differs, coloured by B's class). 404 naming an unknown AOI or version; 409 while a map is
    not made yet (POST makes it); 422 when the two maps do not overlap."""
    _check_reader(request, project_b)
    try:
        return compare.change(project_id, CompareMapsRequest(aoi=aoi, a=a, b=b, aoi_b=aoi_b, project_b=project_b))
    except CompareError as exc:
        raise _unprocessable(exc) from None


@router.post("", response_model=JobOut, status_code=status.HTTP_202_ACCEPTED, responses=ERRORS)
def prepare_change(request: Request, compare: CompareDep, project_id: ProjectId, body: CompareMapsRequest) -> JobOut:
    """Make the maps of the two versions that are not kept yet (each version's head over the AOI's cached
    embeddings, no backbone pass) and their change, as a `compare` job with progress on the websocket; then GET
    answers at once. 409 when such an AOI has no cached embeddings (predict it first)."""
    _check_reader(request, body.project_b)
    try:
        return compare.start(project_id, body).out()
    except CompareError as exc:
        raise _unprocessable(exc) from None


def _check_reader(request: Request, project_b: int | None) -> None:
    """Map B of another project: the caller needs a role in it too (404 as for an unknown project otherwise)."""
    if project_b is None:
        return
    services: ReviewServices = request.app.state.services
    services.require_project(project_b)
    if role_in(services.accounts, services.auth, request.state.user, project_b) is None:
        raise KeyError(f"no project with id {project_b}")


# -- tiles ------------------------------------------------------------------------------------------------------------
def _version(value: str) -> int:
    if not _VERSION.match(value):
        raise tiles._not_found()
    return int(value)


def version_map_path(request: Request, project_id: tiles.IdParam, aoi_id: tiles.IdParam, version: tiles.IdParam) -> str:
    """(project, AOI, model version) -> that version's kept map of the AOI."""
    paths = tiles._services(request).states.paths(tiles._id(project_id))
    return tiles._file(paths.version_map_dir(tiles._id(aoi_id), _version(version)) / CLASSES_FILE)


def change_path(
    *,
    request: Request,
    project_id: tiles.IdParam,
    aoi_id: tiles.IdParam,
    version: tiles.IdParam,
    other_aoi_id: tiles.IdParam,
    other_version: tiles.IdParam,
) -> str:
    """(project, AOI and model version of A, of B) -> their change raster. Map B of another project: the caller needs
    a role there too (the change shows B's classes)."""
    services = tiles._services(request)
    try:
        other_project = services.store.get_aoi(tiles._id(other_aoi_id)).project_id
    except KeyError:
        raise tiles._not_found() from None
    foreign = other_project != tiles._id(project_id)
    if foreign and role_in(services.accounts, services.auth, request.state.user, other_project) is None:
        raise tiles._not_found()
    paths = services.states.paths(tiles._id(project_id))
    folder = paths.change_dir(tiles._id(aoi_id), _version(version), tiles._id(other_aoi_id), _version(other_version))
    return tiles._file(folder / CHANGE_FILE)


def mount_compare_tiles(app: FastAPI) -> None:
    """The compare layers under /tiles/compare/{project_id} (auth/rules.py TILE_LAYERS: viewer)."""
    errors: dict[int | str, dict] = {code: COMMON_ERRORS[code] for code in (401, 404, 422, 429)}
    layers = [
        ("/tiles/compare/{project_id}/maps/{aoi_id}/{version}", version_map_path, "tiles: compare maps"),
        (
            "/tiles/compare/{project_id}/changes/{aoi_id}/{version}/{other_aoi_id}/{other_version}",
            change_path,
            "tiles: compare change",
        ),
    ]
    for prefix, path_dependency, tag in layers:
        factory = tiles.tile_factory(prefix, path_dependency, tiles.class_colormap)
        app.include_router(factory.router, prefix=prefix, tags=[tag], responses=errors)
