"""Imagery uploads: announce a GeoTIFF, send it in chunks (resumable), preview it, ingest it into your collection.

    POST /api/uploads                    {filename, size} -> an upload id made by the server
    PUT  /api/uploads/{id}               raw bytes, `Content-Range: bytes START-END/SIZE`, START = `received`
    GET  /api/uploads/{id}               how many bytes arrived (resume there), and the file's check once complete
    GET  /api/uploads/{id}/preview.png   a small PNG of three bands
    POST /api/uploads/ingests            {name, files: [{upload_id, band_map}]} -> a background ingest
    GET  /api/uploads/ingests/{id}       its progress; when done, `collection` is a project's imagery

Every upload and ingest belongs to its caller: another user's id is answered like an unknown one (404).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from pearl_pipelines.settings import Settings
from review_app.deps import ServicesDep, UserDep
from review_app.schemas import ErrorOut, IngestCreate, IngestOut, UploadCreate, UploadOut
from review_app.security import FileRoute
from review_app.services.uploads import UploadError, UploadService, UploadTooLarge

router = APIRouter(prefix="/api/uploads", tags=["uploads"])
ERRORS: dict[int | str, dict] = {400: {"model": ErrorOut}, 404: {"model": ErrorOut}, 409: {"model": ErrorOut}}

UploadId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="upload id (from POST /api/uploads)")]
IngestId = Annotated[str, Path(pattern=r"^[0-9a-f]{24}$", description="ingest id (from POST /api/uploads/ingests)")]


CHUNK_TYPES = frozenset({"application/octet-stream"})


def file_routes(settings: Settings) -> list[FileRoute]:
    """A chunk is raw bytes (no Content-Type, or application/octet-stream): the exception to the JSON-only write
    rule, with the body limit a chunk already has (review_app/security.py)."""
    return [
        FileRoute(
            method="PUT",
            path=re.compile(r"/api/uploads/[0-9a-f]{32}"),
            content_types=CHUNK_TYPES,
            max_bytes=UploadService.chunk_limit(settings),
            setting="PEARL_MAX_BODY_BYTES",
        )
    ]


def get_uploads(services: ServicesDep) -> UploadService:
    return services.uploads  # type: ignore[no-any-return]


UploadsDep = Annotated[UploadService, Depends(get_uploads)]


@contextmanager
def _as_http() -> Iterator[None]:
    """The service's request errors as 400 (413 for a file over the size limit), the message as it is."""
    try:
        yield
    except UploadTooLarge as exc:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, str(exc)) from None
    except UploadError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None


@router.get("", response_model=list[UploadOut])
def list_uploads(uploads: UploadsDep, user: UserDep) -> list[UploadOut]:
    """The caller's uploads not yet ingested (a page reloaded mid-upload finds its file here and resumes)."""
    return uploads.list_mine(user)


@router.post("", response_model=UploadOut, status_code=status.HTTP_201_CREATED, responses=ERRORS)
def create_upload(uploads: UploadsDep, user: UserDep, body: UploadCreate) -> UploadOut:
    """Announce a GeoTIFF of `size` bytes (at most PEARL_UPLOAD_MAX_BYTES, within PEARL_QUOTA_BYTES)."""
    with _as_http():
        return uploads.create(user, body)


@router.get("/{upload_id}", response_model=UploadOut, responses=ERRORS)
def get_upload(uploads: UploadsDep, user: UserDep, upload_id: UploadId) -> UploadOut:
    """Bytes received so far (the next chunk starts there); once complete, the file's check or why it was refused."""
    return uploads.get(user, upload_id)


@router.put(
    "/{upload_id}",
    response_model=UploadOut,
    responses={**ERRORS, 415: {"model": ErrorOut, "description": "a Content-Type other than raw bytes"}},
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {"type": "string"}}}}
    },
)
async def put_chunk(
    request: Request,
    uploads: UploadsDep,
    user: UserDep,
    upload_id: UploadId,
    content_range: Annotated[str | None, Header(description="bytes START-END/SIZE, START = `received`")] = None,
) -> UploadOut:
    """One chunk of the file (raw bytes: no Content-Type or application/octet-stream; at most `chunk_bytes`).
    The last chunk completes the upload: the file is checked then (`state` ready or rejected, with `error`)."""
    with _as_http():
        return await uploads.write_chunk(user, upload_id, content_range, request.stream())


@router.delete("/{upload_id}", status_code=status.HTTP_204_NO_CONTENT, responses=ERRORS)
def delete_upload(uploads: UploadsDep, user: UserDep, upload_id: UploadId) -> Response:
    """Forget an upload and its bytes."""
    uploads.delete(user, upload_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{upload_id}/preview.png",
    response_class=Response,
    responses={**ERRORS, 200: {"content": {"image/png": {}}, "description": "PNG, at most 256 px a side"}},
)
async def preview_upload(
    uploads: UploadsDep,
    user: UserDep,
    upload_id: UploadId,
    bands: Annotated[
        str | None, Query(pattern=r"^\d{1,3},\d{1,3},\d{1,3}$", description="three 1-based bands shown as R,G,B")
    ] = None,
) -> Response:
    """A small picture of a complete upload, stretched 2-98 %: default the file's red, green, blue bands."""
    indexes = [int(b) for b in bands.split(",")] if bands else None
    with _as_http():
        png = await run_in_threadpool(uploads.preview_png, user, upload_id, indexes)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


@router.post("/ingests", response_model=IngestOut, status_code=status.HTTP_202_ACCEPTED, responses=ERRORS)
def start_ingest(uploads: UploadsDep, user: UserDep, body: IngestCreate) -> IngestOut:
    """Ingest complete uploads (pearl ingest: band mapping, stretch, COG, STAC item) into a new collection of
    yours, in the background; follow it at GET /api/uploads/ingests/{id}. Ingested uploads are then deleted."""
    with _as_http():
        return uploads.start_ingest(user, body.name, body.files)


@router.get("/ingests/{ingest_id}", response_model=IngestOut, responses=ERRORS)
def get_ingest(uploads: UploadsDep, user: UserDep, ingest_id: IngestId) -> IngestOut:
    """An ingest's progress; `error` says what was wrong. Done: `collection` is ready for a new project."""
    return uploads.get_ingest(user, ingest_id)
