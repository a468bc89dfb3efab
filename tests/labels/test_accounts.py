"""Users, roles, API tokens and the audit trail on the label store's database: SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest

from pearl_pipelines.labels.accounts import Accounts, ApiTokenRow, Role
from pearl_pipelines.labels.store import LabelStore, LabelStoreError, ProjectRow

KEY = "k" * 40


def test_roles_per_project_and_the_last_owner_stays(store: LabelStore, project: ProjectRow) -> None:
    accounts = Accounts(store, KEY)
    ada, bob = accounts.user("oidc:x#ada", "Ada"), accounts.user("oidc:x#bob", "Bob")
    assert accounts.user("oidc:x#ada", "Ada L.").id == ada.id  # same subject, same user; the name follows
    accounts.set_role(project.id, ada, Role.owner)
    accounts.set_role(project.id, bob, Role.viewer)
    accounts.set_role(project.id, bob, Role.mapper)  # a second grant replaces the first
    assert [(u.name, r) for u, r in accounts.members(project.id)] == [("Ada L.", Role.owner), ("Bob", Role.mapper)]
    assert accounts.role(bob, project.id) == Role.mapper and accounts.readable_projects(bob) == {project.id}
    with pytest.raises(LabelStoreError, match="at least one owner"):
        accounts.remove_member(project.id, ada)
    accounts.remove_member(project.id, bob)
    assert accounts.role(bob, project.id) is None
    with pytest.raises(KeyError, match="no project"):
        accounts.set_role(project.id + 99, bob, Role.viewer)


def test_tokens_are_stored_as_digests_and_expire_or_are_revoked(store: LabelStore) -> None:
    accounts = Accounts(store, KEY)
    ada = accounts.user("oidc:x#ada", "Ada")
    issued = accounts.issue_token(ada, "cli", days=30)
    assert accounts.token_user(issued.token) == ada
    assert accounts.token_user(issued.token + "x") is None
    assert Accounts(store, "another-key-" * 4).token_user(issued.token) is None  # the digest is keyed
    with store.session() as s:
        row = s.get(ApiTokenRow, issued.id)
        assert issued.token not in row.digest and row.last_used_at is not None
        row.expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    assert accounts.token_user(issued.token) is None
    second = accounts.issue_token(ada, "ci", days=1)
    accounts.revoke_token(ada, second.id)
    assert accounts.token_user(second.token) is None
    with pytest.raises(LabelStoreError, match="1 to 366 days"):
        accounts.issue_token(ada, "forever", days=1000)


def test_audit_trail_newest_first_with_subjects(store: LabelStore, project: ProjectRow) -> None:
    accounts = Accounts(store, KEY)
    ada = accounts.user("oidc:x#ada", "Ada")
    accounts.audit(ada, "label.add", project.id, {"label_id": "7"}, 201)
    accounts.audit(ada, "label.undo", project.id, {}, 200)
    trail = accounts.audit_trail(project.id)
    assert [(row.action, subject, row.target) for row, subject in trail] == [
        ("label.undo", "oidc:x#ada", {}),
        ("label.add", "oidc:x#ada", {"label_id": "7"}),
    ]
    assert trail[0][0].at.tzinfo is not None
