"""FastAPI dependencies as `Annotated` aliases (full-stack-fastapi-template style): one per domain service."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from pearl_pipelines.labels.accounts import Accounts, Role, User
from pearl_pipelines.labels.store import ProjectRow
from review_app.container import ReviewServices
from review_app.jobs import JobRunner
from review_app.schemas import MAX_ID  # one bound for every id, in paths, queries and bodies
from review_app.services.aois import AoiService
from review_app.services.classes import ClassSchemas
from review_app.services.labels import LabelService
from review_app.services.models import ModelService
from review_app.services.projects import ProjectService
from review_app.workspace import StateStore


def get_services(request: Request) -> ReviewServices:
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[ReviewServices, Depends(get_services)]


def get_projects(services: ServicesDep) -> ProjectService:
    return services.projects


def get_classes(services: ServicesDep) -> ClassSchemas:
    return services.classes


def get_aois(services: ServicesDep) -> AoiService:
    return services.aois


def get_labels(services: ServicesDep) -> LabelService:
    return services.labels


def get_models(services: ServicesDep) -> ModelService:
    return services.models


def get_states(services: ServicesDep) -> StateStore:
    return services.states


def get_jobs(services: ServicesDep) -> JobRunner:
    return services.runner


ProjectsDep = Annotated[ProjectService, Depends(get_projects)]
ClassesDep = Annotated[ClassSchemas, Depends(get_classes)]
AoisDep = Annotated[AoiService, Depends(get_aois)]
LabelsDep = Annotated[LabelService, Depends(get_labels)]
ModelsDep = Annotated[ModelService, Depends(get_models)]
StatesDep = Annotated[StateStore, Depends(get_states)]  # the projects' session state (model and layer versions)
JobsDep = Annotated[JobRunner, Depends(get_jobs)]


ProjectId = Annotated[int, Path(ge=1, le=MAX_ID, description="project id")]
AoiId = Annotated[int, Path(ge=1, le=MAX_ID, description="AOI id")]
LabelId = Annotated[int, Path(ge=1, le=MAX_ID, description="label id")]
CheckpointId = Annotated[int, Path(ge=0, le=MAX_ID, description="checkpoint id (0: the base model)")]


def get_project(projects: ProjectsDep, project_id: ProjectId) -> ProjectRow:
    """The project named in the path, or 404."""
    return projects.get(project_id)


ProjectDep = Annotated[ProjectRow, Depends(get_project)]


def get_user(request: Request) -> User:
    """The caller, as the app-wide guard (review_app.auth.guard) authenticated it."""
    return request.state.user  # type: ignore[no-any-return]


UserDep = Annotated[User, Depends(get_user)]


def get_role(request: Request) -> Role:
    """The caller's role in the path's project, as the guard found it (project-scoped routes only)."""
    return request.state.role  # type: ignore[no-any-return]


RoleDep = Annotated[Role, Depends(get_role)]


def get_accounts(services: ServicesDep) -> Accounts:
    return services.accounts


AccountsDep = Annotated[Accounts, Depends(get_accounts)]
