"""Read-only share links of a project's maps: who made which link, for which AOIs, until when, listed or not.

Rows live on the label store's database beside the accounts (pearl_pipelines/labels/accounts.py). A link's secret
is stored as an HMAC of the secret under the server's key (PEARL_AUTH_SECRET), never in clear, so a copy of the
database opens no share, with one exception: a link its owner chose to *list* on the public-maps page is public by
that choice (the page links it), so its secret is kept to build that link (`public_token`), and only while listed.

The secrets start with `pearl_share_`: the log redaction (review_app/log_redaction.py) hides anything shaped
`pearl_...` from every log line (a share link carries its secret in the URL path), and the authenticator answers
one sent as a Bearer token as it answers any unknown personal token (401), so a share secret signs nobody in.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, Select, String, func, select
from sqlalchemy.orm import Mapped, mapped_column

from pearl_pipelines.labels.accounts import User
from pearl_pipelines.labels.store import Base, LabelStore, LabelStoreError, UtcDateTime, check_text, known_id

SHARE_TOKEN_PREFIX = "pearl_share_"
# Domain separation: a share digest and an API-token digest of the same text under the same key never match.
_DIGEST_CONTEXT = b"pearl share link\x00"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ShareRow(Base):
    __tablename__ = "shares"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    title: Mapped[str] = mapped_column(String(120))
    aoi_ids: Mapped[list[int]] = mapped_column(JSON)
    area_ha: Mapped[float] = mapped_column(Float)  # the shared AOIs' mapped area, for the public list
    listed: Mapped[bool] = mapped_column(Boolean, default=False)
    public_token: Mapped[str | None] = mapped_column(String(80), nullable=True)  # listed shares only (see above)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=_now)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)

    def live(self, now: dt.datetime | None = None) -> bool:
        return self.revoked_at is None and self.expires_at > (now or _now())


@dataclass(frozen=True)
class NewShare:
    """What the owner asked for; the snapshot's area is known once the maps are copied."""

    project_id: int
    title: str
    aoi_ids: list[int]
    days: int
    listed: bool


@dataclass(frozen=True)
class IssuedShare:
    row: ShareRow
    token: str  # shown once (and on the public-maps page when listed)


class Shares:
    """Share rows on the label store's database: issue, look up by secret, list, revoke."""

    def __init__(self, store: LabelStore, key: str, max_days: int) -> None:
        self.store, self.max_days = store, max_days
        self._key = key.encode()

    def _digest(self, secret: str) -> str:
        return hmac.new(self._key, _DIGEST_CONTEXT + secret.encode(), hashlib.sha256).hexdigest()

    def check(self, new: NewShare) -> None:
        """Refuse a request before any file is copied (LabelStoreError: 422, naming what is accepted)."""
        check_text("share title", new.title, ShareRow.__table__.c.title)
        if not new.title.strip():
            raise LabelStoreError("a share needs a title (1 to 120 characters)")
        if not 1 <= new.days <= self.max_days:
            raise LabelStoreError(
                f"a share link lives 1 to {self.max_days} days (PEARL_SHARE_MAX_DAYS), not {new.days}"
            )
        if not new.aoi_ids:
            raise LabelStoreError("a share needs at least one AOI")

    @contextmanager
    def issue(self, user: User, new: NewShare, max_live: int) -> Iterator[IssuedShare]:
        """`with shares.issue(user, new) as issued:` the row exists inside the block (its id names the snapshot's
        folder; changes to `issued.row`, e.g. its `area_ha`, are saved) and is committed only when the block ends
        cleanly: a failed copy leaves no row behind. The project stays write-locked meanwhile, so two owners'
        concurrent links are counted one after the other against the per-project limit."""
        self.check(new)
        secret = SHARE_TOKEN_PREFIX + secrets.token_urlsafe(32)
        expires = _now() + dt.timedelta(days=new.days)
        with self.store.session() as s:
            self.store.locked_project(s, new.project_id)  # KeyError for an unknown project
            live = s.scalar(self._live_count(new.project_id)) or 0
            if live >= max_live:
                raise LabelStoreError(
                    f"project {new.project_id} has {live} live share links, the most allowed "
                    f"(PEARL_SHARE_MAX_PER_PROJECT={max_live}); revoke one first"
                )
            row = ShareRow(
                project_id=new.project_id,
                created_by=user.id,
                digest=self._digest(secret),
                title=new.title.strip(),
                aoi_ids=list(new.aoi_ids),
                area_ha=0.0,
                listed=new.listed,
                public_token=secret if new.listed else None,
                expires_at=expires,
            )
            s.add(row)
            s.flush()
            yield IssuedShare(row, secret)

    @staticmethod
    def _live_count(project_id: int) -> Select[int]:
        return (
            select(func.count())
            .select_from(ShareRow)
            .where(ShareRow.project_id == project_id, ShareRow.revoked_at.is_(None), ShareRow.expires_at > _now())
        )

    def by_token(self, secret: str) -> ShareRow | None:
        """The live share (not revoked, not expired) of this secret; None for anything else, whatever the reason."""
        if not secret.startswith(SHARE_TOKEN_PREFIX) or len(secret) > 80:
            return None
        with self.store.session() as s:
            row = s.scalar(select(ShareRow).where(ShareRow.digest == self._digest(secret)))
            return row if row is not None and row.live() else None

    def of_project(self, project_id: int) -> list[ShareRow]:
        if not known_id(project_id):
            return []
        with self.store.session() as s:
            return list(s.scalars(select(ShareRow).where(ShareRow.project_id == project_id).order_by(ShareRow.id)))

    def listed(self, limit: int = 500) -> list[ShareRow]:
        """Live shares their owners chose to list, newest first."""
        with self.store.session() as s:
            rows = s.scalars(
                select(ShareRow)
                .where(ShareRow.listed.is_(True), ShareRow.revoked_at.is_(None), ShareRow.expires_at > _now())
                .order_by(ShareRow.id.desc())
                .limit(limit)
            )
            return list(rows)

    def revoke(self, project_id: int, share_id: int) -> ShareRow:
        """Revoke a share of this project (KeyError for another project's or an unknown id); idempotent."""
        if not known_id(project_id, share_id):
            raise KeyError(f"no share {share_id} in project {project_id}")
        with self.store.session() as s:
            row = s.get(ShareRow, share_id)
            if row is None or row.project_id != project_id:
                raise KeyError(f"no share {share_id} in project {project_id}")
            row.revoked_at = row.revoked_at or _now()
            row.public_token = None  # unlisted from the public page for good
            return row
