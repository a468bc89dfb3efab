"""Read-only share links: an owner freezes the current maps of some AOIs and hands out a link to them.

Frozen by copy, not by reference. At creation each AOI's current class COG (with whatever the written map holds:
hand patches, nodata outside the AOI polygon) is copied into the share's folder under the project
(`ProjectPaths.share_dir`), beside a manifest with the legend (the class schema's names, titles and colours at that
moment), the per-class area table and the model and layer versions. A reference would not stay put: a retrain
writes the AOI's next layer version and deletes the one before (review_app/tasks.py), and a class can be renamed or
recoloured; a copy of a uint8 COG of an AOI (at most PEARL_LIVE_AOI_MAX_KM2) is a few MB at most, and sits under
the project folder so the owner's disk quota counts it. Revoking a link deletes its copy.

The imagery under the map is the project's own mosaic, read in place (it does not change once built) through a
tile route of this share that answers only inside the shared AOIs' bounds (`BoundedImagery`, review_app/
routers/shares.py).

A link that is unknown, expired or revoked is the same 404 on every share route, with no hint which.

With a remote object store (PEARL_STORAGE_URL=s3://...) the snapshot also goes to its layout keys before the row is
committed, and revoking deletes them: an app process with a disk of its own copies the manifest when the link is
first opened there, reads the frozen maps' tiles in place (/vsis3/) and downloads a COG only when it is asked for.
"""

from __future__ import annotations

import functools
import logging
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import rasterio
from pydantic import BaseModel
from shapely.geometry import shape

from pearl_pipelines.geo.maps import MapError, class_areas
from pearl_pipelines.labels.accounts import User
from pearl_pipelines.labels.shares import NewShare, ShareRow, Shares
from pearl_pipelines.labels.store import AoiRow, LabelStore
from pearl_pipelines.layout import CLASSES_FILE
from pearl_pipelines.settings import Settings
from review_app.schemas import (
    PublicMapOut,
    ShareArea,
    ShareClass,
    ShareCreate,
    ShareIssued,
    ShareMap,
    ShareOut,
    ShareView,
)
from review_app.services.aois import AoiService
from review_app.services.classes import ClassSchemas
from review_app.services.errors import Conflict
from review_app.services.quotas import Quotas
from review_app.workspace import AoiLayer, StateStore

log = logging.getLogger(__name__)

MANIFEST = "share.json"
TMS = "WebMercatorQuad"


class ShareNotFound(LookupError):
    """Unknown, expired or revoked link, or something it does not hold: always the same 404."""


class SnapshotMap(BaseModel):
    aoi_id: int
    name: str
    geometry: dict
    bounds: tuple[float, float, float, float]
    model_version: int | None
    layer_version: int
    areas: list[ShareArea]

    @property
    def file(self) -> str:
        return f"aoi-{self.aoi_id}.tif"


class Snapshot(BaseModel):
    """The manifest of a share's folder: everything the shared page shows, frozen at creation."""

    legend: list[ShareClass]
    maps: list[SnapshotMap]

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        west, south, east, north = zip(*(m.bounds for m in self.maps), strict=True)
        return min(west), min(south), max(east), max(north)


@dataclass(frozen=True)
class OpenShare:
    """A live share, as its link opens it. `states`: where a snapshot another app process made is read from (its
    remote object store), when this disk has no copy of a map."""

    row: ShareRow
    folder: Path
    snapshot: Snapshot
    states: StateStore | None = None

    def map(self, aoi_id: str | int) -> SnapshotMap:
        found = next((m for m in self.snapshot.maps if str(m.aoi_id) == str(aoi_id)), None)
        if found is None:
            raise ShareNotFound
        return found

    def map_path(self, aoi_id: str | int) -> Path:
        """The frozen map's COG on this disk: downloaded from the remote store first where another process made the
        share (a few MB)."""
        path = self.folder / self.map(aoi_id).file
        store = self.states.remote if self.states is not None else None
        if not path.is_file() and store is not None and self.states is not None:
            try:
                data = store.get_bytes(self.states.stored_key(path))
            except FileNotFoundError:
                raise ShareNotFound from None
            _write_atomic(path, data)
        if not path.is_file():
            raise ShareNotFound
        return path

    def tile_source(self, aoi_id: str | int) -> str:
        """What the map's tiles read: the local COG, or where this disk has none, its object in the remote store,
        read in place by GDAL (/vsis3/, never downloaded; review_app/tiles.py `store_gdal_env`)."""
        path = self.folder / self.map(aoi_id).file
        store = self.states.remote if self.states is not None else None
        if path.is_file() or store is None or self.states is None:
            if not path.is_file():
                raise ShareNotFound
            return str(path)
        key = self.states.stored_key(path)
        if not store.exists(key):
            raise ShareNotFound
        return store.gdal_path(key)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    tmp.write_bytes(data)
    tmp.replace(path)


def share_url(token: str) -> str:
    return f"/share/{token}"


def _state(row: ShareRow) -> str:
    if row.revoked_at is not None:
        return "revoked"
    return "live" if row.live() else "expired"


def share_out(row: ShareRow) -> ShareOut:
    return ShareOut(
        id=row.id,
        title=row.title,
        aoi_ids=list(row.aoi_ids),
        area_ha=row.area_ha,
        listed=row.listed,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        state=_state(row),  # type: ignore[arg-type]
        url=share_url(row.public_token) if row.public_token and row.live() else None,
    )


def area_table(path: Path, legend: list[ShareClass]) -> list[ShareArea]:
    """Area per class of a class COG, one row per class of the legend; percent of the pixels mapped to one of them
    (nodata, e.g. outside the AOI polygon, is not mapped)."""
    with rasterio.open(path) as src:
        try:
            areas = class_areas(src.read(1), src.transform, src.crs)
        except MapError:
            raise Conflict("areas need a projected CRS; this map is in degrees") from None
    mapped = int(areas.pixels[: len(legend)].sum()) or 1
    return [
        ShareArea(
            class_index=c.index,
            class_name=c.name,
            title=c.title,
            pixels=int(areas.pixels[c.index]),
            area_m2=round(areas.m2(c.index), 2),
            area_ha=round(areas.hectares(c.index), 4),
            percent=round(100 * int(areas.pixels[c.index]) / mapped, 3),
        )
        for c in legend
    ]


class ShareService:
    def __init__(
        self,
        *,
        settings: Settings,
        store: LabelStore,
        states: StateStore,
        classes: ClassSchemas,
        aois: AoiService,
        quotas: Quotas,
    ) -> None:
        self.settings, self.store, self.states = settings, store, states
        self.classes, self.aois, self.quotas = classes, aois, quotas
        self.shares = Shares(store, settings.auth_secret, settings.share_max_days)

    # -- the owner's side ---------------------------------------------------------------------------------------
    def create(self, project_id: int, user: User, req: ShareCreate) -> ShareIssued:
        """Copy the AOIs' current maps into a new share; 409 for an AOI without a (whole) map yet."""
        aoi_ids = list(dict.fromkeys(req.aoi_ids))  # in the owner's order, once each
        new = NewShare(project_id, req.title, aoi_ids, req.days, req.listed)
        self.shares.check(new)
        rows = [self.aois.get(project_id, aoi_id) for aoi_id in aoi_ids]  # KeyError: 404 naming the AOI
        state = self.states.get(project_id)
        for row in rows:
            layer = state.aois.get(row.id)
            if layer is None or layer.version == 0:
                raise Conflict(f"AOI {row.id} ({row.name}) has no map yet: predict it first")
            if layer.partial:
                raise Conflict(f"AOI {row.id} ({row.name}) is still being mapped; share it when its map is whole")
        self.quotas.check_growth(project_id)
        schema = self.classes.get(project_id)
        legend = [ShareClass(index=i, name=c.name, title=c.title, color=c.color) for i, c in enumerate(schema.classes)]
        paths = self.states.paths(project_id)
        staging = paths.root / "shares" / f".new-{uuid.uuid4().hex}"
        folder: Path | None = None
        try:
            maps = [self._copy_map(project_id, row, state.aois[row.id], staging, legend) for row in rows]
            (staging / MANIFEST).write_text(Snapshot(legend=legend, maps=maps).model_dump_json(indent=1))
            with self.shares.issue(user, new, self.settings.share_max_per_project) as issued:
                issued.row.area_ha = round(sum(a.area_ha for m in maps for a in m.areas), 4)
                folder = paths.share_dir(issued.row.id)
                shutil.rmtree(folder, ignore_errors=True)  # a leftover of a database that was reset
                staging.replace(folder)
                # With a remote object store the snapshot goes there too (manifest last), before the row is
                # committed: every app process can then open the link, whatever its disk holds.
                self.states.publish_folder(folder, last=(MANIFEST,))
        except BaseException:  # nothing half-written: no row without its folder, no folder without its row
            shutil.rmtree(staging, ignore_errors=True)
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
                self._delete_stored(folder)
            raise
        _manifest.cache_clear()
        out = share_out(issued.row).model_dump(exclude={"url"})
        return ShareIssued(**out, token=issued.token, url=share_url(issued.token))

    def _copy_map(
        self, project_id: int, aoi: AoiRow, layer: AoiLayer, staging: Path, legend: list[ShareClass]
    ) -> SnapshotMap:
        # a map another app process published (remote object store only): its folder here first
        source = self.states.workspace(project_id).local_map_dir(aoi.id, layer.version) / CLASSES_FILE
        geom = shape(aoi.geometry)
        entry = SnapshotMap(
            aoi_id=aoi.id,
            name=aoi.name,
            geometry=aoi.geometry,
            bounds=tuple(round(v, 7) for v in geom.bounds),  # type: ignore[arg-type]
            model_version=layer.model_version,
            layer_version=layer.version,
            areas=[],
        )
        staging.mkdir(parents=True, exist_ok=True)
        target = staging / entry.file
        try:
            shutil.copyfile(source, target)
        except FileNotFoundError:  # a retrain replaced the layer between reading the state and copying
            raise Conflict(f"AOI {aoi.id}'s map changed while it was copied; try again") from None
        entry.areas = area_table(target, legend)
        return entry

    def of_project(self, project_id: int) -> list[ShareOut]:
        return [share_out(r) for r in self.shares.of_project(project_id)]

    def revoke(self, project_id: int, share_id: int) -> ShareOut:
        """Revoke the link (its page and tiles answer 404 from now on) and delete its copy of the maps."""
        row = self.shares.revoke(project_id, share_id)
        folder = self.states.paths(project_id).share_dir(row.id)
        shutil.rmtree(folder, ignore_errors=True)
        self._delete_stored(folder)
        _manifest.cache_clear()
        return share_out(row)

    # -- the link's side -------------------------------------------------------------------------------------------
    def open(self, token: str) -> OpenShare:
        """The live share of `token`; ShareNotFound (the uniform 404) for anything else."""
        row = self.shares.by_token(token)
        if row is None:
            raise ShareNotFound
        folder = self.states.paths(row.project_id).share_dir(row.id)
        manifest = folder / MANIFEST
        if not manifest.is_file():
            self._fetch_manifest(manifest)
        try:
            snapshot = _manifest(manifest)
        except (OSError, ValueError):
            raise ShareNotFound from None
        return OpenShare(row, folder, snapshot, self.states)

    def _fetch_manifest(self, manifest: Path) -> None:
        """A share another app process made (remote object store only): its manifest is copied to this disk (the
        maps stay in the store: their tiles read them in place, a COG download fetches its one file)."""
        store = self.states.remote
        if store is None:
            return
        try:
            data = store.get_bytes(self.states.stored_key(manifest))
        except FileNotFoundError:
            return
        _write_atomic(manifest, data)

    def _delete_stored(self, folder: Path) -> None:
        """The share's objects in the remote store go with its folder (never fails the request: logged)."""
        try:
            self.states.delete_stored(folder)
        except Exception:
            log.exception("deleting the stored copy of share folder %s failed", folder)

    def view(self, token: str) -> ShareView:
        share = self.open(token)
        base = f"/api/shares/{token}/aois"
        maps = [
            ShareMap(
                **m.model_dump(),
                tilejson=f"/tiles/shares/{token}/maps/{m.aoi_id}/{TMS}/tilejson.json?tile_format=png&minzoom=12",
                download=f"{base}/{m.aoi_id}/classes.tif",
                areas_csv=f"{base}/{m.aoi_id}/areas.csv",
            )
            for m in share.snapshot.maps
        ]
        return ShareView(
            title=share.row.title,
            created_at=share.row.created_at,
            expires_at=share.row.expires_at,
            bounds=share.snapshot.bounds,
            legend=share.snapshot.legend,
            maps=maps,
            imagery_tilejson=f"/tiles/shares/{token}/imagery/{TMS}/tilejson.json?minzoom=11&bidx=1&bidx=2&bidx=3",
        )

    def imagery_source(self, token: str) -> tuple[str, list[tuple[float, float, float, float]]]:
        """What the share's imagery tiles read, and the shared AOIs' boxes: the project's mosaic on this disk, or
        where this process has none, the copy another process published, read in place (nothing downloaded)."""
        share = self.open(token)
        path = self.states.imagery_path(share.row.project_id)
        boxes = [m.bounds for m in share.snapshot.maps]
        store = self.states.remote
        if path.is_file() or store is None:
            if not path.is_file():
                raise ShareNotFound
            return str(path), boxes
        key = self.states.stored_key(path)
        if not store.exists(key):
            raise ShareNotFound
        return store.gdal_path(key), boxes

    def colormap(self, token: str) -> dict[int, tuple[int, int, int, int]]:
        """The frozen legend's colours (a later recolour in the project does not change a shared map)."""
        legend = self.open(token).snapshot.legend
        return {c.index: (*_rgb(c.color), 255) for c in legend}

    def public(self) -> list[PublicMapOut]:
        return [
            PublicMapOut(title=r.title, area_ha=r.area_ha, created_at=r.created_at, url=share_url(r.public_token))
            for r in self.shares.listed()
            if r.public_token and self._has_snapshot(r)  # its project not deleted
        ]

    def _has_snapshot(self, row: ShareRow) -> bool:
        """The share's folder is on this disk, or (remote object store) its manifest is in the store."""
        folder = self.states.paths(row.project_id).share_dir(row.id)
        store = self.states.remote
        if folder.is_dir() or store is None:
            return folder.is_dir()
        return store.exists(self.states.stored_key(folder / MANIFEST))


def _rgb(color: str) -> tuple[int, int, int]:
    value = color.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


@functools.lru_cache(maxsize=256)
def _manifest(path: Path) -> Snapshot:
    """A share's manifest (written once, never changed; tile requests read it many times a second)."""
    return Snapshot.model_validate_json(path.read_text())
