"""Share-link rows on the label store's database (SQLite and PostgreSQL): issue, look up by secret, expire,
revoke, list publicly, the per-project limit, and nothing left behind by a failed copy."""

from __future__ import annotations

import datetime as dt

import pytest

from pearl_pipelines.labels.accounts import Accounts
from pearl_pipelines.labels.shares import SHARE_TOKEN_PREFIX, NewShare, ShareRow, Shares
from pearl_pipelines.labels.store import LabelStore, LabelStoreError, ProjectRow

KEY = "k" * 40


def _new(project: ProjectRow, **more: object) -> NewShare:
    fields: dict[str, object] = {"title": "Survey", "aoi_ids": [1, 2], "days": 7, "listed": False} | more
    return NewShare(project.id, **fields)  # type: ignore[arg-type]


def test_a_share_is_found_by_its_secret_until_it_expires_or_is_revoked(store: LabelStore, project: ProjectRow) -> None:
    shares, ada = Shares(store, KEY, max_days=30), Accounts(store, KEY).user("oidc:x#ada", "Ada")
    with shares.issue(ada, _new(project), max_live=5) as issued:
        issued.row.area_ha = 12.5
    token = issued.token
    assert token.startswith(SHARE_TOKEN_PREFIX) and len(token) > 50
    found = shares.by_token(token)
    assert found is not None and found.id == issued.row.id and found.area_ha == 12.5 and found.aoi_ids == [1, 2]
    with store.session() as s:
        row = s.get(ShareRow, issued.row.id)
        assert (
            token not in row.digest and token[len(SHARE_TOKEN_PREFIX) :] not in row.digest and row.public_token is None
        )
    # Another server key, a near miss, an API token's shape: nothing.
    assert Shares(store, "z" * 40, max_days=30).by_token(token) is None
    assert shares.by_token(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert shares.by_token("pearl_" + token[len(SHARE_TOKEN_PREFIX) :]) is None
    with store.session() as s:
        s.get(ShareRow, issued.row.id).expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    assert shares.by_token(token) is None  # expired
    with store.session() as s:
        s.get(ShareRow, issued.row.id).expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    assert shares.by_token(token) is not None
    revoked = shares.revoke(project.id, issued.row.id)
    assert revoked.revoked_at is not None and shares.by_token(token) is None
    assert shares.revoke(project.id, issued.row.id).revoked_at == revoked.revoked_at  # idempotent
    with pytest.raises(KeyError):
        shares.revoke(project.id + 1, issued.row.id)  # another project's id answers as an unknown one
    with pytest.raises(KeyError):
        shares.revoke(project.id, 2**40)


def test_listed_shares_are_public_and_the_rest_are_not(store: LabelStore, project: ProjectRow) -> None:
    shares, ada = Shares(store, KEY, max_days=30), Accounts(store, KEY).user("oidc:x#ada", "Ada")
    with shares.issue(ada, _new(project, title="public", listed=True), max_live=5) as listed:
        pass
    with shares.issue(ada, _new(project, title="private"), max_live=5):
        pass
    assert [(r.title, r.public_token) for r in shares.listed()] == [("public", listed.token)]
    assert [r.title for r in shares.of_project(project.id)] == ["public", "private"]
    shares.revoke(project.id, listed.row.id)
    assert shares.listed() == []
    with store.session() as s:
        assert s.get(ShareRow, listed.row.id).public_token is None  # unlisted for good


def test_requests_are_checked_and_a_failed_copy_leaves_no_row(store: LabelStore, project: ProjectRow) -> None:
    shares, ada = Shares(store, KEY, max_days=30), Accounts(store, KEY).user("oidc:x#ada", "Ada")
    for bad, words in (
        (_new(project, days=31), "PEARL_SHARE_MAX_DAYS"),
        (_new(project, days=0), "1 to 30 days"),
        (_new(project, title="   "), "title"),
        (_new(project, title="x" * 121), "at most 120"),
        (_new(project, title="a\nb"), "control character"),
        (_new(project, aoi_ids=[]), "at least one AOI"),
    ):
        with pytest.raises(LabelStoreError, match=words), shares.issue(ada, bad, max_live=5):
            pass
    with pytest.raises(RuntimeError), shares.issue(ada, _new(project), max_live=5):
        raise RuntimeError("the copy failed")
    assert shares.of_project(project.id) == []
    with pytest.raises(KeyError, match="no project"), shares.issue(ada, NewShare(99999, "t", [1], 1, False), 5):
        pass
    for _ in range(2):
        with shares.issue(ada, _new(project), max_live=2):
            pass
    with pytest.raises(LabelStoreError, match="PEARL_SHARE_MAX_PER_PROJECT=2"), shares.issue(ada, _new(project), 2):
        pass
