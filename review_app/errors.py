"""Domain errors -> clear 4xx JSON; nothing a user sends ever produces a 500 or a stack trace.

| error | status |
|---|---|
| request body/query that does not parse (pydantic) | 422, with one message per field |
| GeometryError, AoiError, LabelStoreError, RetrainError, SuggestionError, ValidationError | 422 |
| KeyError (unknown project, AOI, label, checkpoint, job) | 404 |
| Forbidden (a member without the role the route needs) | 403 |
| Conflict (no model yet, imagery not ready) | 409 |
| TooManyRequests (writes per user, a second waiting retrain/inference) | 429 with Retry-After |
| StacError (the STAC API is unreachable or failed) | 503, naming the service |
| anything else | 500 "internal error", details only in the server log |
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from rasterio.errors import RasterioError
from rio_tiler.errors import RioTilerError
from starlette.exceptions import HTTPException as StarletteHTTPException

from pearl_pipelines.geo.grid import AoiError
from pearl_pipelines.geo.stac import StacError
from pearl_pipelines.labels.store import LabelStoreError
from pearl_pipelines.ml.errors import RetrainError, SuggestionError
from review_app.auth.guard import Forbidden
from review_app.geometry import GeometryError
from review_app.rate_limits import TooManyRequests
from review_app.services.errors import Conflict, QuotaExceeded

log = logging.getLogger(__name__)
TILE_PREFIX = "/tiles/"
NOT_FOUND = {"detail": "Not Found"}
BODY_NOT_PARSED = "There was an error parsing the body"


def _field(loc: tuple | list) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc)


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    if request.url.path.startswith(TILE_PREFIX):
        return JSONResponse(NOT_FOUND, status_code=404)  # tile routes: one uniform 404, whatever was wrong
    errors = [
        {"field": _field(e.get("loc", ())), "message": str(e.get("msg", "")).removeprefix("Value error, ")}
        for e in exc.errors()
    ]
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return JSONResponse({"detail": f"invalid request: {summary}", "errors": errors}, status_code=422)


async def _unprocessable(_: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, ValidationError):
        message = "; ".join(f"{_field(e['loc'])}: {e['msg']}" for e in exc.errors())
    else:
        message = _message(exc)
    return JSONResponse({"detail": message}, status_code=422)


async def _not_found(request: Request, exc: Exception) -> JSONResponse:
    if request.url.path.startswith(TILE_PREFIX):
        return JSONResponse(NOT_FOUND, status_code=404)
    return JSONResponse({"detail": _message(exc)}, status_code=404)


async def _forbidden(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": _message(exc)}, status_code=403)


async def _too_many(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TooManyRequests)
    return JSONResponse({"detail": str(exc)}, status_code=429, headers={"Retry-After": str(exc.retry_after)})


async def _conflict(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": _message(exc)}, status_code=409)


async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if request.url.path.startswith(TILE_PREFIX) and exc.status_code in (400, 404, 422):
        return JSONResponse(NOT_FOUND, status_code=404)
    if exc.status_code == 400 and exc.detail == BODY_NOT_PARSED:  # FastAPI's words for a body that is not UTF-8
        return JSONResponse({"detail": "the request body must be JSON (UTF-8)"}, status_code=422)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    if request.url.path.startswith(TILE_PREFIX):
        # A file that vanished, a tile outside the raster: the same 404 as an unknown id.
        log.debug("tile request %s failed: %r", request.url.path, exc)
        return JSONResponse(NOT_FOUND, status_code=404)
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": "internal error; the server log has the details"}, status_code=500)


async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
    """A service the request needs (the STAC API) is down: 503, naming it; not the user's fault, not a 500."""
    return JSONResponse({"detail": _message(exc)}, status_code=503, headers={"Retry-After": "30"})


async def _raster(request: Request, exc: Exception) -> JSONResponse:
    """Raster read errors: on tile routes the uniform 404 (no file name, no GDAL message ever leaks)."""
    if request.url.path.startswith(TILE_PREFIX):
        log.debug("tile request %s failed: %r", request.url.path, exc)
        return JSONResponse(NOT_FOUND, status_code=404)
    log.error("raster error on %s %s: %r", request.method, request.url.path, exc)
    return JSONResponse({"detail": "a raster could not be read; the server log has the details"}, status_code=500)


def add_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http)  # type: ignore[arg-type]
    for error in (GeometryError, AoiError, LabelStoreError, RetrainError, SuggestionError, ValidationError):
        app.add_exception_handler(error, _unprocessable)
    app.add_exception_handler(KeyError, _not_found)
    app.add_exception_handler(Conflict, _conflict)
    app.add_exception_handler(Forbidden, _forbidden)
    app.add_exception_handler(QuotaExceeded, _forbidden)  # names the quota and its setting
    app.add_exception_handler(TooManyRequests, _too_many)
    app.add_exception_handler(StacError, _unavailable)
    app.add_exception_handler(RasterioError, _raster)
    app.add_exception_handler(RioTilerError, _raster)
    app.add_exception_handler(Exception, _internal)
