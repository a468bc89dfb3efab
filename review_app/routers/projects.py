"""Projects (imagery source, class schema, base model) and their classes."""

from __future__ import annotations

from fastapi import APIRouter, status

from pearl_pipelines.labels.accounts import Role
from review_app.deps import AccountsDep, ClassesDep, ProjectDep, ProjectId, ProjectsDep, ServicesDep, UserDep
from review_app.schemas import ClassCreate, ClassOut, ClassUpdate, ErrorOut, ProjectCreate, ProjectOut, ProjectSummary

router = APIRouter(prefix="/api/projects", tags=["projects"])
ERRORS: dict[int | str, dict] = {404: {"model": ErrorOut}, 422: {"model": ErrorOut}}


@router.get("", response_model=list[ProjectSummary])
def list_projects(projects: ProjectsDep, services: ServicesDep, user: UserDep) -> list[ProjectSummary]:
    """The projects the caller has a role in."""
    mine = services.readable_projects(user)
    return [ProjectSummary(id=p.id, name=p.name, created_at=p.created_at) for p in projects.list_all() if p.id in mine]


@router.post("", response_model=ProjectOut, status_code=status.HTTP_201_CREATED, responses=ERRORS)
def create_project(
    projects: ProjectsDep, accounts: AccountsDep, services: ServicesDep, user: UserDep, body: ProjectCreate
) -> ProjectOut:
    """Create a project, owned by the caller; its imagery mosaic is built in the background (a `job` event says
    when it is ready). `base_model` is a starter, or the registered model of a project the caller has a role in."""
    services.quotas.check_new_project(user)  # 403 naming PEARL_QUOTA_PROJECTS or PEARL_QUOTA_BYTES
    row = projects.create(body, readable=services.readable_projects(user))
    accounts.set_role(row.id, user, Role.owner)
    return projects.out(row.id, retry_missing=False)


@router.get("/{project_id}", response_model=ProjectOut, responses=ERRORS)
def get_project(projects: ProjectsDep, project: ProjectDep) -> ProjectOut:
    """Everything the map needs: classes with label counts, imagery/prediction TileJSON links, model status, AOIs."""
    return projects.out(project.id)


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
