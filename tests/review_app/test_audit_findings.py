"""The outside audit's findings, one test per reproduction, in oidc mode on both label stores (SQLite and the
PostgreSQL server the tests start): the last owner demoted, control characters in names, over-long or odd OIDC
subjects, 64-bit overflows in bodies, an owner renaming users of other projects, member changes the audit trail
did not name, a revoked personal token answered with the JWT parser's words, and a 1 MB Authorization header."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pearl_pipelines.labels.accounts import Accounts, Role
from pearl_pipelines.labels.store import LabelStore
from tests.review_app.conftest import center, new_home, oidc, square, wait_ready
from tests.review_app.idp import Issuer

TOO_BIG = 2**63  # the audit's reproduction: beyond 64 bits (OverflowError on SQLite)


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


class App:
    def __init__(self, client: TestClient, issuer: Issuer) -> None:
        self.client, self.issuer = client, issuer
        services = client.app.state.services  # type: ignore[attr-defined]
        self.accounts: Accounts = services.accounts
        self.store: LabelStore = services.store
        self.backend = self.store.engine.dialect.name

    def headers(self, who: str, **claims: Any) -> dict[str, str]:
        return _bearer(self.issuer.token(who, **claims))

    def send(self, method: str, path: str, body: Any, who: str = "owner") -> Any:
        """`body` as JSON with ASCII escapes, so a lone surrogate travels as the escape a client would send."""
        headers = {**self.headers(who), "content-type": "application/json"}
        return self.client.request(method, path, content=json.dumps(body), headers=headers)

    def snapshot(self) -> Any:
        """Everything a refused request must leave as it was."""
        users = [self.accounts.find_user(self.issuer.subject(n)) for n in ("owner", "mapper", "viewer", "other")]
        return (
            [(p.id, p.name, p.class_schema) for p in self.store.list_projects()],
            [(a.id, a.name) for a in self.store.list_aois(1)],
            [(u.subject, u.name, r) for u, r in self.accounts.members(1)],
            [(t.id, t.name) for u in users if u is not None for t in self.accounts.tokens(u)],
            self.store.max_label_id(),
        )


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def app(
    request: pytest.FixtureRequest, review_assets: Any, tmp_path_factory: pytest.TempPathFactory, issuer: Issuer
) -> Iterator[App]:
    from review_app.main import create_app

    store_url = request.getfixturevalue("postgres_server").new_database() if request.param == "postgresql" else None
    settings = oidc(new_home(tmp_path_factory, review_assets), issuer, label_store_url=store_url)
    with TestClient(create_app(settings)) as client:
        app = App(client, issuer)
        for name, role in (("owner", Role.owner), ("mapper", Role.mapper), ("viewer", Role.viewer)):
            app.accounts.set_role(1, app.accounts.user(issuer.subject(name), name), role)
        created = client.post(
            "/api/projects",
            json={"name": "someone else's", "imagery": {"collection": "demo"}},
            headers=app.headers("other"),
        )
        assert created.status_code == 201, created.text
        wait_ready(client, headers=app.headers("owner"))
        assert app.backend == request.param
        yield app


def _roles(app: App, project_id: int, who: str = "owner") -> dict[str, tuple[str, str]]:
    members = app.client.get(f"/api/projects/{project_id}/members", headers=app.headers(who))
    assert members.status_code == 200, members.text
    return {m["subject"].rsplit("#", 1)[-1]: (m["name"], m["role"]) for m in members.json()}


# -- 5: the last owner ------------------------------------------------------------------------------------------
def test_the_last_owner_cannot_be_demoted(app: App) -> None:
    owner = app.issuer.subject("owner")
    for role in ("mapper", "viewer"):
        refused = app.send("PUT", "/api/projects/1/members", {"subject": owner, "role": role})
        assert refused.status_code == 422, refused.text
        assert "at least one owner" in refused.json()["detail"]
        assert _roles(app, 1)["owner"] == ("owner", "owner")
    assert app.client.get("/api/projects/1/audit", headers=app.headers("owner")).status_code == 200


# -- 6: control characters, over-long subjects ------------------------------------------------------------------
BAD = {"nul": "a\x00b", "newline": "two\nlines", "escape": "\x1b[31mred", "c1": "c1\x85", "surrogate": "half\ud800"}


@pytest.mark.parametrize("bad", BAD.values(), ids=BAD.keys())
def test_control_characters_in_names_are_422_and_nothing_is_stored(app: App, bad: str) -> None:
    lon, lat = center(app.client.get("/api/projects/1", headers=app.headers("owner")).json())
    custom = {
        "id": "custom",
        "classes": [{"name": "water", "title": bad, "color": "#0000ff"}],
    }
    requests = [
        ("POST", "/api/projects", {"name": bad, "imagery": {"collection": "demo"}}),
        (
            "POST",
            "/api/projects",
            {"name": "custom classes", "imagery": {"collection": "demo"}, "class_schema": custom},
        ),
        ("POST", "/api/projects/1/aois", {"name": bad, "geometry": square(lon, lat, 0.0005)}),
        ("PUT", "/api/projects/1/members", {"subject": bad, "role": "viewer"}),
        ("PUT", "/api/projects/1/members", {"subject": app.issuer.subject("newbie"), "name": bad, "role": "viewer"}),
        ("POST", "/api/tokens", {"name": bad}),
        ("POST", "/api/projects/1/classes", {"name": "solar", "title": bad, "color": "#ff0000"}),
        ("POST", "/api/projects/1/classes", {"name": f"solar{bad}", "color": "#ff0000"}),
        ("PATCH", "/api/projects/1/classes/water", {"title": bad}),
        ("POST", "/api/projects/1/checkpoints", {"name": bad}),
    ]
    before = app.snapshot()
    for method, path, body in requests:
        response = app.send(method, path, body)
        where = (app.backend, method, path, body, response.text)
        assert response.status_code == 422, where
        detail = response.json()["detail"]
        # pydantic refuses a lone surrogate in any string itself ("unable to parse raw data as a unicode string")
        assert any(words in detail for words in ("control character", "surrogate", "unicode string")), where
        assert app.snapshot() == before, where


def test_an_over_long_subject_is_401_and_one_at_the_limit_signs_in(app: App) -> None:
    room = 300 - len(app.issuer.subject(""))  # users.subject holds 300 characters, the issuer's prefix included
    at_limit = app.client.get("/api/me", headers=app.headers("s" * room))
    assert at_limit.status_code == 200, at_limit.text
    for sub in ("t" * (room + 1), "u" * 301, "v" * 2000):  # the token (sub and name) stays under 8 KiB
        response = app.client.get("/api/me", headers=app.headers(sub))
        assert response.status_code == 401, (app.backend, len(sub), response.text)
        assert "subject" in response.json()["detail"] and "characters" in response.json()["detail"]
        assert app.accounts.find_user(app.issuer.subject(sub)) is None


@pytest.mark.parametrize("sub", ["ada\x00", "ada\nmallory", "\x7f", "ada\x85", "ada\ud800"])
def test_control_characters_in_a_subject_are_401(app: App, sub: str) -> None:
    response = app.client.get("/api/me", headers=app.headers(sub))
    assert response.status_code == 401, (app.backend, response.text)
    assert "subject" in response.json()["detail"]


def test_a_long_or_odd_display_name_is_cleaned_not_refused(app: App) -> None:
    long = app.client.get("/api/me", headers=app.headers("longname", name="N" * 1000))
    assert long.status_code == 200 and long.json()["name"] == "N" * 200
    odd = app.client.get("/api/me", headers=app.headers("oddname", name="Ada\x00\n Love\x1blace\ud800"))
    assert odd.status_code == 200, odd.text
    assert odd.json()["name"] == "Ada Lovelace"
    blank = app.client.get("/api/me", headers=app.headers("blankname", name="\x00\x01"))
    assert blank.status_code == 200 and blank.json()["name"] == "blankname"  # nothing left: the subject's id


# -- 7: ids beyond 64 bits in bodies -----------------------------------------------------------------------------
@pytest.mark.parametrize("aoi_id", [2**31, TOO_BIG, 2**64 + 5, 0, -1, -(2**63) - 1])
def test_out_of_range_ids_in_bodies_are_422(app: App, aoi_id: int) -> None:
    lon, lat = center(app.client.get("/api/projects/1", headers=app.headers("owner")).json())
    before = app.snapshot()
    label = {"class_name": "water", "geometry": {"type": "Point", "coordinates": [lon, lat]}, "aoi_id": aoi_id}
    for path, body in (("/api/projects/1/labels", label), ("/api/projects/1/retrain", {"aoi_id": aoi_id})):
        response = app.send("POST", path, body, who="mapper")
        assert response.status_code == 422, (app.backend, path, response.text)
        assert "aoi_id" in response.json()["detail"]
    assert app.snapshot() == before


INT4 = 2**31  # ids are INTEGER columns: 32-bit on PostgreSQL, which refused to compare one with 2**31 (a 500)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/api/projects/{INT4}"),
        ("GET", f"/api/projects/{INT4}/members"),
        ("GET", f"/api/projects/1/aois/{INT4}"),
        ("POST", f"/api/projects/1/aois/{INT4}/inference"),
        ("DELETE", f"/api/projects/1/labels/{INT4}"),
        ("GET", f"/api/projects/1/labels?aoi_id={INT4}"),
        ("DELETE", f"/api/projects/1/members/{INT4}"),
        ("DELETE", f"/api/tokens/{INT4}"),
        ("GET", f"/tiles/predictions/1/{INT4}/1/info"),
    ],
)
def test_ids_beyond_the_integer_columns_are_unknown_ids(app: App, method: str, path: str) -> None:
    response = app.client.request(method, path, headers=app.headers("owner"))
    assert response.status_code in (404, 422), (app.backend, response.text)


def test_token_lifetimes_out_of_range_are_422(app: App) -> None:
    for days in (0, -1, 367, TOO_BIG, 2**64):
        response = app.send("POST", "/api/tokens", {"name": "x", "days": days})
        assert response.status_code == 422 and "days" in response.json()["detail"], response.text


# -- 8: an owner renaming users of other projects ----------------------------------------------------------------
def test_an_owner_cannot_rename_another_user(app: App) -> None:
    viewer = app.issuer.subject("viewer")
    granted = app.send(
        "PUT",
        "/api/projects/2/members",
        {"subject": viewer, "name": "Viewer is a fraud", "role": "viewer"},
        who="other",
    )
    assert granted.status_code == 200, granted.text
    assert _roles(app, 2, "other")["viewer"] == ("viewer", "viewer")  # granted, under their own name
    assert _roles(app, 1)["viewer"] == ("viewer", "viewer")  # and unchanged in every other project
    assert app.client.get("/api/me", headers=app.headers("viewer")).json()["name"] == "viewer"
    # A subject not seen yet gets the name as a placeholder, which the user's own sign-in replaces.
    newbie = app.issuer.subject("placeholder-newbie")
    granted = app.send(
        "PUT", "/api/projects/2/members", {"subject": newbie, "name": "Pending", "role": "viewer"}, "other"
    )
    assert _roles(app, 2, "other")["placeholder-newbie"] == ("Pending", "viewer")
    signed_in = app.client.get("/api/me", headers=app.headers("placeholder-newbie", name="Newbie Jones"))
    assert signed_in.json()["name"] == "Newbie Jones"
    assert _roles(app, 2, "other")["placeholder-newbie"] == ("Newbie Jones", "viewer")


# -- 11: the audit trail names who got which role ----------------------------------------------------------------
def test_member_changes_are_audited_with_subject_and_role(app: App) -> None:
    newcomer = app.issuer.subject("audited-newcomer")
    assert app.send("PUT", "/api/projects/1/members", {"subject": newcomer, "role": "mapper"}).status_code == 200
    owner = app.issuer.subject("owner")
    assert app.send("PUT", "/api/projects/1/members", {"subject": owner, "role": "viewer"}).status_code == 422
    assert (
        app.send("PUT", "/api/projects/1/members", {"subject": newcomer, "role": "owner"}, "mapper").status_code == 403
    )
    user = app.accounts.find_user(newcomer)
    assert user is not None
    removed = app.client.delete(f"/api/projects/1/members/{user.id}", headers=app.headers("owner"))
    assert removed.status_code == 200
    trail = app.client.get("/api/projects/1/audit", headers=app.headers("owner")).json()
    rows = [(e["action"], e["status"], e["target"]) for e in trail if e["action"].startswith("member.")]
    assert ("member.set", 200, {"subject": newcomer, "role": "mapper"}) in rows, rows
    assert ("member.set", 422, {"subject": owner, "role": "viewer"}) in rows, rows  # refusals are recorded too
    assert ("member.remove", 200, {"user_id": str(user.id), "subject": newcomer}) in rows, rows


# -- 12: personal tokens, header sizes ---------------------------------------------------------------------------
def test_a_revoked_or_unknown_personal_token_is_401_with_a_clear_message(app: App) -> None:
    made = app.send("POST", "/api/tokens", {"name": "soon revoked", "days": 1}, who="mapper")
    assert made.status_code == 201, made.text
    token = made.json()["token"]
    assert app.client.get("/api/me", headers=_bearer(token)).status_code == 200
    assert app.client.delete(f"/api/tokens/{made.json()['id']}", headers=app.headers("mapper")).status_code == 200
    for refused in (token, "pearl_" + secrets.token_urlsafe(32), "pearl_"):
        response = app.client.get("/api/me", headers=_bearer(refused))
        assert response.status_code == 401, response.text
        assert response.json()["detail"] == "invalid or revoked API token", response.text
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("header", ["authorization", "x-padding", "cookie"])
def test_a_huge_header_is_431_before_any_parsing(app: App, header: str) -> None:
    huge = "Bearer " + "x" * (1 << 20)
    for path in ("/api/me", "/api/projects/1/labels", "/api/auth/config"):
        started = time.monotonic()
        response = app.client.get(path, headers={**app.headers("owner"), header: huge})
        assert response.status_code == 431, (header, path, response.text)
        assert "8192" in response.json()["detail"] and time.monotonic() - started < 2
    assert app.client.get("/api/me", headers={**app.headers("owner"), "x-padding": "x" * 8000}).status_code == 200


def test_a_huge_header_closes_a_websocket_with_4431(app: App) -> None:
    from starlette.websockets import WebSocketDisconnect

    headers = {**app.headers("owner"), "x-padding": "x" * (1 << 16)}
    with (
        pytest.raises(WebSocketDisconnect) as closed,
        app.client.websocket_connect("/api/projects/1/ws", headers=headers),
    ):
        pass
    assert closed.value.code == 4431 and "8192" in closed.value.reason
    with app.client.websocket_connect("/api/projects/1/ws", headers=app.headers("owner")) as ws:
        assert ws.receive_json()["type"] == "hello"
