"""Projects (imagery source, class schema, base model) and their classes."""

from __future__ import annotations

from fastapi import APIRouter, status

from review_app.deps import ProjectDep, ProjectId, ServiceDep
from review_app.schemas import ClassCreate, ClassOut, ClassUpdate, ErrorOut, ProjectCreate, ProjectOut, ProjectSummary

router = APIRouter(prefix="/api/projects", tags=["projects"])
ERRORS: dict[int | str, dict] = {404: {"model": ErrorOut}, 422: {"model": ErrorOut}}


@router.get("", response_model=list[ProjectSummary])
def list_projects(service: ServiceDep) -> list[ProjectSummary]:
    return [ProjectSummary(id=p.id, name=p.name, created_at=p.created_at) for p in service.store.list_projects()]


@router.post("", response_model=ProjectOut, status_code=status.HTTP_201_CREATED, responses=ERRORS)
def create_project(service: ServiceDep, body: ProjectCreate) -> ProjectOut:
    """Create a project; its imagery mosaic is built in the background (a `job` event says when it is ready)."""
    row = service.create_project(body)
    return service.project_out(row.id, retry_missing=False)


@router.get("/{project_id}", response_model=ProjectOut, responses=ERRORS)
def get_project(service: ServiceDep, project: ProjectDep) -> ProjectOut:
    """Everything the map needs: classes with label counts, imagery/prediction TileJSON links, model status, AOIs."""
    return service.project_out(project.id)


@router.post("/{project_id}/classes", response_model=list[ClassOut], status_code=201, responses=ERRORS)
def add_class(service: ServiceDep, project_id: ProjectId, body: ClassCreate) -> list[ClassOut]:
    """Add a class (snake_case name, #rrggbb colour). The model learns it at the next retrain."""
    service.add_class(project_id, body)
    return service.project_out(project_id, retry_missing=False).classes


@router.patch("/{project_id}/classes/{name}", response_model=list[ClassOut], responses=ERRORS)
def update_class(service: ServiceDep, project_id: ProjectId, name: str, body: ClassUpdate) -> list[ClassOut]:
    """Rename or recolour a class; its pixel value stays, so models and rasters remain valid."""
    service.update_class(project_id, name, body)
    return service.project_out(project_id, retry_missing=False).classes
