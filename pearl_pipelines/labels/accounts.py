"""Accounts beside the labels: users, their role in each project, personal API tokens and the audit trail.

Same database as the labels (one transaction can cover a label and who wrote it; one backup). Tokens are
stored as an HMAC of their secret under the server's key, never in clear, so a copy of the database does not
hold a usable token.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, UniqueConstraint, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from pearl_pipelines.labels.store import (
    Base,
    LabelStore,
    LabelStoreError,
    UtcDateTime,
    check_text,
    known_id,
    text_problem,
)

TOKEN_PREFIX = "pearl_"
MAX_TOKEN_DAYS = 366


class Role(enum.IntEnum):
    """Per-project roles; each includes the ones below it."""

    viewer = 1  # read, tiles, exports
    mapper = 2  # labels, classes, AOIs, retrain, checkpoints
    owner = 3  # members, delete


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


MAX_EMAIL = 320


def normal_email(email: str | None) -> str | None:
    """An e-mail as stored and compared (trimmed, lower case), or None for one that cannot be an e-mail here."""
    if not email:
        return None
    email = email.strip().lower()
    if len(email) > MAX_EMAIL or "@" not in email or text_problem(email) is not None or " " in email:
        return None
    return email


class UserRow(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject: Mapped[str] = mapped_column(String(300), unique=True)  # "oidc:<issuer>#<sub>" or "local"
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=_now)
    # The e-mail the identity provider gave at the last sign-in (owners add members by it); None: never said.
    email: Mapped[str | None] = mapped_column(String(320), nullable=True, index=True)


class MembershipRow(Base):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("project_id", "user_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))


class ApiTokenRow(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(80))
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=_now)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)


class AuditRow(Base):
    """Who did what to which project: label adds, deletes and undos, retrains, restores, exports, members."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int | None] = mapped_column(Integer, index=True, nullable=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    action: Mapped[str] = mapped_column(String(40))
    target: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[int] = mapped_column(Integer)
    at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=_now)


@dataclass(frozen=True)
class User:
    id: int
    subject: str
    name: str


@dataclass(frozen=True)
class IssuedToken:
    id: int
    name: str
    token: str  # shown once
    expires_at: dt.datetime


class Accounts:
    """Users, memberships, tokens and audit rows, on the label store's database."""

    def __init__(self, store: LabelStore, token_key: str) -> None:
        self.store = store
        self._key = token_key.encode()

    # -- users and roles --------------------------------------------------------------------------------
    def user(self, subject: str, name: str, email: str | None = None) -> User:
        """The signed-in user with this subject, created on first sight; `name` (from the identity provider, or an
        operator) replaces the stored one, and so does `email` when the provider gives one (an e-mail that is too
        long or not plain text is not stored). Only the authenticated path calls this: a grant uses `ensure_user`."""
        check_text("user subject", subject, UserRow.__table__.c.subject)
        check_text("user name", name, UserRow.__table__.c.name)
        email = normal_email(email) if email else None
        with self.store.session() as s:
            row = s.scalar(select(UserRow).where(UserRow.subject == subject))
            if row is None:
                row = UserRow(subject=subject, name=name, email=email)
                s.add(row)
                s.flush()
            else:
                if row.name != name:
                    row.name = name
                if email and row.email != email:
                    row.email = email
            return User(row.id, row.subject, row.name)

    def users_by_email(self, email: str) -> list[User]:
        """The users whose identity provider last gave them this e-mail (compared case-insensitively)."""
        wanted = normal_email(email)
        if wanted is None:
            return []
        with self.store.session() as s:
            rows = s.scalars(select(UserRow).where(UserRow.email == wanted).order_by(UserRow.id))
            return [User(r.id, r.subject, r.name) for r in rows]

    def emails(self, user_ids: list[int]) -> dict[int, str]:
        """user id -> e-mail, for those that have one (one query)."""
        if not user_ids:
            return {}
        with self.store.session() as s:
            rows = s.execute(select(UserRow.id, UserRow.email).where(UserRow.id.in_(user_ids))).all()
            return {uid: email for uid, email in rows if email}

    def roles(self, user: User) -> dict[int, Role]:
        """project id -> the user's role there, for every project the user has one in (one query)."""
        with self.store.session() as s:
            rows = s.execute(
                select(MembershipRow.project_id, MembershipRow.role).where(MembershipRow.user_id == user.id)
            ).all()
            return {project_id: Role[role] for project_id, role in rows}

    def ensure_user(self, subject: str, placeholder: str) -> User:
        """The user with this subject; one not seen yet is created with `placeholder` as its name until their own
        sign-in replaces it. Never renames an existing user: a user's name is their own (owners grant roles)."""
        check_text("user subject", subject, UserRow.__table__.c.subject)
        check_text("user name", placeholder, UserRow.__table__.c.name)
        with self.store.session() as s:
            row = s.scalar(select(UserRow).where(UserRow.subject == subject))
            if row is None:
                row = UserRow(subject=subject, name=placeholder)
                s.add(row)
                s.flush()
            return User(row.id, row.subject, row.name)

    def find_user(self, subject: str) -> User | None:
        with self.store.session() as s:
            row = s.scalar(select(UserRow).where(UserRow.subject == subject))
            return User(row.id, row.subject, row.name) if row else None

    def role(self, user: User, project_id: int) -> Role | None:
        if not known_id(project_id):
            return None
        with self.store.session() as s:
            role = s.scalar(
                select(MembershipRow.role).where(
                    MembershipRow.project_id == project_id, MembershipRow.user_id == user.id
                )
            )
            return Role[role] if role else None

    def readable_projects(self, user: User) -> set[int]:
        with self.store.session() as s:
            return set(s.scalars(select(MembershipRow.project_id).where(MembershipRow.user_id == user.id)))

    @staticmethod
    def _last_owner_check(members: list[MembershipRow], mine: MembershipRow) -> None:
        owners = [m for m in members if m.role == Role.owner.name]
        if mine.role == Role.owner.name and len(owners) == 1:
            raise LabelStoreError("a project keeps at least one owner; make someone else owner first")

    def _locked_members(self, s: Session, project_id: int) -> list[MembershipRow]:
        """The project's memberships, read after taking the project's write lock (store.locked_project): role
        changes of one project run one at a time, so two owners demoting each other cannot both succeed."""
        self.store.locked_project(s, project_id)  # KeyError for an unknown project
        return list(s.scalars(select(MembershipRow).where(MembershipRow.project_id == project_id)))

    def set_role(self, project_id: int, user: User, role: Role) -> None:
        """Grant `role` (replacing the user's current one); demoting the project's last owner is refused."""
        with self.store.session() as s:
            members = self._locked_members(s, project_id)
            row = next((m for m in members if m.user_id == user.id), None)
            if row is None:
                s.add(MembershipRow(project_id=project_id, user_id=user.id, role=role.name))
            elif row.role != role.name:
                if role is not Role.owner:
                    self._last_owner_check(members, row)
                row.role = role.name

    def remove_member(self, project_id: int, user: User) -> None:
        with self.store.session() as s:
            members = self._locked_members(s, project_id)
            mine = next((m for m in members if m.user_id == user.id), None)
            if mine is None:
                raise KeyError(f"{user.subject} is not a member of project {project_id}")
            self._last_owner_check(members, mine)
            s.delete(mine)

    def members(self, project_id: int) -> list[tuple[User, Role]]:
        if not known_id(project_id):
            return []
        with self.store.session() as s:
            rows = s.execute(
                select(UserRow, MembershipRow.role)
                .join(MembershipRow, MembershipRow.user_id == UserRow.id)
                .where(MembershipRow.project_id == project_id)
                .order_by(UserRow.id)
            ).all()
            return [(User(u.id, u.subject, u.name), Role[r]) for u, r in rows]

    # -- personal API tokens ------------------------------------------------------------------------------
    def _digest(self, secret: str) -> str:
        return hmac.new(self._key, secret.encode(), hashlib.sha256).hexdigest()

    def issue_token(self, user: User, name: str, days: int) -> IssuedToken:
        check_text("token name", name, ApiTokenRow.__table__.c.name)
        if not 1 <= days <= MAX_TOKEN_DAYS:
            raise LabelStoreError(f"a token lives 1 to {MAX_TOKEN_DAYS} days, not {days}")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        expires = _now() + dt.timedelta(days=days)
        with self.store.session() as s:
            row = ApiTokenRow(user_id=user.id, name=name, digest=self._digest(secret), expires_at=expires)
            s.add(row)
            s.flush()
            return IssuedToken(row.id, row.name, secret, expires)

    def token_user(self, secret: str) -> User | None:
        """The owner of a live token (not revoked, not expired); None otherwise."""
        if not secret.startswith(TOKEN_PREFIX):
            return None
        with self.store.session() as s:
            row = s.scalar(select(ApiTokenRow).where(ApiTokenRow.digest == self._digest(secret)))
            if row is None or row.revoked_at is not None or row.expires_at <= _now():
                return None
            row.last_used_at = _now()
            user = s.get(UserRow, row.user_id)
            return User(user.id, user.subject, user.name) if user else None

    def tokens(self, user: User) -> list[ApiTokenRow]:
        with self.store.session() as s:
            return list(s.scalars(select(ApiTokenRow).where(ApiTokenRow.user_id == user.id).order_by(ApiTokenRow.id)))

    def revoke_token(self, user: User, token_id: int) -> ApiTokenRow:
        if not known_id(token_id):
            raise KeyError(f"no token {token_id}")
        with self.store.session() as s:
            row = s.get(ApiTokenRow, token_id)
            if row is None or row.user_id != user.id:
                raise KeyError(f"no token {token_id}")
            row.revoked_at = row.revoked_at or _now()
            return row

    # -- audit trail ----------------------------------------------------------------------------------------
    def audit(self, user: User, action: str, project_id: int | None, target: dict[str, Any], status: int) -> None:
        with self.store.session() as s:
            s.add(AuditRow(user_id=user.id, action=action, project_id=project_id, target=target, status=status))

    def audit_trail(self, project_id: int, limit: int = 200) -> list[tuple[AuditRow, str]]:
        if not known_id(project_id):
            return []
        with self.store.session() as s:
            rows = s.execute(
                select(AuditRow, UserRow.subject)
                .join(UserRow, UserRow.id == AuditRow.user_id)
                .where(AuditRow.project_id == project_id)
                .order_by(AuditRow.id.desc())
                .limit(limit)
            ).all()
            return [(row, subject) for row, subject in rows]
