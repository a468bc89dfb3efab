"""Rename, delete (tombstones) and the projects list's figures, and members' e-mails: SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from shapely.geometry import Point

from pearl_pipelines.classes import load_schema
from pearl_pipelines.labels.accounts import Accounts, Role
from pearl_pipelines.labels.project_admin import ProjectAdmin
from pearl_pipelines.labels.shares import NewShare, Shares
from pearl_pipelines.labels.store import LabelStore, LabelStoreError, ProjectRow
from tests.labels.conftest import square

KEY = "k" * 40


def test_rename_keeps_names_unique(store: LabelStore, project: ProjectRow) -> None:
    admin = ProjectAdmin(store)
    other = store.create_project("other", {"source": "local", "collection": "demo"}, load_schema("chesapeake4"), "m:/x")
    assert admin.rename(project.id, "Rotterdam 2024").name == "Rotterdam 2024"
    assert store.get_project(project.id).name == "Rotterdam 2024"
    with pytest.raises(LabelStoreError, match="already exists"):
        admin.rename(other.id, "Rotterdam 2024")
    with pytest.raises(LabelStoreError, match="blank"):
        admin.rename(other.id, "  ")
    with pytest.raises(LabelStoreError, match="at most 120"):
        admin.rename(other.id, "x" * 121)
    with pytest.raises(KeyError):
        admin.rename(other.id + 99, "nope")


def test_delete_is_a_tombstone_that_frees_the_name_and_the_members(store: LabelStore, project: ProjectRow) -> None:
    admin, accounts = ProjectAdmin(store), Accounts(store, KEY)
    ada = accounts.user("oidc:x#ada", "Ada")
    accounts.set_role(project.id, ada, Role.owner)
    aoi = store.add_aoi(project.id, "a", square(4.4, 51.9), ["15-1-1"])
    store.add_labels(project.id, [("water", Point(4.4005, 51.9005))], aoi_id=aoi.id)
    shares = Shares(store, KEY, max_days=30)
    with shares.issue(ada, NewShare(project.id, "survey", [aoi.id], days=7, listed=True), max_live=5) as issued:
        token = issued.token
    assert shares.by_token(token) is not None and len(shares.listed()) == 1
    admin.delete(project.id, ada)
    assert admin.is_deleted(project.id) and admin.deleted_ids() == {project.id}
    assert shares.by_token(token) is None and shares.listed() == []  # its links die with it
    assert accounts.roles(ada) == {} and accounts.readable_projects(ada) == set()
    assert len(store.list_labels(project.id)) == 1  # nothing erased
    with pytest.raises(KeyError):
        admin.delete(project.id, ada)  # once
    again = store.create_project(
        "rotterdam", {"source": "local", "collection": "demo"}, load_schema("chesapeake9"), "m:/x"
    )
    assert again.id > project.id  # a new id: nothing of the deleted project can surface in it


def test_figures_count_live_labels_aois_and_the_last_activity(store: LabelStore, project: ProjectRow) -> None:
    admin, accounts = ProjectAdmin(store), Accounts(store, KEY)
    ada = accounts.user("oidc:x#ada", "Ada")
    aoi = store.add_aoi(project.id, "a", square(4.4, 51.9), ["15-1-1"])
    rows = store.add_labels(
        project.id, [("water", Point(4.4005, 51.9005)), ("water", Point(4.4006, 51.9006))], aoi_id=aoi.id
    )
    store.delete_label(project.id, rows[0].id)
    empty = store.create_project("empty", {"source": "local", "collection": "demo"}, load_schema("chesapeake9"), "m:/x")
    accounts.audit(ada, "label.add", project.id, {}, 201)
    figures = admin.figures([project.id, empty.id, 10**12])
    assert (figures[project.id].labels, figures[project.id].aois) == (1, 1)
    last = figures[project.id].last_activity
    assert last is not None and last.tzinfo is not None and last >= rows[1].created_at
    assert (figures[empty.id].labels, figures[empty.id].aois, figures[empty.id].last_activity) == (0, 0, None)
    assert 10**12 not in figures


def test_emails_come_from_sign_in_and_find_users(store: LabelStore, project: ProjectRow) -> None:
    accounts = Accounts(store, KEY)
    ada = accounts.user("oidc:x#ada", "Ada", "Ada@Example.org ")
    accounts.user("oidc:x#bob", "Bob", "not an e-mail")  # not stored
    assert accounts.users_by_email("ada@example.org") == [ada]
    assert accounts.users_by_email("bob") == [] and accounts.users_by_email("") == []
    assert accounts.emails([ada.id]) == {ada.id: "ada@example.org"}
    accounts.user("oidc:x#ada", "Ada")  # a sign-in without the claim keeps the e-mail
    assert accounts.emails([ada.id]) == {ada.id: "ada@example.org"}
    accounts.set_role(project.id, ada, Role.mapper)
    assert accounts.roles(ada) == {project.id: Role.mapper}
