"""Read-only share links: the owner's routes (create, list, revoke), the link's routes (its page, its data, its
map and imagery tiles, its COG download), and the public-maps page.

The link's routes have the rule scope "share" (review_app/auth/rules.py): the guard signs nobody in for them and
each route checks the token itself. The token opens that share and nothing else: sent to any other route (as a
Bearer token or a query parameter) it is refused like any unknown caller. An unknown, expired or revoked token and
anything the share does not hold answer the same bare 404.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Annotated, Any

import attr
import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, status
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, Response
from morecantile import Tile
from rasterio.features import geometry_mask
from rasterio.transform import from_bounds
from rasterio.warp import transform_geom
from rio_tiler.errors import TileOutsideBounds
from rio_tiler.models import ImageData
from rio_tiler.types import BBox
from shapely.geometry import box, mapping
from titiler.core.dependencies import BidxParams

from review_app.deps import MAX_ID, ProjectId, UserDep
from review_app.schemas import COMMON_ERRORS, ErrorOut, PublicMapOut, ShareCreate, ShareIssued, ShareOut, ShareView
from review_app.services.shares import OpenShare, ShareNotFound, ShareService
from review_app.tiles import GTiffReader, IdTilerFactory, TrueColorBidx, store_gdal_env, tile_factory

router = APIRouter(prefix="/api/projects/{project_id}/shares", tags=["shares"], responses=COMMON_ERRORS)
link_router = APIRouter(tags=["shares"])  # scope "share" or "public": no sign-in, so none of the guard's errors
ERRORS: dict[int | str, dict] = {404: {"model": ErrorOut}, 409: {"model": ErrorOut}, 422: {"model": ErrorOut}}
NOT_FOUND: dict[int | str, dict] = {404: {"model": ErrorOut, "description": "unknown, expired or revoked link"}}
DIST = Path(__file__).resolve().parents[1] / "static" / "dist"
COG = "image/tiff; application=geotiff; profile=cloud-optimized"


def get_share_service(request: Request) -> ShareService:
    return request.app.state.services.shares  # type: ignore[no-any-return]


SharesDep = Annotated[ShareService, Depends(get_share_service)]
ShareId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="share link id")]


def _not_found() -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, "Not Found")


def _open(shares: ShareService, token: str) -> OpenShare:
    try:
        return shares.open(token)
    except ShareNotFound:
        raise _not_found() from None


# -- the owner's routes -------------------------------------------------------------------------------------------
@router.post("", response_model=ShareIssued, status_code=status.HTTP_201_CREATED, responses=ERRORS)
def create_share(
    shares: SharesDep, project_id: ProjectId, body: ShareCreate, user: UserDep, request: Request
) -> ShareIssued:
    """A read-only link to the current maps of `aoi_ids`, frozen now (a later retrain does not change it). The
    link (`url`, `/share/<token>`) is shown only here, unless the share is `listed` on the public-maps page."""
    issued = shares.create(project_id, user, body)
    request.state.audit_target = {"share_id": str(issued.id)}  # the id names it; the secret is never recorded
    return issued


@router.get("", response_model=list[ShareOut])
def list_shares(shares: SharesDep, project_id: ProjectId) -> list[ShareOut]:
    """The project's share links, live, expired and revoked (never their secrets; `url` for listed ones)."""
    return shares.of_project(project_id)


@router.delete("/{share_id}", response_model=ShareOut, responses=ERRORS)
def revoke_share(shares: SharesDep, project_id: ProjectId, share_id: ShareId) -> ShareOut:
    """Revoke a link: its page, data and tiles answer 404 from now on, and its copy of the maps is deleted."""
    return shares.revoke(project_id, share_id)


# -- the link's routes --------------------------------------------------------------------------------------------
@link_router.get("/api/shares/{token}", response_model=ShareView, responses=NOT_FOUND)
def get_share(shares: SharesDep, token: str) -> ShareView:
    """What the link shows: title, legend, each AOI's frozen map (area per class, tiles, COG download) and the
    imagery's tiles within the AOIs' bounds."""
    try:
        return shares.view(token)
    except ShareNotFound:
        raise _not_found() from None


@link_router.get("/api/shares/{token}/aois/{aoi_id}/classes.tif", response_class=FileResponse, responses=NOT_FOUND)
def download_share_map(shares: SharesDep, token: str, aoi_id: str) -> FileResponse:
    """The shared map of one AOI: a COG (uint8 class index, colour table, nodata 255), as frozen at sharing."""
    share = _open(shares, token)
    try:
        path, entry = share.map_path(aoi_id), share.map(aoi_id)
    except ShareNotFound:
        raise _not_found() from None
    return FileResponse(path, media_type=COG, filename=f"{_slug(share.row.title)}-aoi{entry.aoi_id}-classes.tif")


@link_router.get("/api/shares/{token}/aois/{aoi_id}/areas.csv", response_class=Response, responses=NOT_FOUND)
def download_share_areas(shares: SharesDep, token: str, aoi_id: str) -> Response:
    """Area per class of one shared map (pixels, m^2, ha, percent of the mapped area)."""
    share = _open(shares, token)
    try:
        entry = share.map(aoi_id)
    except ShareNotFound:
        raise _not_found() from None
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(("class_index", "class_name", "title", "pixels", "area_m2", "area_ha", "percent"))
    writer.writerows(
        (a.class_index, a.class_name, a.title, a.pixels, a.area_m2, a.area_ha, a.percent) for a in entry.areas
    )
    name = f"{_slug(share.row.title)}-aoi{entry.aoi_id}-areas.csv"
    return Response(
        out.getvalue(), media_type="text/csv", headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )


@link_router.get("/api/public-maps", response_model=list[PublicMapOut])
def public_maps(shares: SharesDep) -> list[PublicMapOut]:
    """The live share links their owners chose to list, newest first."""
    return shares.public()


def _page(name: str) -> FileResponse | HTMLResponse:
    page = DIST / name
    if not page.is_file():
        return HTMLResponse("<!doctype html><title>PEARL</title><p>The front-end is not built: run make install.</p>")
    return FileResponse(page, headers={"Cache-Control": "no-store"})


@link_router.get("/share/{token}", include_in_schema=False, response_model=None)
def share_page(shares: SharesDep, token: str) -> FileResponse | HTMLResponse:
    """The shared map's page (share.html + share.js); 404 for a link that does not open."""
    _open(shares, token)
    return _page("share.html")


@link_router.get("/maps", include_in_schema=False, response_model=None)
def maps_page() -> FileResponse | HTMLResponse:
    """The public-maps page: the maps their owners listed (GET /api/public-maps)."""
    return _page("maps.html")


def _slug(text: str) -> str:
    cleaned = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
    return "-".join(part for part in cleaned.split("-") if part)[:60] or "map"


# -- the link's tiles ---------------------------------------------------------------------------------------------
class AllowedPath(str):
    """A raster's path that carries the lon/lat boxes a share may show of it (the path dependency's answer is the
    reader's input: this is how the share's bounds reach `BoundedImagery`)."""

    boxes: tuple[tuple[float, float, float, float], ...]

    def __new__(cls, path: str, boxes: list[tuple[float, float, float, float]]) -> AllowedPath:
        made = super().__new__(cls, path)
        made.boxes = tuple(boxes)
        return made


@attr.s
class BoundedImagery(GTiffReader):
    """The project's imagery as a share shows it: tiles that touch one of the shared AOIs' boxes, with every pixel
    outside those boxes transparent; TileJSON bounds are the boxes' union."""

    def _boxes(self) -> tuple[tuple[float, float, float, float], ...]:
        return getattr(self.input, "boxes", ())

    def get_geographic_bounds(self, crs: Any) -> BBox:
        west, south, east, north = zip(*self._boxes(), strict=True) if self._boxes() else ((0,), (0,), (0,), (0,))
        return min(west), min(south), max(east), max(north)

    def tile(self, tile_x: int, tile_y: int, tile_z: int, *args: Any, **kwargs: Any) -> ImageData:
        tile = box(*self.tms.bounds(Tile(tile_x, tile_y, tile_z)))
        boxes = [box(*b) for b in self._boxes()]
        if not any(tile.intersects(b) for b in boxes):
            raise TileOutsideBounds("outside the shared AOIs")
        image = super().tile(tile_x, tile_y, tile_z, *args, **kwargs)
        shapes = [transform_geom("EPSG:4326", image.crs, mapping(b)) for b in boxes]
        if image.bounds is None:  # rio-tiler gives a tile its bounds; without them nothing can be masked
            raise TileOutsideBounds("tile without bounds")
        west, south, east, north = image.bounds
        transform = from_bounds(west, south, east, north, image.width, image.height)
        outside = geometry_mask(shapes, out_shape=(image.height, image.width), transform=transform)
        image.array.mask = np.ma.getmaskarray(image.array) | outside[np.newaxis, :, :]
        return image


def share_imagery_path(request: Request, token: str) -> str:
    """The project's mosaic (local, or read in place in the remote object store) with the shared AOIs' boxes."""
    try:
        source, boxes = get_share_service(request).imagery_source(token)
    except ShareNotFound:
        raise _not_found() from None
    return AllowedPath(source, boxes)


def share_map_path(request: Request, token: str, aoi_id: str) -> str:
    """The frozen map's COG: local, or where another process made the share, its object read in place."""
    try:
        return get_share_service(request).open(token).tile_source(aoi_id)
    except ShareNotFound:
        raise _not_found() from None


def share_colormap(request: Request, token: str) -> dict[int, tuple[int, int, int, int]]:
    try:
        return get_share_service(request).colormap(token)
    except ShareNotFound:
        raise _not_found() from None


@attr.define(kw_only=True)
class ShareTilerFactory(IdTilerFactory):
    """Tiles and TileJSON only: a share's link reveals no raster metadata (`info`) of the project's imagery."""

    def register_routes(self) -> None:
        self.tile()
        self.tilejson()


def mount_share_tiles(app: FastAPI) -> None:
    """/tiles/shares/{token}/imagery/... and /tiles/shares/{token}/maps/{aoi_id}/... (the tile routes' uniform 404,
    review_app/errors.py, answers every refusal)."""
    layers: list[tuple[str, Any, Any, Any, Any]] = [
        ("/tiles/shares/{token}/imagery", share_imagery_path, BoundedImagery, TrueColorBidx, None),
        ("/tiles/shares/{token}/maps/{aoi_id}", share_map_path, GTiffReader, BidxParams, share_colormap),
    ]
    for prefix, path_dependency, reader, bands, colormap in layers:
        factory = tile_factory(
            prefix,
            path_dependency,
            colormap,
            bands,
            reader=reader,
            factory=ShareTilerFactory,
            environment_dependency=store_gdal_env,  # the object store's options where a COG is read there
        )
        app.include_router(factory.router, prefix=prefix, tags=["tiles: shared maps"], responses=NOT_FOUND)
