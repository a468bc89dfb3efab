"""What the review app used to keep in one process's memory, on the label store's database so any number of app
processes serve the same projects: each project's session document (layer versions, strategy, current model), its
model versions (rows of their own: a project makes hundreds, and the document most requests read stays small) and
the background jobs (retrain, inference, ...) with the process that runs them.

Every read-modify-write takes the project's row lock (`LabelStore.locked_project`: BEGIN IMMEDIATE on SQLite,
SELECT ... FOR UPDATE on PostgreSQL), so two processes never lose each other's change. Jobs carry their process's
heartbeat; a job whose process stopped beating (SIGKILL, a node lost) is failed by whichever process looks next.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, String, Text, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from pearl_pipelines.labels.store import MAX_ID, Base, LabelStore, UtcDateTime, known_id

ACTIVE = ("queued", "running")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ProjectSessionRow(Base):
    """One project's session document (review_app.workspace.ProjectState as JSON) and its revision."""

    __tablename__ = "project_sessions"
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), primary_key=True)
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=_now)


class ModelVersionRow(Base):
    """One model version of a project (review_app.workspace.ModelVersionInfo as JSON), with the fields that lists
    filter on as columns: a project makes one per retrain, and listing or counting them reads no JSON."""

    __tablename__ = "model_versions"
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    name: Mapped[str | None] = mapped_column(Text, nullable=True)  # a checkpoint's name
    mlflow_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    final: Mapped[bool] = mapped_column(Boolean, default=False)  # its metrics are in: it will not change any more


class VersionEntry(NamedTuple):
    """A model version's columns without its document: what lists, counts and the MLflow publisher read."""

    number: int
    name: str | None
    mlflow_version: str | None
    final: bool


class VersionWrite(NamedTuple):
    """A model version to insert or replace: its document and the columns taken from it."""

    number: int
    document: dict[str, Any]
    name: str | None
    mlflow_version: str | None
    final: bool


_ENTRY = (ModelVersionRow.number, ModelVersionRow.name, ModelVersionRow.mlflow_version, ModelVersionRow.final)


class JobRow(Base):
    """A background job of a project; `seq` orders a project's jobs (they run one after another, oldest first)."""

    __tablename__ = "jobs"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(32), unique=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    aoi_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    state: Mapped[str] = mapped_column(String(8), index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    owner: Mapped[str] = mapped_column(String(80))  # the app process that runs it (host:pid:start id)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=_now)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=_now)
    started_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)


class AppState:
    """Session documents and jobs on the label store's database."""

    def __init__(self, store: LabelStore) -> None:
        self.store = store

    # -- session documents ------------------------------------------------------------------------------------
    def document(self, project_id: int) -> dict[str, Any] | None:
        """The project's session document, None before its first save."""
        if not known_id(project_id):
            return None
        with self.store.session() as s:
            return s.scalar(select(ProjectSessionRow.document).where(ProjectSessionRow.project_id == project_id))

    @contextmanager
    def locked_document(self, project_id: int) -> Iterator[_LockedDocument]:
        """The document under the project's row lock; `.save(doc)` and `.put_version(...)` write when the block ends
        without error (one transaction)."""
        with self.store.session() as s:
            self.store.locked_project(s, project_id)
            row = s.get(ProjectSessionRow, project_id)
            locked = _LockedDocument(s, project_id, row.document if row is not None else None)
            yield locked
            if locked.new is not None:
                if row is None:
                    s.add(ProjectSessionRow(project_id=project_id, document=locked.new, revision=1))
                else:
                    row.document, row.revision, row.updated_at = locked.new, row.revision + 1, _now()
            for write in locked.writes.values():
                s.merge(ModelVersionRow(project_id=project_id, **write._asdict()))

    # -- model versions -----------------------------------------------------------------------------------------
    def version(self, project_id: int, number: int) -> dict[str, Any] | None:
        """Model version `number`'s document, None when the project has none of that number."""
        if not known_id(project_id) or not _known_number(number):
            return None
        with self.store.session() as s:
            return _version(s, project_id, number)

    def versions(self, project_id: int, *, named: bool = False) -> list[dict[str, Any]]:
        """The project's model versions' documents (`named`: checkpoints only), oldest first."""
        if not known_id(project_id):
            return []
        query = select(ModelVersionRow.document).where(ModelVersionRow.project_id == project_id)
        if named:
            query = query.where(ModelVersionRow.name.is_not(None))
        with self.store.session() as s:
            return list(s.scalars(query.order_by(ModelVersionRow.number)))

    def version_entries(self, project_id: int) -> list[VersionEntry]:
        """The project's model versions without their documents, oldest first."""
        if not known_id(project_id):
            return []
        with self.store.session() as s:
            return _entries(s, project_id)

    # -- jobs ---------------------------------------------------------------------------------------------------
    def waiting_job(self, s: Session, project_id: int, kind: str) -> JobRow | None:
        """(Under the project's lock.) The project's queued job of `kind`, if any."""
        return s.scalar(
            select(JobRow).where(JobRow.project_id == project_id, JobRow.kind == kind, JobRow.state == "queued")
        )

    def claim(self, job_id: str, project_id: int, stale_before: dt.datetime) -> tuple[str, list[JobRow]]:
        """Mark the job running if no other job of its project runs and it is the oldest waiting one, after failing
        the project's jobs whose process stopped beating. "running": it is now; "wait": not its turn yet; "gone":
        it is no longer waiting (failed meanwhile). With the jobs failed for their stale heartbeat, to announce."""
        with self.store.session() as s:
            self.store.locked_project(s, project_id)
            reaped = self.fail_stale_in(s, stale_before, project_id=project_id)
            query = select(JobRow).where(JobRow.project_id == project_id, JobRow.state.in_(ACTIVE))
            jobs = list(s.scalars(query.order_by(JobRow.seq)))
            mine = next((j for j in jobs if j.id == job_id), None)
            if mine is None or mine.state != "queued":
                return "gone", reaped
            if jobs[0] is not mine:
                return "wait", reaped
            mine.state, mine.started_at, mine.heartbeat_at = "running", _now(), _now()
            return "running", reaped

    def save_job(self, job_id: str, **fields: Any) -> None:
        with self.store.session() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id).values(**fields))

    def job(self, job_id: str) -> JobRow | None:
        with self.store.session() as s:
            return s.scalar(select(JobRow).where(JobRow.id == job_id))

    def active_jobs(self, project_id: int) -> list[JobRow]:
        with self.store.session() as s:
            return list(
                s.scalars(
                    select(JobRow).where(JobRow.project_id == project_id, JobRow.state.in_(ACTIVE)).order_by(JobRow.seq)
                )
            )

    def beat(self, owner: str) -> None:
        """This process is alive: its active jobs' heartbeat is now."""
        with self.store.session() as s:
            s.execute(update(JobRow).where(JobRow.owner == owner, JobRow.state.in_(ACTIVE)).values(heartbeat_at=_now()))

    def fail_stale(self, stale_before: dt.datetime) -> list[JobRow]:
        """Fail every active job whose process has not beaten since `stale_before`; the jobs failed."""
        with self.store.session() as s:
            _write_lock(s)
            return self.fail_stale_in(s, stale_before)

    def fail_owner(self, owner: str, message: str) -> None:
        """Fail the active jobs of one process (it is stopping)."""
        with self.store.session() as s:
            query = update(JobRow).where(JobRow.owner == owner, JobRow.state.in_(ACTIVE))
            s.execute(query.values(state="failed", error=message, finished_at=_now()))

    @staticmethod
    def fail_stale_in(s: Session, stale_before: dt.datetime, *, project_id: int | None = None) -> list[JobRow]:
        """(In the caller's transaction.) Fail the active jobs not beaten since `stale_before`; the jobs failed."""
        query = select(JobRow).where(JobRow.state.in_(ACTIVE), JobRow.heartbeat_at < stale_before)
        if project_id is not None:
            query = query.where(JobRow.project_id == project_id)
        stale = list(s.scalars(query.with_for_update(skip_locked=True)))
        for row in stale:
            row.state, row.finished_at = "failed", _now()
            row.error = f"the app process running this {row.kind} stopped; start it again"
        return stale


def _write_lock(s: Session) -> None:
    """SQLite: take the database's write lock before reading (as `LabelStore.locked_project` does), so two processes
    failing the same stale jobs queue instead of one failing to upgrade its read lock. PostgreSQL locks rows."""
    connection = s.connection()
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _known_number(number: int) -> bool:
    """A version number a row can hold (0 is the base model's)."""
    return 0 <= number <= MAX_ID


def _version(s: Session, project_id: int, number: int) -> dict[str, Any] | None:
    query = select(ModelVersionRow.document).where(
        ModelVersionRow.project_id == project_id, ModelVersionRow.number == number
    )
    return s.scalar(query)


def _entries(s: Session, project_id: int) -> list[VersionEntry]:
    query = select(*_ENTRY).where(ModelVersionRow.project_id == project_id).order_by(ModelVersionRow.number)
    return [VersionEntry(*row) for row in s.execute(query)]


class _LockedDocument:
    """A project's session document and model versions inside the transaction that holds the project's row lock."""

    def __init__(self, session: Session, project_id: int, document: dict[str, Any] | None) -> None:
        self._session, self._project_id = session, project_id
        self.document = document
        self.new: dict[str, Any] | None = None
        self.writes: dict[int, VersionWrite] = {}

    def save(self, document: dict[str, Any]) -> None:
        self.new = document

    def version(self, number: int) -> dict[str, Any] | None:
        if number in self.writes:
            return self.writes[number].document
        return _version(self._session, self._project_id, number) if _known_number(number) else None

    def version_entries(self) -> list[VersionEntry]:
        entries = {e.number: e for e in _entries(self._session, self._project_id)}
        entries.update({n: VersionEntry(n, w.name, w.mlflow_version, w.final) for n, w in self.writes.items()})
        return [entries[n] for n in sorted(entries)]

    def put_version(self, write: VersionWrite) -> None:
        self.writes[write.number] = write
