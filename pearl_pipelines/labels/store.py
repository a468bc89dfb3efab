"""Label store: projects, their class schemas, AOIs and labels in SQL (SQLite WAL by default, PostgreSQL by URL).

Geometries are stored as GeoJSON in EPSG:4326 plus a bounding box, so the same tables work on SQLite
and PostgreSQL without spatial extensions; spatial queries needed here are bbox filters.
Labels are soft-deleted (undo restores them) and ids only grow, so `max_label_id()` is a sensor cursor.
The schema is Alembic's (`migrate.py`, `migrations/`): change a model here only together with a new revision.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import geopandas as gpd
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry
from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, create_engine, event, func, select
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

from pearl_pipelines.classes import ClassDef, ClassSchema
from pearl_pipelines.labels import migrate


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Timestamps read back as aware UTC on every backend (SQLite drops the offset, PostgreSQL uses its TimeZone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None or value.tzinfo is None:
            return value
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    pass


class ProjectRow(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    imagery: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"stac_url":..., "collections": [...], "datetime": ...}
    class_schema: Mapped[dict[str, Any]] = mapped_column(JSON)  # ClassSchema as JSON; classes only grow
    base_model: Mapped[str] = mapped_column(String(300))  # model reference, e.g. "models:/starter-9@starter"
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=_now)


class AoiRow(Base):
    __tablename__ = "aois"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(120))
    geometry: Mapped[dict[str, Any]] = mapped_column(JSON)
    tile_keys: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=_now)


class LabelRow(Base):
    __tablename__ = "labels"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    aoi_id: Mapped[int | None] = mapped_column(ForeignKey("aois.id"), nullable=True)
    class_name: Mapped[str] = mapped_column(String(48))
    geometry: Mapped[dict[str, Any]] = mapped_column(JSON)  # GeoJSON, EPSG:4326
    geom_type: Mapped[str] = mapped_column(String(16))
    minx: Mapped[float] = mapped_column(Float)
    miny: Mapped[float] = mapped_column(Float)
    maxx: Mapped[float] = mapped_column(Float)
    maxy: Mapped[float] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=_now)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)


class LabelEventRow(Base):
    """Append-only log of label adds and deletes, so undo reverts actions in reverse order."""

    __tablename__ = "label_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    label_id: Mapped[int] = mapped_column(ForeignKey("labels.id"))
    action: Mapped[str] = mapped_column(String(8))  # add | delete | undo
    undone: Mapped[bool] = mapped_column(Boolean, default=False)


class LabelStoreError(ValueError):
    """A request the store refuses; the message says what is accepted."""


def _check_length(what: str, value: str, column: Any) -> None:
    """PostgreSQL refuses over-long strings (SQLite stores them): refuse them on both, with a clear message."""
    limit = column.type.length
    if len(value) > limit:
        raise LabelStoreError(f"{what} is {len(value)} characters long; at most {limit} are allowed")


# Control characters (C0, DEL, C1) and lone surrogates. PostgreSQL refuses NUL in text, neither backend can encode
# a lone surrogate as UTF-8, and none of them belongs in a name (a newline or an escape sequence in a name forges
# lines in logs and exports). Free text (a schema's description) may keep tab and line breaks.
_NOT_IN_NAMES = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_NOT_IN_FREE_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def text_problem(value: str, *, multiline: bool = False) -> str | None:
    """What is wrong with `value` as a name (`multiline`: as free text), or None when it is fine. The one rule for
    text from users: the API schemas (review_app/schemas.py) and the stores' writes both apply it."""
    found = (_NOT_IN_FREE_TEXT if multiline else _NOT_IN_NAMES).search(value)
    if found is None:
        return None
    char = found.group()
    kind = "a lone surrogate" if "\ud800" <= char <= "\udfff" else "a control character"
    allowed = (
        "free text may hold tabs and line breaks, no other control character"
        if multiline
        else "names are one line of plain text"
    )
    return f"contains {kind} (U+{ord(char):04X}) at position {found.start()}; {allowed}"


def plain_text(value: str) -> str:
    """`value` without the characters `text_problem` refuses in a name (for names that arrive from elsewhere, e.g.
    an identity provider's display name, and are cleaned rather than refused)."""
    return _NOT_IN_NAMES.sub("", value)


def check_text(what: str, value: str, column: Any = None, *, multiline: bool = False) -> None:
    """Refuse text that breaks the rule of `text_problem`, or that is longer than `column` holds (LabelStoreError:
    HTTP 422), the same way on SQLite and PostgreSQL, before anything is written."""
    problem = text_problem(value, multiline=multiline)
    if problem is not None:
        raise LabelStoreError(f"{what} {problem}")
    if column is not None:
        _check_length(what, value, column)


def _check_json_texts(what: str, value: Any) -> None:
    """Every string (keys too) in a JSON document from a user, as a name."""
    if isinstance(value, str):
        check_text(what, value)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(what, str(key))
            _check_json_texts(what, item)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_json_texts(what, item)


def _check_schema(schema: ClassSchema) -> None:
    check_text("class schema id", schema.id)
    check_text("class schema title", schema.title)
    check_text("class schema description", schema.description, multiline=True)
    for c in schema.classes:
        _check_class(c.name, c.title, c.color)
        for source in c.from_ or ():
            check_text("class source", source)


def _check_class(name: str | None, title: str | None, color: str | None) -> None:
    for what, value in (("class name", name), ("class title", title), ("class colour", color)):
        if value is not None:
            check_text(what, value)


# Ids are INTEGER columns: 32-bit on PostgreSQL (64-bit on SQLite), and ids start at 1 and grow by one. A larger
# (or non-positive) id names nothing on either backend, but PostgreSQL refuses to even compare a column with one
# (DataError: a 500 on SQLite's 'no such row'): lookups answer it as an unknown id before asking the database.
MAX_ID = 2**31 - 1


def known_id(*ids: int | None) -> bool:
    """Whether every id given (None: not given) can name a row on both backends."""
    return all(i is None or 1 <= i <= MAX_ID for i in ids)


SQLITE_BUSY_S = 30.0


def _use_wal(cursor: Any) -> None:
    """Switch the file to WAL once (the mode is stored in the file), so readers (the Dagster sensor) never block
    the review app's writes. Switching needs an exclusive lock, and SQLite answers 'database is locked' at once,
    without its busy timeout, when another connection holds the file's lock: so retry for up to SQLITE_BUSY_S."""
    deadline = time.monotonic() + SQLITE_BUSY_S
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    _use_wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def sqlite_url(home: Path) -> str:
    return f"sqlite:///{Path(home).resolve() / 'labels.db'}"


class LabelStore:
    """All label-store access goes through here; every write is committed before the method returns."""

    def __init__(self, url: str) -> None:
        self.url = url
        sqlite = url.startswith("sqlite")
        # SQLite's 5 s default busy timeout is too short when several processes start on one file under load:
        # wait up to 30 s instead of failing.
        self.engine: Engine = create_engine(url, future=True, connect_args={"timeout": SQLITE_BUSY_S} if sqlite else {})
        if sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        migrate.upgrade(self.engine)  # Alembic, not create_all: the schema can change under existing data
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    # -- projects and classes -------------------------------------------------------------------------
    def create_project(self, name: str, imagery: dict[str, Any], schema: ClassSchema, base_model: str) -> ProjectRow:
        check_text("project name", name, ProjectRow.__table__.c.name)
        check_text("base model", base_model, ProjectRow.__table__.c.base_model)
        _check_json_texts("imagery source", imagery)
        _check_schema(schema)
        taken = LabelStoreError(f"a project named {name!r} already exists; pick another name")
        try:
            with self.session() as s:
                if s.scalar(select(ProjectRow).where(ProjectRow.name == name)):
                    raise taken
                row = ProjectRow(
                    name=name, imagery=imagery, class_schema=schema.model_dump(by_alias=True), base_model=base_model
                )
                s.add(row)
        except IntegrityError as exc:  # another writer took the name between our check and our insert
            raise taken from exc
        return row

    def get_project(self, project_id: int) -> ProjectRow:
        if not known_id(project_id):
            raise KeyError(f"no project with id {project_id}")
        with self.session() as s:
            row = s.get(ProjectRow, project_id)
            if row is None:
                raise KeyError(f"no project with id {project_id}")
            return row

    def list_projects(self) -> list[ProjectRow]:
        with self.session() as s:
            return list(s.scalars(select(ProjectRow).order_by(ProjectRow.id)))

    def schema(self, project_id: int) -> ClassSchema:
        return ClassSchema.model_validate(self.get_project(project_id).class_schema)

    @staticmethod
    def locked_project(s: Session, project_id: int) -> ProjectRow:
        """The project row, write-locked for the rest of the transaction: read-modify-write methods (undo, class
        edits, member roles) of one project run one at a time, so racing callers see each other's changes instead
        of losing them. KeyError for an unknown project.
        """
        if not known_id(project_id):
            raise KeyError(f"no project with id {project_id}")
        connection = s.connection()
        if connection.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN IMMEDIATE")  # the database write lock, taken before reading
            row = s.get(ProjectRow, project_id)
        else:
            row = s.scalar(select(ProjectRow).where(ProjectRow.id == project_id).with_for_update(key_share=True))
        if row is None:
            raise KeyError(f"no project with id {project_id}")
        return row

    def add_class(self, project_id: int, name: str, title: str, color: str) -> ClassSchema:
        _check_class(name, title, color)
        new = ClassDef(name=name, title=title, color=color)
        with self.session() as s:
            row = self.locked_project(s, project_id)
            schema = ClassSchema.model_validate(row.class_schema)
            if name in schema.names:
                raise LabelStoreError(f"class {name!r} already exists in this project")
            schema = schema.model_copy(update={"classes": [*schema.classes, new]})
            row.class_schema = schema.model_dump(by_alias=True)
        return schema

    def update_class(
        self,
        project_id: int,
        name: str,
        *,
        new_name: str | None = None,
        title: str | None = None,
        color: str | None = None,
    ) -> ClassSchema:
        """Recolour or rename a class (its index stays, so models and rasters remain valid); labels follow a rename
        in the same transaction."""
        _check_class(new_name, title, color)
        with self.session() as s:
            row = self.locked_project(s, project_id)
            schema = ClassSchema.model_validate(row.class_schema)
            index = schema.index(name)
            if new_name and new_name != name and new_name in schema.names:
                raise LabelStoreError(f"cannot rename {name!r} to {new_name!r}: that class already exists")
            current = schema.classes[index]
            updated = ClassDef(
                name=new_name or current.name, title=title or current.title, color=color or current.color, **{}
            )
            classes = list(schema.classes)
            classes[index] = updated
            schema = schema.model_copy(update={"classes": classes})
            row.class_schema = schema.model_dump(by_alias=True)
            if new_name and new_name != name:
                for label in s.scalars(
                    select(LabelRow).where(LabelRow.project_id == project_id, LabelRow.class_name == name)
                ):
                    label.class_name = new_name
        return schema

    # -- AOIs -------------------------------------------------------------------------------------------
    def add_aoi(self, project_id: int, name: str, geometry: BaseGeometry, tile_keys: Sequence[str]) -> AoiRow:
        check_text("AOI name", name, AoiRow.__table__.c.name)
        self.get_project(project_id)
        with self.session() as s:
            row = AoiRow(project_id=project_id, name=name, geometry=mapping(geometry), tile_keys=list(tile_keys))
            s.add(row)
        return row

    def list_aois(self, project_id: int) -> list[AoiRow]:
        if not known_id(project_id):
            return []
        with self.session() as s:
            return list(s.scalars(select(AoiRow).where(AoiRow.project_id == project_id).order_by(AoiRow.id)))

    def get_aoi(self, aoi_id: int) -> AoiRow:
        if not known_id(aoi_id):
            raise KeyError(f"no AOI with id {aoi_id}")
        with self.session() as s:
            row = s.get(AoiRow, aoi_id)
            if row is None:
                raise KeyError(f"no AOI with id {aoi_id}")
            return row

    # -- labels -----------------------------------------------------------------------------------------
    def add_labels(
        self, project_id: int, labels: Sequence[tuple[str, BaseGeometry]], aoi_id: int | None = None
    ) -> list[LabelRow]:
        """Add (class_name, lon/lat geometry) labels atomically: all are stored, or none (on any bad label)."""
        schema = self.schema(project_id)
        rows = []
        for class_name, geom in labels:
            check_text("class name", class_name)
            if class_name not in schema.names:
                raise LabelStoreError(f"unknown class {class_name!r}; this project has: {', '.join(schema.names)}")
            if geom.geom_type not in ("Point", "Polygon"):
                raise LabelStoreError(f"labels are Points or Polygons, got {geom.geom_type}")
            if geom.is_empty or not geom.is_valid:
                raise LabelStoreError(f"label geometry is empty or invalid ({geom.wkt[:80]})")
            minx, miny, maxx, maxy = geom.bounds
            rows.append(
                LabelRow(
                    project_id=project_id,
                    aoi_id=aoi_id,
                    class_name=class_name,
                    geometry=mapping(geom),
                    geom_type=geom.geom_type,
                    minx=minx,
                    miny=miny,
                    maxx=maxx,
                    maxy=maxy,
                )
            )
        with self.session() as s:
            if aoi_id is not None:  # the foreign key would refuse it less clearly (SQLite), or not at all (others')
                aoi = s.get(AoiRow, aoi_id) if known_id(aoi_id) else None
                if aoi is None or aoi.project_id != project_id:
                    raise LabelStoreError(f"no AOI {aoi_id} in project {project_id}")
            s.add_all(rows)
            s.flush()
            s.add_all(LabelEventRow(project_id=project_id, label_id=r.id, action="add") for r in rows)
        return rows

    def delete_label(self, project_id: int, label_id: int) -> LabelRow:
        with self.session() as s:
            self.locked_project(s, project_id)
            row = s.get(LabelRow, label_id) if known_id(label_id) else None
            if row is None or row.project_id != project_id or row.deleted_at is not None:
                raise KeyError(f"no label {label_id} in project {project_id}")
            row.deleted_at = _now()
            s.add(LabelEventRow(project_id=project_id, label_id=label_id, action="delete"))
        return row

    def undo(self, project_id: int) -> LabelRow | None:
        """Revert the newest not-yet-undone add or delete of this project; None when there is nothing to undo."""
        with self.session() as s:
            self.locked_project(s, project_id)
            event_row = s.scalar(
                select(LabelEventRow)
                .where(
                    LabelEventRow.project_id == project_id,
                    LabelEventRow.undone.is_(False),
                    LabelEventRow.action != "undo",
                )
                .order_by(LabelEventRow.id.desc())
            )
            if event_row is None:
                return None
            label = s.get(LabelRow, event_row.label_id)
            assert label is not None
            label.deleted_at = _now() if event_row.action == "add" else None
            event_row.undone = True
            # The revert is itself an event (already undone), so the sensor cursor moves on undo too.
            s.add(LabelEventRow(project_id=project_id, label_id=label.id, action="undo", undone=True))
            return label

    def list_labels(
        self, project_id: int, *, aoi_id: int | None = None, include_deleted: bool = False
    ) -> list[LabelRow]:
        if not known_id(project_id, aoi_id):
            return []
        query = select(LabelRow).where(LabelRow.project_id == project_id).order_by(LabelRow.id)
        if aoi_id is not None:
            query = query.where(LabelRow.aoi_id == aoi_id)
        if not include_deleted:
            query = query.where(LabelRow.deleted_at.is_(None))
        with self.session() as s:
            return list(s.scalars(query))

    def max_label_id(self, project_id: int | None = None) -> int:
        """Highest label id ever written (0 if none)."""
        if not known_id(project_id):
            return 0
        query = select(func.max(LabelRow.id))
        if project_id is not None:
            query = query.where(LabelRow.project_id == project_id)
        with self.session() as s:
            return int(s.scalar(query) or 0)

    def max_event_id(self, project_id: int | None = None) -> int:
        """Highest label-event id (adds, deletes, undos all move it): the label-submission sensor's cursor."""
        if not known_id(project_id):
            return 0
        query = select(func.max(LabelEventRow.id))
        if project_id is not None:
            query = query.where(LabelEventRow.project_id == project_id)
        with self.session() as s:
            return int(s.scalar(query) or 0)

    def projects_changed_since(self, event_id: int) -> list[int]:
        """Projects with label events after `event_id` (what a sensor tick must re-materialize)."""
        if event_id >= MAX_ID:
            return []
        event_id = max(event_id, 0)
        query = select(LabelEventRow.project_id).where(LabelEventRow.id > event_id).distinct()
        with self.session() as s:
            return sorted(s.scalars(query))

    def labels_frame(self, project_id: int, *, aoi_id: int | None = None) -> gpd.GeoDataFrame:
        """Live labels as a GeoDataFrame (EPSG:4326) with columns label_id, class_name, geometry."""
        return self.frame_of(self.list_labels(project_id, aoi_id=aoi_id))

    def label_set_digest(self, project_id: int, *, aoi_id: int | None = None) -> str:
        """Stable content hash of the live labels (ids, classes, geometries): names a label-set version."""
        return self.digest_of(self.list_labels(project_id, aoi_id=aoi_id))

    @staticmethod
    def frame_of(rows: Sequence[LabelRow]) -> gpd.GeoDataFrame:
        """Label rows as a GeoDataFrame (EPSG:4326): one snapshot can give both a frame and its digest."""
        return gpd.GeoDataFrame(
            {"label_id": [r.id for r in rows], "class_name": [r.class_name for r in rows]},
            geometry=[shape(r.geometry) for r in rows],
            crs="EPSG:4326",
        )

    @staticmethod
    def digest_of(rows: Sequence[LabelRow]) -> str:
        payload = [(r.id, r.class_name, r.geometry) for r in rows]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
