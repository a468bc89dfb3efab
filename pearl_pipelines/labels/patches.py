"""Map patches: a mapper's hand corrections of the map, stored like labels (who, when, remove, undo).

A patch is a lon/lat polygon that either fills the map with one class (`fill`) or paints in the map of another
checkpoint of the project (`checkpoint`). Patches are not labels: they change the maps (and their exports) of every
AOI they touch until removed, and train nothing unless the mapper copies a fill patch into labels.

The class is kept by its index: a class's index never changes (renames keep it; schemas only grow), so a renamed
class still patches the same pixel value. Removal is soft and every add/remove is an event, so undo reverts the
newest one, as for labels.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry
from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, String, select
from sqlalchemy.orm import Mapped, mapped_column

from pearl_pipelines.labels.store import Base, LabelStore, LabelStoreError, UtcDateTime, known_id

PatchKind = Literal["fill", "checkpoint"]
PATCH_KINDS: tuple[PatchKind, ...] = ("fill", "checkpoint")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class PatchRow(Base):
    __tablename__ = "map_patches"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # fill | checkpoint
    class_index: Mapped[int | None] = mapped_column(Integer, nullable=True)  # fill: the class painted
    source_version: Mapped[int | None] = mapped_column(Integer, nullable=True)  # checkpoint: the app's version number
    geometry: Mapped[dict[str, Any]] = mapped_column(JSON)  # GeoJSON Polygon/MultiPolygon, EPSG:4326
    minx: Mapped[float] = mapped_column(Float)
    miny: Mapped[float] = mapped_column(Float)
    maxx: Mapped[float] = mapped_column(Float)
    maxy: Mapped[float] = mapped_column(Float)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=_now)
    removed_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)


class PatchEventRow(Base):
    """Append-only log of patch adds and removals, so undo reverts them in reverse order."""

    __tablename__ = "map_patch_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    patch_id: Mapped[int] = mapped_column(ForeignKey("map_patches.id"))
    action: Mapped[str] = mapped_column(String(8))  # add | remove | undo
    undone: Mapped[bool] = mapped_column(Boolean, default=False)


@dataclass(frozen=True)
class NewPatch:
    kind: PatchKind
    geometry: BaseGeometry  # lon/lat Polygon or MultiPolygon
    class_index: int | None = None
    source_version: int | None = None


class PatchStore:
    """Patches of every project, on the label store's database."""

    def __init__(self, store: LabelStore) -> None:
        self.store = store

    def add(self, project_id: int, patch: NewPatch, user_id: int) -> PatchRow:
        if patch.kind not in PATCH_KINDS:
            raise LabelStoreError(f"a patch is one of {', '.join(PATCH_KINDS)}, not {patch.kind!r}")
        if patch.kind == "fill" and (patch.class_index is None or patch.source_version is not None):
            raise LabelStoreError("a fill patch names a class and no checkpoint")
        if patch.kind == "checkpoint" and (patch.source_version is None or patch.class_index is not None):
            raise LabelStoreError("a checkpoint patch names a checkpoint and no class")
        geom = patch.geometry
        if geom.geom_type not in ("Polygon", "MultiPolygon") or geom.is_empty or not geom.is_valid:
            raise LabelStoreError(f"a patch is a valid, non-empty Polygon or MultiPolygon, not {geom.wkt[:80]}")
        minx, miny, maxx, maxy = geom.bounds
        row = PatchRow(
            project_id=project_id,
            kind=patch.kind,
            class_index=patch.class_index,
            source_version=patch.source_version,
            geometry=mapping(geom),
            minx=minx,
            miny=miny,
            maxx=maxx,
            maxy=maxy,
            user_id=user_id,
        )
        with self.store.session() as s:
            self.store.locked_project(s, project_id)
            s.add(row)
            s.flush()
            s.add(PatchEventRow(project_id=project_id, patch_id=row.id, action="add"))
        return row

    def get(self, project_id: int, patch_id: int) -> PatchRow:
        with self.store.session() as s:
            row = s.get(PatchRow, patch_id) if known_id(patch_id) else None
            if row is None or row.project_id != project_id:
                raise KeyError(f"no patch {patch_id} in project {project_id}")
            return row

    def remove(self, project_id: int, patch_id: int) -> PatchRow:
        with self.store.session() as s:
            self.store.locked_project(s, project_id)
            row = s.get(PatchRow, patch_id) if known_id(patch_id) else None
            if row is None or row.project_id != project_id or row.removed_at is not None:
                raise KeyError(f"no patch {patch_id} in project {project_id}")
            row.removed_at = _now()
            s.add(PatchEventRow(project_id=project_id, patch_id=patch_id, action="remove"))
        return row

    def undo(self, project_id: int) -> PatchRow | None:
        """Revert the newest not-yet-undone add or removal of the project; None when there is nothing to undo."""
        with self.store.session() as s:
            self.store.locked_project(s, project_id)
            event = s.scalar(
                select(PatchEventRow)
                .where(
                    PatchEventRow.project_id == project_id,
                    PatchEventRow.undone.is_(False),
                    PatchEventRow.action != "undo",
                )
                .order_by(PatchEventRow.id.desc())
            )
            if event is None:
                return None
            row = s.get(PatchRow, event.patch_id)
            assert row is not None
            row.removed_at = _now() if event.action == "add" else None
            event.undone = True
            s.add(PatchEventRow(project_id=project_id, patch_id=row.id, action="undo", undone=True))
            return row

    def live(
        self, project_id: int, *, bounds: tuple[float, float, float, float] | None = None, at: dt.datetime | None = None
    ) -> list[PatchRow]:
        """The project's patches in force (oldest first: a newer patch paints over an older one), optionally only
        those whose bounding box meets lon/lat `bounds`; `at`: those in force at that time instead of now."""
        if not known_id(project_id):
            return []
        query = select(PatchRow).where(PatchRow.project_id == project_id).order_by(PatchRow.id)
        # Now: not removed. At `at`: created by then (removed after it, or never: filtered below).
        query = query.where(PatchRow.removed_at.is_(None) if at is None else PatchRow.created_at <= at)
        if bounds is not None:
            west, south, east, north = bounds
            query = query.where(
                PatchRow.maxx >= west, PatchRow.minx <= east, PatchRow.maxy >= south, PatchRow.miny <= north
            )
        with self.store.session() as s:
            rows = list(s.scalars(query))
        if at is not None:  # removed after `at` (or never): in force then
            rows = [r for r in rows if r.removed_at is None or r.removed_at > at]
        return rows

    def every(self, project_id: int) -> list[PatchRow]:
        """All the project's patches, removed ones included (their `removed_at` set), oldest first."""
        if not known_id(project_id):
            return []
        with self.store.session() as s:
            return list(s.scalars(select(PatchRow).where(PatchRow.project_id == project_id).order_by(PatchRow.id)))

    @staticmethod
    def digest_of(rows: list[PatchRow]) -> str:
        """Stable content hash of a set of patches (ids, kinds, classes, sources, geometries)."""
        payload = [(r.id, r.kind, r.class_index, r.source_version, r.geometry) for r in rows]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    @staticmethod
    def geojson_of(rows: list[PatchRow]) -> dict[str, Any]:
        """A set of patches as a GeoJSON FeatureCollection (lon/lat), e.g. for a model version's lineage."""
        return {
            "type": "FeatureCollection",
            "features": [
                {
                    "type": "Feature",
                    "id": r.id,
                    "geometry": r.geometry,
                    "properties": {
                        "kind": r.kind,
                        "class_index": r.class_index,
                        "source_version": r.source_version,
                        "user_id": r.user_id,
                        "created_at": r.created_at.isoformat() if r.created_at else None,
                    },
                }
                for r in rows
            ],
        }
