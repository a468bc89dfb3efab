"""Map patches: fill a drawn polygon with a class, or paint in another checkpoint's map there; remove, undo, and
copy a fill patch into labels. Maps change through a `patch` job (`prediction_updated` on the websocket)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, status

from review_app.deps import MAX_ID, ProjectId, ServicesDep, UserDep
from review_app.schemas import ErrorOut, LabelCollection, PatchChangeOut, PatchCreate, PatchOut
from review_app.services.labels import label_feature
from review_app.services.patches import PatchService

router = APIRouter(prefix="/api/projects/{project_id}/patches", tags=["patches"])
ERRORS: dict[int | str, dict] = {404: {"model": ErrorOut}, 422: {"model": ErrorOut}}


def get_patches(services: ServicesDep) -> PatchService:
    return services.patches  # type: ignore[no-any-return]


PatchesDep = Annotated[PatchService, Depends(get_patches)]
PatchId = Annotated[int, Path(ge=1, le=MAX_ID, description="patch id")]


@router.get("", response_model=list[PatchOut], responses=ERRORS)
def list_patches(
    patches: PatchesDep,
    project_id: ProjectId,
    include_removed: Annotated[bool, Query(description="also the removed ones (their `removed_at` is set)")] = False,
) -> list[PatchOut]:
    """The project's patches in force (oldest first: a newer one paints over an older one)."""
    return [patches.out(r) for r in patches.of_project(project_id, include_removed=include_removed)]


@router.post("", response_model=PatchChangeOut, status_code=status.HTTP_201_CREATED, responses=ERRORS)
def create_patch(
    patches: PatchesDep, project_id: ProjectId, body: PatchCreate, user: UserDep, request: Request
) -> PatchChangeOut:
    """Fill the polygon with `class_name` (kind `fill`), or paint in model version `checkpoint`'s map there (kind
    `checkpoint`), on every map of the AOIs it covers, now and after every retrain, until removed."""
    row, job = patches.add(project_id, body, user)
    request.state.audit_target = {"patch_id": str(row.id)}
    return PatchChangeOut(patch=patches.out(row), job=job.out() if job else None)


@router.post("/undo", response_model=PatchChangeOut, responses=ERRORS)
def undo_patch(patches: PatchesDep, project_id: ProjectId) -> PatchChangeOut:
    """Revert the newest patch added or removed; `patch` is null when there is nothing left to undo."""
    row, job = patches.undo(project_id)
    if row is None:
        return PatchChangeOut(patch=None)
    return PatchChangeOut(patch=patches.out(row), restored=row.removed_at is None, job=job.out() if job else None)


@router.delete("/{patch_id}", response_model=PatchChangeOut, responses=ERRORS)
def remove_patch(patches: PatchesDep, project_id: ProjectId, patch_id: PatchId) -> PatchChangeOut:
    """Remove a patch: the maps it covers show the model's output there again (undo brings it back)."""
    row, job = patches.remove(project_id, patch_id)
    return PatchChangeOut(patch=patches.out(row), job=job.out() if job else None)


@router.post(
    "/{patch_id}/labels", response_model=LabelCollection, status_code=status.HTTP_201_CREATED, responses=ERRORS
)
def patch_as_labels(patches: PatchesDep, project_id: ProjectId, patch_id: PatchId) -> LabelCollection:
    """Copy a fill patch into labels of its class (clipped to each AOI it covers), for the next retrain; patches
    train nothing otherwise. The patch stays."""
    return LabelCollection(features=[label_feature(r) for r in patches.as_labels(project_id, patch_id)])
