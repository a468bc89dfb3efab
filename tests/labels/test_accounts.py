"""Users, roles, API tokens and the audit trail on the label store's database: SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from pearl_pipelines.classes import load_schema
from pearl_pipelines.cli import main
from pearl_pipelines.labels.accounts import Accounts, ApiTokenRow, Role
from pearl_pipelines.labels.store import LabelStore, LabelStoreError, ProjectRow
from pearl_pipelines.settings import get_settings

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


def test_operators_grant_roles_and_issue_tokens_from_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    store = LabelStore(f"sqlite:///{home / 'labels.db'}")
    project = store.create_project("p", {}, load_schema("chesapeake4"), "m:/x")
    monkeypatch.setenv("PEARL_HOME", str(home))
    get_settings.cache_clear()
    try:
        subject = "oidc:https://id.example#42"
        assert main(["access", "grant", "--project", str(project.id), "--role", "mapper", "--subject", subject]) == 0
        assert main(["access", "token", "--name", "ci", "--days", "3", "--subject", subject]) == 0
        token = capsys.readouterr().out.strip().splitlines()[-1]
        assert main(["access", "grant", "--project", "999", "--role", "owner", "--subject", subject]) == 2
        assert "no project with id 999" in capsys.readouterr().err
        accounts = Accounts(store, get_settings().auth_secret)
        user = accounts.token_user(token)
        assert user is not None and user.subject == subject and accounts.role(user, project.id) == Role.mapper
    finally:
        get_settings.cache_clear()
        store.engine.dispose()


def test_demoting_the_last_owner_is_refused(store: LabelStore, project: ProjectRow) -> None:
    """set_role kept no owner check: PUT members could leave a project without an owner."""
    accounts = Accounts(store, KEY)
    ada, bob = accounts.user("oidc:x#ada", "Ada"), accounts.user("oidc:x#bob", "Bob")
    accounts.set_role(project.id, ada, Role.owner)
    for role in (Role.mapper, Role.viewer):
        with pytest.raises(LabelStoreError, match="at least one owner"):
            accounts.set_role(project.id, ada, role)
    assert accounts.members(project.id) == [(ada, Role.owner)]
    accounts.set_role(project.id, ada, Role.owner)  # granting what it has: fine
    accounts.set_role(project.id, bob, Role.owner)
    accounts.set_role(project.id, ada, Role.viewer)  # another owner stays
    with pytest.raises(LabelStoreError, match="at least one owner"):
        accounts.set_role(project.id, bob, Role.mapper)
    assert accounts.members(project.id) == [(ada, Role.viewer), (bob, Role.owner)]


def test_a_grant_never_renames_a_user_and_sign_in_does(store: LabelStore, project: ProjectRow) -> None:
    """An owner granting a role names the user only until their own sign-in; it never renames an existing user."""
    accounts = Accounts(store, KEY)
    ada = accounts.user("oidc:x#ada", "Ada")
    assert accounts.ensure_user("oidc:x#ada", "Mallory's label for Ada") == ada
    assert accounts.find_user("oidc:x#ada") == ada
    newcomer = accounts.ensure_user("oidc:x#new", "placeholder")
    assert newcomer.name == "placeholder"
    assert accounts.ensure_user("oidc:x#new", "another placeholder") == newcomer
    signed_in = accounts.user("oidc:x#new", "Newcomer")  # the identity provider's name replaces the placeholder
    assert (signed_in.id, signed_in.name) == (newcomer.id, "Newcomer")
