"""Projects as their owners manage them: rename, delete (a tombstone), and the figures of the projects list.

A deleted project keeps its row and everything under it (AOIs, labels, audit trail; the review app moves its files
aside): only a `project_deletions` row marks it. Ids only grow and are never given out again, so nothing of a deleted
project can ever surface in a new one (SQLite would reuse the highest id of a hard-deleted row, and the new
project would then find the old one's files). Its memberships are removed (no one's quota counts it), and its
name gets a tombstone suffix so the name is free for a new project.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import ForeignKey, String, case, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from pearl_pipelines.labels.accounts import AuditRow, MembershipRow, User
from pearl_pipelines.labels.shares import ShareRow
from pearl_pipelines.labels.store import (
    AoiRow,
    Base,
    LabelRow,
    LabelStore,
    LabelStoreError,
    ProjectRow,
    UtcDateTime,
    check_text,
    known_id,
)

NAME_LENGTH = 120  # projects.name is String(120)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ProjectDeletionRow(Base):
    """A deleted project: when, by whom, and the name it had."""

    __tablename__ = "project_deletions"
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), primary_key=True, autoincrement=False)
    deleted_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=_now)
    deleted_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    name: Mapped[str] = mapped_column(String(120))


@dataclass(frozen=True)
class ProjectFigures:
    """What the projects list shows of one project besides its row."""

    labels: int = 0
    aois: int = 0
    last_activity: dt.datetime | None = None


class ProjectAdmin:
    """Rename, delete and the list's figures, on the label store's database."""

    def __init__(self, store: LabelStore) -> None:
        self.store = store

    def deleted_ids(self) -> set[int]:
        with self.store.session() as s:
            return set(s.scalars(select(ProjectDeletionRow.project_id)))

    def is_deleted(self, project_id: int) -> bool:
        if not known_id(project_id):
            return False
        with self.store.session() as s:
            return s.get(ProjectDeletionRow, project_id) is not None

    def rename(self, project_id: int, name: str) -> ProjectRow:
        """Give a live project a new name (unique among all projects); LabelStoreError (422) when it is taken."""
        check_text("project name", name, ProjectRow.__table__.c.name)
        if not name.strip():
            raise LabelStoreError("a project name cannot be empty or blank")
        taken = LabelStoreError(f"a project named {name!r} already exists; pick another name")
        try:
            with self.store.session() as s:
                row = self.store.locked_project(s, project_id)
                if s.get(ProjectDeletionRow, project_id) is not None:
                    raise KeyError(f"no project with id {project_id}")
                other = s.scalar(select(ProjectRow.id).where(ProjectRow.name == name, ProjectRow.id != project_id))
                if other is not None:
                    raise taken
                row.name = name
        except IntegrityError as exc:  # another writer took the name between our check and our write
            raise taken from exc
        return row

    def delete(self, project_id: int, by: User) -> None:
        """Mark the project deleted, free its name, remove its memberships and revoke its share links, in one
        transaction."""
        with self.store.session() as s:
            row = self.store.locked_project(s, project_id)
            if s.get(ProjectDeletionRow, project_id) is not None:
                raise KeyError(f"no project with id {project_id}")
            s.add(ProjectDeletionRow(project_id=project_id, deleted_by=by.id, name=row.name))
            # A name nobody chose: the id keeps it unique, the random part keeps it unguessable for a new project.
            suffix = f" (deleted #{project_id} {secrets.token_hex(4)})"
            row.name = row.name[: NAME_LENGTH - len(suffix)] + suffix
            s.execute(delete(MembershipRow).where(MembershipRow.project_id == project_id))
            live_links = (ShareRow.project_id == project_id) & ShareRow.revoked_at.is_(None)
            s.execute(update(ShareRow).where(live_links).values(revoked_at=_now(), public_token=None))

    def figures(self, project_ids: Collection[int]) -> dict[int, ProjectFigures]:
        """Labels (live), AOIs and the last activity (newest label, AOI or audited action) of each project: one
        query per table, however many projects."""
        ids = [i for i in project_ids if known_id(i)]
        if not ids:
            return {}
        live = func.sum(case((LabelRow.deleted_at.is_(None), 1), else_=0))
        with self.store.session() as s:
            labels = {
                pid: (int(n or 0), at)
                for pid, n, at in s.execute(
                    select(LabelRow.project_id, live, func.max(LabelRow.created_at))
                    .where(LabelRow.project_id.in_(ids))
                    .group_by(LabelRow.project_id)
                )
            }
            aois = {
                pid: (int(n), at)
                for pid, n, at in s.execute(
                    select(AoiRow.project_id, func.count(AoiRow.id), func.max(AoiRow.created_at))
                    .where(AoiRow.project_id.in_(ids))
                    .group_by(AoiRow.project_id)
                )
            }
            audited = dict(
                s.execute(
                    select(AuditRow.project_id, func.max(AuditRow.at))
                    .where(AuditRow.project_id.in_(ids))
                    .group_by(AuditRow.project_id)
                ).all()
            )
        out: dict[int, ProjectFigures] = {}
        for pid in ids:
            n_labels, label_at = labels.get(pid, (0, None))
            n_aois, aoi_at = aois.get(pid, (0, None))
            times = [_utc(t) for t in (label_at, aoi_at, audited.get(pid)) if t is not None]
            out[pid] = ProjectFigures(labels=n_labels, aois=n_aois, last_activity=max(times) if times else None)
        return out


def _utc(value: dt.datetime) -> dt.datetime:
    """Aggregates (max) come back without the column's type on some backends: naive means UTC here."""
    if isinstance(value, str):  # SQLite's max() of a DateTime column
        value = dt.datetime.fromisoformat(value)
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
