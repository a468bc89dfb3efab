"""Text written from user input follows one rule on both backends: no control characters (PostgreSQL refuses NUL
in text, neither backend can encode a lone surrogate) and no more characters than the column holds. A refused
value raises LabelStoreError (HTTP 422) and stores nothing; before, PostgreSQL answered 500 where SQLite stored it."""

from __future__ import annotations

from typing import Any

import pytest
from shapely.geometry import Point, box

from pearl_pipelines.classes import ClassDef, ClassSchema, load_schema
from pearl_pipelines.labels.accounts import Accounts, Role
from pearl_pipelines.labels.store import LabelStore, LabelStoreError, ProjectRow, text_problem

KEY = "k" * 40
# NUL, other C0 controls, DEL, a C1 control, a lone surrogate (not encodable as UTF-8).
BAD = ["a\x00b", "\x00", "line\nbreak", "tab\there", "bell\x07", "del\x7f", "c1\x85", "half\ud800"]
BAD_IDS = ["nul", "only-nul", "newline", "tab", "bell", "del", "c1", "surrogate"]


def _snapshot(store: LabelStore, accounts: Accounts, project: ProjectRow) -> Any:
    return (
        [(p.name, p.base_model, p.class_schema) for p in store.list_projects()],
        [a.name for a in store.list_aois(project.id)],
        store.max_label_id(),
        [(u.subject, u.name, r) for u, r in accounts.members(project.id)],
        accounts.find_user("oidc:x#ada"),
    )


@pytest.mark.parametrize("bad", BAD, ids=BAD_IDS)
def test_control_characters_are_refused_in_every_name(store: LabelStore, project: ProjectRow, bad: str) -> None:
    accounts = Accounts(store, KEY)
    owner = accounts.user("oidc:x#owner", "Owner")
    aoi = store.add_aoi(project.id, "harbour", box(4.4, 51.9, 4.5, 52.0), [])
    before = _snapshot(store, accounts, project)
    schema = load_schema("chesapeake4")
    calls = {
        "project name": lambda: store.create_project(bad, {}, schema, "m:/x"),
        "base model": lambda: store.create_project("ok", {}, schema, bad),
        "imagery": lambda: store.create_project("ok", {"collection": bad}, schema, "m:/x"),
        "class title in a schema": lambda: store.create_project(
            "ok", {}, schema.model_copy(update={"classes": [ClassDef(name="a", title=bad, color="#000000")]}), "m:/x"
        ),
        "schema title": lambda: store.create_project("ok", {}, schema.model_copy(update={"title": bad}), "m:/x"),
        "AOI name": lambda: store.add_aoi(project.id, bad, box(4.4, 51.9, 4.5, 52.0), []),
        "class title": lambda: store.add_class(project.id, "solar", bad, "#ff0000"),
        "class rename": lambda: store.update_class(project.id, "water", title=bad),
        "label class": lambda: store.add_labels(project.id, [(bad, Point(4.45, 51.95))], aoi_id=aoi.id),
        "user subject": lambda: accounts.user(bad, "Ada"),
        "user name": lambda: accounts.user("oidc:x#ada", bad),
        "placeholder subject": lambda: accounts.ensure_user(bad, "Ada"),
        "placeholder name": lambda: accounts.ensure_user("oidc:x#ada", bad),
        "token name": lambda: accounts.issue_token(owner, bad, 7),
    }
    for what, call in calls.items():
        with pytest.raises(LabelStoreError, match=r"U\+[0-9A-F]{4}") as refused:
            call()
        assert "control character" in str(refused.value) or "surrogate" in str(refused.value), what
        assert _snapshot(store, accounts, project) == before, what
    assert accounts.tokens(owner) == []


def test_class_names_with_a_trailing_newline_are_refused(store: LabelStore, project: ProjectRow) -> None:
    """ClassDef's snake_case regex ends in `$`, which re.match lets match before a final newline."""
    with pytest.raises(LabelStoreError, match="U\\+000A"):
        store.add_class(project.id, "solar\n", "Solar", "#ff0000")
    with pytest.raises(LabelStoreError, match="U\\+000A"):
        store.update_class(project.id, "water", new_name="lake\n")
    assert store.schema(project.id).names == load_schema("chesapeake9").names


def test_free_text_keeps_line_breaks(store: LabelStore) -> None:
    """A schema's description is free text: tab and line breaks are fine there, NUL is not."""
    schema = load_schema("chesapeake4")
    described = schema.model_copy(update={"description": "first line\n\tsecond line\r\n"})
    row = store.create_project("described", {}, described, "m:/x")
    assert ClassSchema.model_validate(row.class_schema).description == "first line\n\tsecond line\r\n"
    with pytest.raises(LabelStoreError, match="U\\+0000"):
        store.create_project("nul", {}, schema.model_copy(update={"description": "a\x00"}), "m:/x")


def test_plain_unicode_names_are_fine(store: LabelStore, project: ProjectRow) -> None:
    accounts = Accounts(store, KEY)
    for name in ("Zürich — Hafen", "東京湾", "Ünïcödé 🌊", "a b", "x" * 120):
        assert text_problem(name) is None
    assert store.add_aoi(project.id, "東京湾 🌊", box(0, 0, 1, 1), []).name == "東京湾 🌊"
    assert accounts.user("oidc:x#ünï", "Zoë 🌊").name == "Zoë 🌊"


def test_over_long_account_texts_are_refused(store: LabelStore) -> None:
    accounts = Accounts(store, KEY)
    with pytest.raises(LabelStoreError, match="at most 300"):
        accounts.user("s" * 301, "Ada")
    with pytest.raises(LabelStoreError, match="at most 300"):
        accounts.ensure_user("s" * 301, "Ada")
    with pytest.raises(LabelStoreError, match="at most 200"):
        accounts.ensure_user("oidc:x#ada", "n" * 201)
    ada = accounts.user("oidc:x#ada", "Ada")
    with pytest.raises(LabelStoreError, match="at most 80"):
        accounts.issue_token(ada, "t" * 81, 7)
    assert accounts.tokens(ada) == []


@pytest.mark.parametrize("huge", [2**31, 2**63 - 1, 2**63, 2**64 + 5])
def test_ids_beyond_the_integer_columns_are_unknown_ids(store: LabelStore, project: ProjectRow, huge: int) -> None:
    """Ids are INTEGER columns, 32-bit on PostgreSQL: it refused to compare with 2**31 (DataError, a 500 on every
    route with such an id) where SQLite answered 'no such row'. Both now answer KeyError (404)."""
    accounts = Accounts(store, KEY)
    ada = accounts.user("oidc:x#ada", "Ada")
    for call in (
        lambda: store.get_project(huge),
        lambda: store.get_aoi(huge),
        lambda: store.delete_label(project.id, huge),
        lambda: store.delete_label(huge, 1),
        lambda: store.undo(huge),
        lambda: store.add_class(huge, "solar", "Solar", "#ff0000"),
        lambda: accounts.set_role(huge, ada, Role.viewer),
        lambda: accounts.revoke_token(ada, huge),
    ):
        with pytest.raises(KeyError, match="no "):
            call()
    with pytest.raises(LabelStoreError, match="no AOI"):
        store.add_labels(project.id, [("water", Point(4.45, 51.95))], aoi_id=huge)
    assert store.list_labels(project.id, aoi_id=huge) == []
    assert store.list_labels(huge) == [] and store.list_aois(huge) == []
    assert accounts.role(ada, huge) is None and accounts.members(huge) == [] and accounts.audit_trail(huge) == []
