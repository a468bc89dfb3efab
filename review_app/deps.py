"""FastAPI dependencies as `Annotated` aliases (full-stack-fastapi-template style)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from pearl_pipelines.labels.store import ProjectRow
from review_app.service import ReviewService


def get_service(request: Request) -> ReviewService:
    return request.app.state.service  # type: ignore[no-any-return]


ServiceDep = Annotated[ReviewService, Depends(get_service)]


ProjectId = Annotated[int, Path(ge=1, description="project id")]
AoiId = Annotated[int, Path(ge=1, description="AOI id")]


def get_project(service: ServiceDep, project_id: ProjectId) -> ProjectRow:
    """The project named in the path, or 404."""
    return service.project(project_id)


ProjectDep = Annotated[ProjectRow, Depends(get_project)]
