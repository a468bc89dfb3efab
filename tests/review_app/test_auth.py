"""Accounts and roles: every route x every role x own and other project, against a real OIDC issuer's JWKS
served on loopback (RSA keys made here, tokens signed with PyJWT), personal API tokens, and the audit trail."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from pearl_pipelines.labels.accounts import Accounts, Role
from pearl_pipelines.settings import Settings
from review_app.auth.guard import app_routes
from review_app.auth.identity import AuthConfigError, check_settings
from review_app.auth.rules import rule_for
from tests.review_app.conftest import new_home, oidc, wait_ready
from tests.review_app.idp import AUDIENCE, Issuer

UNKNOWN = {"{aoi_id}": "987654", "{label_id}": "987654", "{checkpoint_id}": "987654", "{version}": "1"}
UNKNOWN |= {"{name}": "no_such_class", "{token_id}": "987654", "{user_id}": "987654", "{job_id}": "nope"}
UNKNOWN |= {"{tileMatrixSetId}": "WebMercatorQuad", "{z}": "15", "{x}": "9000", "{y}": "12000", "{format}": "png"}
UNKNOWN |= {"{api}": "no_such_api", "{collection}": "no_such_collection", "{item_id}": "no_such_item"}  # projects page
UNKNOWN |= {"{patch_id}": "987654"}
UNKNOWN |= {"{token}": "pearl_share_" + "A" * 43, "{share_id}": "987654"}  # share links: unknown, well-formed
UNKNOWN |= {"{other_aoi_id}": "987654", "{other_version}": "1"}  # compare: map B of a change layer
UNKNOWN |= {"{upload_id}": "0" * 32, "{ingest_id}": "0" * 24}  # imagery uploads: well-formed, unknown


@pytest.fixture(scope="module")
def oidc_settings(review_assets: Any, tmp_path_factory: pytest.TempPathFactory, issuer: Issuer) -> Settings:
    base = new_home(tmp_path_factory, review_assets)
    return oidc(base, issuer)


@pytest.fixture(scope="module")
def app_client(oidc_settings: Settings) -> Iterator[TestClient]:
    from review_app.main import create_app

    with TestClient(create_app(oidc_settings)) as client:
        yield client


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def people(app_client: TestClient, issuer: Issuer) -> dict[str, dict[str, str]]:
    """owner/mapper/viewer of the demo project (1), a stranger, and the owner of a second project."""
    accounts: Accounts = app_client.app.state.services.accounts  # type: ignore[attr-defined]
    headers = {name: _bearer(issuer.token(name)) for name in ("owner", "mapper", "viewer", "stranger", "other")}
    for name, role in (("owner", Role.owner), ("mapper", Role.mapper), ("viewer", Role.viewer)):
        accounts.set_role(1, accounts.user(issuer.subject(name), name), role)
    wait_ready(app_client, headers=headers["owner"])
    created = app_client.post(
        "/api/projects",
        json={"name": "someone else's", "imagery": {"collection": "demo"}},
        headers=headers["other"],
    )
    assert created.status_code == 201, created.text
    return headers


@pytest.fixture(scope="module")
def share_token(app_client: TestClient, people: dict[str, dict[str, str]]) -> str:
    """A live share link of project 1 (the owner shares a predicted AOI): a caller holding only it is the
    `share_bearer` / `share_query` identity below."""
    owner = people["owner"]
    project = wait_ready(app_client, headers=owner)
    west, south, east, north = project["imagery"]["bounds"]
    lon, lat = (west + east) / 2 + 0.004, (south + north) / 2 - 0.004
    ring = [[lon, lat], [lon + 0.002, lat], [lon + 0.002, lat + 0.002], [lon, lat + 0.002], [lon, lat]]
    aoi = app_client.post(
        "/api/projects/1/aois",
        json={"name": "shared", "geometry": {"type": "Polygon", "coordinates": [ring]}},
        headers=owner,
    )
    assert aoi.status_code == 201, aoi.text
    job = app_client.post(f"/api/projects/1/aois/{aoi.json()['id']}/inference", headers=owner).json()
    deadline = time.monotonic() + 120
    while app_client.get(f"/api/jobs/{job['id']}", headers=owner).json()["state"] not in ("done", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    made = app_client.post("/api/projects/1/shares", json={"title": "t", "aoi_ids": [aoi.json()["id"]]}, headers=owner)
    assert made.status_code == 201, made.text
    return str(made.json()["token"])


def _fill(path: str, project_id: int, token: str | None = None) -> str:
    path = path.replace("{project_id}", str(project_id))
    if token is not None:
        path = path.replace("{token}", token)
    for placeholder, value in UNKNOWN.items():
        path = path.replace(placeholder, value)
    assert "{" not in path, path
    return path


def _call(client: TestClient, method: str, path: str, headers: dict[str, str]) -> Any:
    if method == "WS":
        try:
            with client.websocket_connect(path, headers=headers) as ws:
                return {"ws": ws.receive_json()["type"]}
        except WebSocketDisconnect as exc:
            return {"ws_closed": exc.code, "reason": exc.reason}
    # An empty JSON body: routes that take one answer 422 once the guard lets the call through (no side effects).
    body = {} if method in ("POST", "PUT", "PATCH") else None
    return client.request(method, path, headers=headers, json=body)


def _guarded_routes(client: TestClient) -> list[tuple[str, str]]:
    routes = [(m, p) for m, p in app_routes(client.app) if rule_for(m, p).scope != "public"]  # type: ignore[union-attr,arg-type]
    assert len(routes) > 40  # REST, tiles, websocket
    return routes


def test_every_route_has_a_rule_and_the_app_refuses_to_start_without_one(app_client: TestClient) -> None:
    from fastapi import FastAPI

    from review_app.auth.guard import check_every_route_has_a_rule

    assert all(rule_for(m, p) is not None for m, p in app_routes(app_client.app))  # type: ignore[arg-type]
    app = FastAPI()

    @app.get("/api/forgotten")
    def forgotten() -> dict[str, str]:
        return {}

    with pytest.raises(RuntimeError, match="GET /api/forgotten"):
        check_every_route_has_a_rule(app)


@pytest.mark.parametrize("who", ["owner", "mapper", "viewer", "stranger", "anonymous", "share_bearer", "share_query"])
def test_every_route_for_every_role_in_own_and_other_project(
    app_client: TestClient, people: dict[str, dict[str, str]], share_token: str, who: str
) -> None:
    """share_*: a caller holding only a share link's token, as a Bearer token or as `?access_token=`: it opens its
    share's routes and every other route refuses it exactly as it refuses a caller without credentials."""
    headers = people.get(who, {})
    if who == "share_bearer":
        headers = _bearer(share_token)
    query = f"?access_token={share_token}" if who == "share_query" else ""
    holder = who.startswith("share_")
    role = {"owner": Role.owner, "mapper": Role.mapper, "viewer": Role.viewer}.get(who)
    other_project = 2
    checked = 0
    for method, template in _guarded_routes(app_client):
        rule = rule_for(method, template)
        assert rule is not None
        for project_id, member in ((1, role is not None), (other_project, False)):
            if "{project_id}" not in template and project_id != 1:
                continue
            path = _fill(template, project_id, share_token if holder else None)
            got = _call(app_client, method, path + query, headers)
            checked += 1
            where = f"{who}: {method} {path}"
            if rule.scope == "share":  # the route checks the link: its own token opens it, any other is a bare 404
                if holder and "{aoi_id}" not in template and "{z}" not in template:
                    assert got.status_code == 200, (where, got.text)
                elif holder:  # its own link: an unknown AOI or a tile outside the shared AOIs is the same bare 404
                    assert got.status_code in (200, 404), (where, got.text)
                else:
                    assert (got.status_code, got.json()) == (404, {"detail": "Not Found"}), (where, got.text)
                continue
            if holder:  # refused exactly as a caller without credentials (an unknown token: 401, never a 404/403)
                if method == "WS":
                    assert got.get("ws_closed") == 4401, where
                else:
                    assert got.status_code == 401 and got.headers["www-authenticate"] == "Bearer", (where, got.text)
                continue
            if method == "WS":
                if who == "anonymous":
                    assert got.get("ws_closed") == 4401, where
                elif not member:  # exactly what an unknown project gets (test_startup: 4404)
                    assert got == {"ws_closed": 4404, "reason": f"no project with id {project_id}"}, where
                else:
                    assert got == {"ws": "hello"}, where
                continue
            if who == "anonymous":
                assert got.status_code == 401 and got.headers["www-authenticate"] == "Bearer", where
                continue
            tile = path.startswith("/tiles/")
            if rule.scope == "project" and not member:
                # Exactly what an unknown project id gets.
                expected = {"detail": "Not Found"} if tile else {"detail": f"no project with id {project_id}"}
                assert got.status_code == 404 and got.json() == expected, (where, got.text)
            elif rule.scope == "project" and role is not None and role < rule.need:
                assert got.status_code == 403, (where, got.text)
                assert f"this needs {rule.need.name}" in got.json()["detail"]
            else:  # let through: whatever the route itself answers, but never the guard's refusals
                assert got.status_code not in (401, 403), (where, got.text)
                body = got.json() if got.headers.get("content-type", "").startswith("application/json") else {}
                detail = body.get("detail", "") if isinstance(body, dict) else ""
                assert not re.fullmatch(r"no project with id \d+", str(detail)), where
    assert checked > 60


def test_unknown_and_foreign_projects_are_indistinguishable(
    app_client: TestClient, people: dict[str, dict[str, str]]
) -> None:
    foreign = app_client.get("/api/projects/2/labels", headers=people["viewer"])
    unknown = app_client.get("/api/projects/4242/labels", headers=people["viewer"])
    assert (foreign.status_code, unknown.status_code) == (404, 404)
    assert foreign.json()["detail"].replace("2", "N") == unknown.json()["detail"].replace("4242", "N")
    listed = app_client.get("/api/projects", headers=people["viewer"]).json()
    assert [p["id"] for p in listed] == [1]
    assert [p["id"] for p in app_client.get("/api/projects", headers=people["other"]).json()] == [2]


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        ({"aud": "someone-else"}, "audience"),
        ({"iss": "http://127.0.0.1:1"}, "issuer"),
        ({"exp": int(time.time()) - 3600}, "expired"),
    ],
)
def test_bad_oidc_tokens_are_401(app_client: TestClient, issuer: Issuer, claims: dict[str, Any], why: str) -> None:
    response = app_client.get("/api/me", headers=_bearer(issuer.token("owner", **claims)))
    assert response.status_code == 401 and why in response.json()["detail"].lower()


def test_unsigned_and_foreign_keys_are_refused(app_client: TestClient, issuer: Issuer) -> None:
    now = int(time.time())
    claims = {"iss": issuer.url, "aud": AUDIENCE, "sub": "owner", "exp": now + 600}
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": issuer.kid})
    assert app_client.get("/api/me", headers=_bearer(unsigned)).status_code == 401
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims, forger, algorithm="RS256", headers={"kid": issuer.kid})
    assert app_client.get("/api/me", headers=_bearer(forged)).status_code == 401
    good = app_client.get("/api/me", headers=_bearer(issuer.token("owner"))).json()
    assert good["subject"] == issuer.subject("owner")


def test_personal_api_tokens_act_as_their_user_until_revoked(
    app_client: TestClient, people: dict[str, dict[str, str]]
) -> None:
    made = app_client.post("/api/tokens", json={"name": "script", "days": 7}, headers=people["mapper"])
    assert made.status_code == 201
    token = made.json()["token"]
    assert token.startswith("pearl_")
    assert app_client.get("/api/me", headers=_bearer(token)).json()["name"] == "mapper"
    assert app_client.get("/api/projects/1/labels", headers=_bearer(token)).status_code == 200
    listed = app_client.get("/api/tokens", headers=people["mapper"]).json()
    assert [t["name"] for t in listed] == ["script"] and "token" not in listed[0]
    accounts: Accounts = app_client.app.state.services.accounts  # type: ignore[attr-defined]
    rows = accounts.tokens(_user(app_client, "mapper"))
    assert rows and all(token.removeprefix("pearl_") not in row.digest for row in rows)  # stored as an HMAC only
    # Another user cannot revoke it; its owner can, and then it is refused.
    assert app_client.delete(f"/api/tokens/{made.json()['id']}", headers=people["viewer"]).status_code == 404
    assert app_client.delete(f"/api/tokens/{made.json()['id']}", headers=people["mapper"]).status_code == 200
    assert app_client.get("/api/me", headers=_bearer(token)).status_code == 401
    assert (
        app_client.post("/api/tokens", json={"name": "forever", "days": 5000}, headers=people["mapper"]).status_code
        == 422
    )


def _user(client: TestClient, name: str) -> Any:
    accounts: Accounts = client.app.state.services.accounts  # type: ignore[attr-defined]
    found = [u for u, _ in accounts.members(1) if u.name == name]
    return found[0]


def test_expired_tokens_are_refused(app_client: TestClient) -> None:
    import datetime as dt

    from pearl_pipelines.labels.accounts import ApiTokenRow

    accounts: Accounts = app_client.app.state.services.accounts  # type: ignore[attr-defined]
    issued = accounts.issue_token(_user(app_client, "viewer"), "old", 1)
    with accounts.store.session() as s:
        s.get(ApiTokenRow, issued.id).expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    assert app_client.get("/api/me", headers=_bearer(issued.token)).status_code == 401


def test_members_are_managed_by_owners_and_a_project_keeps_one(
    app_client: TestClient, people: dict[str, dict[str, str]], issuer: Issuer
) -> None:
    body = {"subject": issuer.subject("newcomer"), "role": "viewer"}
    assert app_client.put("/api/projects/1/members", json=body, headers=people["mapper"]).status_code == 403
    members = app_client.put("/api/projects/1/members", json=body, headers=people["owner"]).json()
    assert {m["subject"]: m["role"] for m in members}[issuer.subject("newcomer")] == "viewer"
    newcomer = _bearer(issuer.token("newcomer"))
    assert app_client.get("/api/projects/1", headers=newcomer).status_code == 200
    assert app_client.post("/api/projects/1/labels/undo", headers=newcomer).status_code == 403
    owner_id = next(m["id"] for m in members if m["name"] == "owner")
    refused = app_client.delete(f"/api/projects/1/members/{owner_id}", headers=people["owner"])
    assert refused.status_code == 422 and "at least one owner" in refused.json()["detail"]
    newcomer_id = next(m["id"] for m in members if m["subject"] == issuer.subject("newcomer"))
    assert app_client.delete(f"/api/projects/1/members/{newcomer_id}", headers=people["owner"]).status_code == 200
    assert app_client.get("/api/projects/1", headers=newcomer).status_code == 404


def test_audit_trail_names_who_did_what(
    app_client: TestClient, people: dict[str, dict[str, str]], issuer: Issuer
) -> None:
    project = wait_ready(app_client, headers=people["owner"])
    west, south, east, north = project["imagery"]["bounds"]
    lon, lat = (west + east) / 2, (south + north) / 2
    ring = [
        [lon - 0.002, lat - 0.002],
        [lon + 0.002, lat - 0.002],
        [lon + 0.002, lat + 0.002],
        [lon - 0.002, lat - 0.002],
    ]
    aoi = app_client.post(
        "/api/projects/1/aois",
        json={"name": "audited", "geometry": {"type": "Polygon", "coordinates": [ring]}},
        headers=people["mapper"],
    )
    assert aoi.status_code == 201, aoi.text
    label = {"class_name": "water", "geometry": {"type": "Point", "coordinates": [lon, lat]}}
    added = app_client.post("/api/projects/1/labels", json=label, headers=people["mapper"])
    assert added.status_code == 201, added.text
    label_id = added.json()["id"]
    assert app_client.delete(f"/api/projects/1/labels/{label_id}", headers=people["owner"]).status_code == 200
    assert app_client.post("/api/projects/1/labels/undo", headers=people["mapper"]).status_code == 200
    assert app_client.get("/api/projects/1/labels/export.geojson", headers=people["viewer"]).status_code == 200
    assert app_client.post("/api/projects/1/labels", json=label, headers=people["viewer"]).status_code == 403
    assert app_client.get("/api/projects/1/audit", headers=people["mapper"]).status_code == 403
    trail = app_client.get("/api/projects/1/audit", headers=people["owner"]).json()
    seen = [(e["subject"].rsplit("#", 1)[-1], e["action"], e["status"]) for e in reversed(trail)]
    for expected in [
        ("mapper", "aoi.create", 201),
        ("mapper", "label.add", 201),
        ("owner", "label.delete", 200),
        ("mapper", "label.undo", 200),
        ("viewer", "export.labels", 200),
        ("viewer", "label.add", 403),
    ]:
        assert expected in seen, (expected, seen)
    delete = next(e for e in trail if e["action"] == "label.delete")
    assert delete["target"] == {"label_id": str(label_id)}


def test_unsafe_settings_refuse_to_start(tmp_path: Any) -> None:
    with pytest.raises(AuthConfigError, match="not a loopback address"):
        check_settings(Settings(home=tmp_path, review_host="0.0.0.0"))
    with pytest.raises(AuthConfigError, match="PEARL_AUTH_SECRET"):
        check_settings(Settings(home=tmp_path, auth_mode="oidc", oidc_issuer="http://x", oidc_audience="a"))
    with pytest.raises(AuthConfigError, match="PEARL_OIDC_ISSUER"):
        check_settings(Settings(home=tmp_path, auth_mode="oidc", auth_secret="s" * 40))
    check_settings(Settings(home=tmp_path))  # local mode on loopback: fine


def test_local_mode_serves_loopback_callers_only(settings: Settings) -> None:
    from review_app.main import create_app

    with TestClient(create_app(settings), client=("192.0.2.10", 5000)) as remote:
        response = remote.get("/api/projects")
        assert response.status_code == 401 and "loopback" in response.json()["detail"]
    with TestClient(create_app(settings), client=("127.0.0.1", 5000)) as local:
        assert local.get("/api/me").json()["subject"] == "local"
