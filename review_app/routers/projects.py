"""Projects (imagery source, class schema, base model) and their classes; and what the projects page offers to
make a new one from (the local catalog's collections, configured STAC APIs' items, the starter models)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response, status

from pearl_pipelines.labels.accounts import Role
from pearl_pipelines.labels.store import LabelStoreError
from review_app.auth.identity import LOCAL_SUBJECT
from review_app.deps import AccountsDep, ClassesDep, ProjectDep, ProjectId, ProjectsDep, RoleDep, ServicesDep, UserDep
from review_app.schemas import (
    ClassCreate,
    ClassOut,
    ClassUpdate,
    ErrorOut,
    LocalCollectionOut,
    ProjectCreate,
    ProjectListItem,
    ProjectOut,
    ProjectRename,
    ProjectSummary,
    StacApiOut,
    StacSearchOut,
    StarterOut,
)
from review_app.services import imagery_choices
from review_app.services.errors import Conflict
from review_app.services.starters import list_starters

router = APIRouter(prefix="/api/projects", tags=["projects"])
choices_router = APIRouter(tags=["projects"])  # what a new project can be made of (any signed-in user)
ERRORS: dict[int | str, dict] = {404: {"model": ErrorOut}, 422: {"model": ErrorOut}}
STAC_ERRORS: dict[int | str, dict] = {**ERRORS, 503: {"model": ErrorOut}}
StacId = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$", description="an id the API gave")]
ApiId = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="a configured STAC API's id")]


@router.get("", response_model=list[ProjectListItem])
def list_projects(
    projects: ProjectsDep, accounts: AccountsDep, services: ServicesDep, user: UserDep
) -> list[ProjectListItem]:
    """The projects the caller has a role in, with what the projects page shows of each (imagery, classes, labels,
    AOIs, last activity, the caller's role), newest activity first."""
    rows = projects.list_all()
    if services.auth.local and user.subject == LOCAL_SUBJECT:
        roles = {r.id: Role.owner for r in rows}  # the local mode's one user owns everything
    else:
        roles = accounts.roles(user)
    items = projects.list_items([r for r in rows if r.id in roles], roles)
    return sorted(items, key=lambda p: (p.last_activity, p.id), reverse=True)


@router.post("", response_model=ProjectOut, status_code=status.HTTP_201_CREATED, responses=ERRORS)
def create_project(
    projects: ProjectsDep, accounts: AccountsDep, services: ServicesDep, user: UserDep, body: ProjectCreate
) -> ProjectOut:
    """Create a project, owned by the caller; its imagery mosaic is built in the background (a `job` event says
    when it is ready). `base_model` is a starter, or the registered model of a project the caller has a role in."""
    services.quotas.check_new_project(user)  # 403 naming PEARL_QUOTA_PROJECTS or PEARL_QUOTA_BYTES
    services.uploads.check_imagery_owner(body.imagery.model_dump(), user)  # uploaded imagery: its uploader only
    row = projects.create(body, readable=services.readable_projects(user))
    accounts.set_role(row.id, user, Role.owner)
    return projects.out(row.id, retry_missing=False)


@router.get("/{project_id}", response_model=ProjectOut, responses=ERRORS)
def get_project(projects: ProjectsDep, project: ProjectDep, role: RoleDep) -> ProjectOut:
    """Everything the map needs: classes with label counts, imagery/prediction TileJSON links, model status, AOIs,
    and the caller's role."""
    return projects.out(project.id).model_copy(update={"role": role.name})


@router.patch("/{project_id}", response_model=ProjectOut, responses=ERRORS)
def rename_project(projects: ProjectsDep, project_id: ProjectId, body: ProjectRename, request: Request) -> ProjectOut:
    """Rename the project (owners). Names are unique: a taken one is a 422."""
    request.state.audit_target = {"name": body.name}
    projects.rename(project_id, body.name)
    return projects.out(project_id, retry_missing=False)


@router.delete("/{project_id}", response_model=ProjectSummary, responses={**ERRORS, 409: {"model": ErrorOut}})
def delete_project(
    *,
    projects: ProjectsDep,
    services: ServicesDep,
    user: UserDep,
    project_id: ProjectId,
    request: Request,
    confirm: Annotated[str | None, Query(max_length=120, description="the project's name, typed by the owner")] = None,
) -> ProjectSummary:
    """Delete the project (owners), confirmed by its name in `confirm` (422 otherwise); refused (409) while one of
    its jobs (inference, retrain, restore) runs.

    What happens: from now on it answers as an unknown id for everyone (every route, tiles, websocket) and leaves
    every list; its memberships are removed (it counts in nobody's quota) and its name is free again; its folder
    under PEARL_HOME (maps, caches, versions, share links' copies) is moved aside to review/deleted/<id>-<time>,
    so its share links stop working. Nothing is erased: its database rows (AOIs, labels, audit trail), MLflow
    versions and files stay, an operator can remove the folder to free the disk or restore the project (the
    `project_deletions` row and the folder), and since ids are never given out again nothing of it can surface
    in a new project. The database change is one transaction: it happens whole or not at all."""
    row = projects.get(project_id)
    request.state.audit_target = {"name": row.name}
    if confirm != row.name:
        raise LabelStoreError(
            f"to delete project {project_id}, confirm it with its name: confirm={row.name!r} (nothing was deleted)"
        )
    running = [job.kind for job in services.runner.active(project_id)]
    if running:
        raise Conflict(f"project {project_id} has running jobs ({', '.join(running)}): delete it once they finish")
    projects.delete(project_id, user)
    services.forget_project(project_id)
    return ProjectSummary(id=row.id, name=row.name, created_at=row.created_at)


@router.post("/{project_id}/classes", response_model=list[ClassOut], status_code=201, responses=ERRORS)
def add_class(projects: ProjectsDep, classes: ClassesDep, project_id: ProjectId, body: ClassCreate) -> list[ClassOut]:
    """Add a class (snake_case name, #rrggbb colour). The model learns it at the next retrain."""
    classes.add(project_id, body)
    return projects.out(project_id, retry_missing=False).classes


@router.patch("/{project_id}/classes/{name}", response_model=list[ClassOut], responses=ERRORS)
def update_class(
    projects: ProjectsDep, classes: ClassesDep, project_id: ProjectId, name: str, body: ClassUpdate
) -> list[ClassOut]:
    """Rename or recolour a class; its pixel value stays, so models and rasters remain valid."""
    classes.update(project_id, name, body)
    return projects.out(project_id, retry_missing=False).classes


# -- what a new project can be made of ----------------------------------------------------------------------------
@choices_router.get("/api/imagery/local", response_model=list[LocalCollectionOut])
def local_collections(services: ServicesDep, user: UserDep) -> list[LocalCollectionOut]:
    """The collections of the server's local STAC catalog the caller may use (ProjectCreate.imagery: {source: local,
    collection}): generated and ingested ones, and the caller's own uploads (not other users')."""
    return imagery_choices.local_collections(services.settings, user.id)


@choices_router.get("/api/imagery/stac", response_model=list[StacApiOut])
def stac_apis(services: ServicesDep) -> list[StacApiOut]:
    """The STAC APIs the operator configured, by id (ProjectCreate.imagery: {source: stac, api, ...})."""
    return imagery_choices.stac_apis(services.settings)


@choices_router.get("/api/imagery/stac/{api}/collections", response_model=list[str], responses=STAC_ERRORS)
def stac_collections(services: ServicesDep, api: ApiId) -> list[str]:
    """The collection ids the configured API `api` offers (503 when it does not answer)."""
    return imagery_choices.api_collections(services.settings, api)


@choices_router.get("/api/imagery/stac/{api}/search", response_model=StacSearchOut, responses=STAC_ERRORS)
def stac_search(
    *,
    services: ServicesDep,
    api: ApiId,
    collections: Annotated[str, Query(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.,:-]{0,299}$", examples=["naip"])],
    bbox: Annotated[str, Query(max_length=200, description="west,south,east,north (lon/lat)")],
    datetime: Annotated[str | None, Query(pattern=r"^[0-9TZ:.+/-]{4,80}$", examples=["2021-01-01/2021-12-31"])] = None,
    limit: Annotated[int, Query(ge=1, le=imagery_choices.MAX_SEARCH_ITEMS)] = 12,
) -> StacSearchOut:
    """Items of `collections` (comma-separated) in the map's view `bbox` and the `datetime` range (RFC 3339
    interval, `..` for open ends), newest first, each with a thumbnail URL of this app."""
    try:
        box = [float(v) for v in bbox.split(",")]
    except ValueError:
        raise LabelStoreError("bbox must be 4 numbers west,south,east,north (lon/lat degrees)") from None
    try:
        imagery_choices.check_bbox(box)
    except ValueError as exc:
        raise LabelStoreError(str(exc)) from None
    wanted = [c for c in collections.split(",") if c]
    return imagery_choices.search(services.settings, api, collections=wanted, bbox=box, datetime=datetime, limit=limit)


@choices_router.get(
    "/api/imagery/stac/{api}/items/{collection}/{item_id}/thumbnail.png",
    response_class=Response,
    responses={**STAC_ERRORS, 200: {"content": {"image/png": {}}}},
)
def stac_thumbnail(services: ServicesDep, api: ApiId, collection: StacId, item_id: StacId) -> Response:
    """A small PNG of an item's image, rendered by this server (the page shows no remote image)."""
    try:
        png = imagery_choices.thumbnail(services.settings, api, collection, item_id)
    except imagery_choices.ThumbnailError as exc:
        raise KeyError(str(exc)) from None
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@choices_router.get("/api/starters", response_model=list[StarterOut])
def starters(services: ServicesDep) -> list[StarterOut]:
    """The starter models a project can begin with (ProjectCreate.base_model and class_schema), with their holdout
    macro F1 where it is known (the MLflow registry, else the server's copy); never fails for want of MLflow."""
    return list_starters(services.settings)
