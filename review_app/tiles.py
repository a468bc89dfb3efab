"""Tile routes: titiler factories whose path dependency maps ids to files; nothing else can be read.

Security (titiler's SECURITY.md): no `url=` parameter exists (the path dependency takes ids from
the path and computes the file from them, see layout.ProjectPaths), no `expression` parameter
(indexes only), VRT off (GDAL_SKIP in review_app/__init__.py, and the reader opens GTiff only),
one uniform 404 for an unknown id, a missing file, or a malformed request (errors.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import morecantile
from attrs import define
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from titiler.core.dependencies import BidxParams, DefaultDependency
from titiler.core.factory import TilerFactory

from pearl_pipelines.layout import Layout
from pearl_pipelines.storage import ObjectStore
from review_app.container import ReviewServices
from review_app.gtiff_reader import GTiffReader
from review_app.schemas import COMMON_ERRORS
from review_app.tile_render import render_class_tile

_ID = re.compile(r"^[1-9][0-9]{0,8}$")
MAX_TILESIZE = 1024
# titiler leaves `buffer` and `padding` unbounded: buffer=2000 on a 256 px tile renders 4256x4256 px (12 s here),
# larger values try to allocate gigabytes. A map needs a few pixels of either.
MAX_BUFFER = 64
MAX_PADDING = 64
MAX_ZOOM = 24  # WebMercatorQuad's deepest level (~1 cm per pixel)
TMS = morecantile.TileMatrixSets({"WebMercatorQuad": morecantile.tms.get("WebMercatorQuad")})


def _not_found() -> HTTPException:
    return HTTPException(status_code=404, detail="Not Found")


def _id(value: str) -> int:
    if not _ID.match(value):
        raise _not_found()
    return int(value)


def _file(path: Path) -> str:
    if not path.is_file():
        raise _not_found()
    return str(path)


def _services(request: Request) -> ReviewServices:
    return request.app.state.services  # type: ignore[no-any-return]


IdParam = Annotated[str, PathParam(description="numeric id")]


def imagery_path(request: Request, project_id: IdParam) -> str:
    """Project id -> the project's imagery mosaic COG (shared by the projects of one imagery source): the local file,
    or where this process has no copy, the object another process published, read in place (never downloaded)."""
    states = _services(request).states
    path = states.imagery_path(_id(project_id))
    if path.is_file():
        return str(path)
    return _stored_file(request, states.layout, path)


def _object_store(request: Request) -> ObjectStore | None:
    """The object store the AOI maps are published to (PEARL_STORAGE_URL=s3://...), or None: PEARL_HOME's files.
    Set on the StateStore by the container, so that the jobs that upload a map and these routes share one store."""
    return _services(request).states.objects


def _stored_file(request: Request, layout: Layout, path: Path) -> str:
    """A published COG (an AOI map, a shared imagery mosaic): the local file, or with an S3 store its object, which
    GDAL reads in place by range requests (/vsis3/ under `store_gdal_env`); a missing object is the uniform 404."""
    store = _object_store(request)
    if store is None or not store.remote:
        return _file(path)
    key = layout.key(path)
    if not store.exists(key):
        raise _not_found()
    return store.gdal_path(key)


def store_gdal_env(request: Request) -> dict[str, Any]:
    """The GDAL options of the tile routes' reads: the object store's endpoint and keys (none for local files)."""
    store = _object_store(request)
    return store.gdal_env() if store is not None else {}


def classes_path(request: Request, project_id: IdParam, aoi_id: IdParam, version: IdParam) -> str:
    """(project, AOI, layer version) -> that prediction's class COG."""
    paths = _services(request).states.paths(_id(project_id))
    return _stored_file(request, paths.layout, paths.classes_path(_id(aoi_id), _id(version)))


def confidence_path(request: Request, project_id: IdParam, aoi_id: IdParam, version: IdParam) -> str:
    paths = _services(request).states.paths(_id(project_id))
    return _stored_file(request, paths.layout, paths.confidence_path(_id(aoi_id), _id(version)))


def class_colormap(request: Request, project_id: IdParam) -> dict[int, tuple[int, int, int, int]]:
    """Colours from the project's class schema (so a recolour shows without rewriting rasters)."""
    try:
        return _services(request).classes.colormap(_id(project_id))
    except KeyError:
        raise _not_found() from None


def _uncertainty_colormap() -> dict[int, tuple[int, int, int, int]]:
    """Confidence (max softmax x 255) -> transparent where sure, yellow to magenta where unsure."""
    cmap: dict[int, tuple[int, int, int, int]] = {0: (0, 0, 0, 0)}
    for value in range(1, 256):
        u = 1.0 - value / 255.0
        t = min(1.0, max(0.0, (u - 0.15) / 0.55))
        alpha = round(min(1.0, max(0.0, (u - 0.05) / 0.45)) * 230)
        cmap[value] = (255, round(225 - 185 * t), round(60 + 120 * t), alpha)
    return cmap


UNCERTAINTY = _uncertainty_colormap()


def uncertainty_colormap() -> dict[int, tuple[int, int, int, int]]:
    return UNCERTAINTY


def limit_tilesize(tilesize: Annotated[int | None, Query(gt=0, le=MAX_TILESIZE)] = None) -> None:
    """A 100000-pixel tile is a denial of service, not a map tile."""


def limit_zoom(request: Request) -> None:
    """Zooms past the grid's deepest level are the uniform 404: morecantile would extrapolate levels up to an
    overflow (z=69019540 raised in the route and logged a traceback), and no raster here is that fine."""
    z = str(request.path_params.get("z", "0"))
    if not z.isdigit() or int(z) > MAX_ZOOM:
        raise _not_found()


@dataclass
class BoundedTileParams(DefaultDependency):
    """titiler's TileParams with limits: the rendered tile is at most MAX_TILESIZE + 2 * MAX_BUFFER pixels a side."""

    buffer: Annotated[
        float | None,
        Query(gt=0, le=MAX_BUFFER, description="Pixels added on each side of the tile (a multiple of 0.5)."),
    ] = None
    padding: Annotated[
        int | None,
        Query(gt=0, le=MAX_PADDING, description="Pixels read around the tile edge to reduce resampling artefacts."),
    ] = None


@dataclass
class TrueColorBidx(BidxParams):
    """The imagery layer's bands: true colour (1, 2, 3) unless `bidx` says otherwise. All four RGBN bands plus the
    mask make five, which no PNG or JPEG can hold (a plain `.png` of the imagery was a 404)."""

    def __post_init__(self) -> None:
        if not self.indexes:
            self.indexes = [1, 2, 3]


@define(kw_only=True)
class IdTilerFactory(TilerFactory):
    """TilerFactory with info, tiles and tilejson only (no preview/crop/statistics/viewer surface)."""

    def register_routes(self) -> None:
        self.info()
        self.tile()
        self.tilejson()


def tile_factory(
    prefix: str,
    path_dependency: Any,
    colormap_dependency: Any | None = None,
    layer_dependency: Any = BidxParams,
    *,
    reader: type[GTiffReader] = GTiffReader,
    factory: type[IdTilerFactory] = IdTilerFactory,
    environment_dependency: Any | None = None,
) -> IdTilerFactory:
    """A layer's tile routes under `prefix`, bounded (tile size, zoom, buffer, padding), GeoTIFFs only.
    `environment_dependency`: the GDAL options of its reads (e.g. `store_gdal_env`). A layer with a colormap (a class
    or confidence map: one byte per pixel) renders palette PNGs (tile_render.py)."""
    kwargs: dict[str, Any] = {}
    if colormap_dependency is not None:
        kwargs["colormap_dependency"] = colormap_dependency
        kwargs["render_func"] = render_class_tile
    if environment_dependency is not None:
        kwargs["environment_dependency"] = environment_dependency
    return factory(
        router=APIRouter(dependencies=[Depends(limit_tilesize), Depends(limit_zoom)]),
        router_prefix=prefix,
        reader=reader,
        path_dependency=path_dependency,
        layer_dependency=layer_dependency,
        tile_dependency=BoundedTileParams,
        process_dependency=lambda: None,
        supported_tms=TMS,
        add_preview=False,
        add_part=False,
        add_viewer=False,
        **kwargs,
    )


def mount_tiles(app: FastAPI) -> None:
    layers = [
        ("/tiles/imagery/{project_id}", imagery_path, None, "tiles: imagery (RGBN mosaic; bidx 1,2,3 or 4,1,2)"),
        ("/tiles/predictions/{project_id}/{aoi_id}/{version}", classes_path, class_colormap, "tiles: predictions"),
        (
            "/tiles/confidence/{project_id}/{aoi_id}/{version}",
            confidence_path,
            uncertainty_colormap,
            "tiles: confidence",
        ),
    ]
    for prefix, path_dependency, colormap, tag in layers:
        bands = TrueColorBidx if prefix.startswith("/tiles/imagery/") else BidxParams
        errors: dict[int | str, dict[str, Any]] = {
            code: COMMON_ERRORS[code] for code in (401, 404, 422, 429)
        }  # tiles: a uniform 404 for the rest
        app.include_router(
            tile_factory(prefix, path_dependency, colormap, bands, environment_dependency=store_gdal_env).router,
            prefix=prefix,
            tags=[tag],
            responses=errors,
        )


class TileCacheMiddleware:
    """Cache-Control for tiles: prediction layers are versioned in the URL, so their tiles never change. `private`:
    a tile is only for callers allowed to read its project, so a shared cache (a proxy, a CDN) must not keep it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not path.startswith("/tiles/") or "/tiles/WebMercatorQuad/" not in path:
            await self.app(scope, receive, send)
            return
        value = b"private, max-age=3600" if path.startswith("/tiles/imagery/") else b"private, max-age=86400, immutable"

        async def send_with_cache(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 200:
                message["headers"] = [*message.get("headers", []), (b"cache-control", value)]
            await send(message)

        await self.app(scope, receive, send_with_cache)
