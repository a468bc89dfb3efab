"""The front-end's sign-in settings (GET /api/auth/config, public) and the page's Content-Security-Policy in
local and oidc mode, and the test identity provider's PKCE check (tests/review_app/idp.py) over real HTTP."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from pearl_pipelines.settings import Settings
from review_app.security import CONTENT_SECURITY_POLICY
from tests.conftest import free_port
from tests.review_app.idp import AUDIENCE, Issuer, s256

PAGE = "http://127.0.0.1:9/"  # the redirect URI registered for the client in these tests (nothing listens)


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    issuer = Issuer()
    issuer.redirect_uris.add(PAGE)
    yield issuer
    issuer.close()


def _bare(tmp_path: Path, **changes: Any) -> Settings:
    return Settings(home=tmp_path, mlflow_port=free_port(), dagster_port=free_port(), **changes)


def _oidc(tmp_path: Path, issuer: Issuer, **changes: Any) -> Settings:
    oidc = {"auth_mode": "oidc", "oidc_issuer": issuer.url, "oidc_audience": AUDIENCE}
    return _bare(tmp_path, auth_secret=secrets.token_urlsafe(48), **(oidc | changes))


def _directives(response: httpx.Response) -> dict[str, str]:
    policy = response.headers["content-security-policy"]
    return {d.split(" ", 1)[0]: d.split(" ", 1)[1] for d in policy.split("; ")}


def test_local_mode_needs_no_sign_in_and_the_policy_is_unchanged(tmp_path: Path) -> None:
    from review_app.main import create_app

    with TestClient(create_app(_bare(tmp_path))) as client:
        response = client.get("/api/auth/config")
        assert response.status_code == 200
        assert response.json() == {"mode": "local", "issuer": None, "client_id": None, "scopes": None}
        for page in (response, client.get("/"), client.get("/api/me")):
            assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            assert _directives(page)["connect-src"] == "'self' ws: wss:"


def test_oidc_mode_names_the_issuer_and_client_to_anyone(tmp_path: Path, issuer: Issuer) -> None:
    from review_app.main import create_app

    with TestClient(create_app(_oidc(tmp_path, issuer))) as client:
        assert client.get("/api/me").status_code == 401  # signed out...
        response = client.get("/api/auth/config")  # ...but the page may ask how to sign in
        assert response.status_code == 200
        assert response.json() == {
            "mode": "oidc",
            "issuer": issuer.url,
            "client_id": AUDIENCE,  # default: the audience
            "scopes": "openid profile email",
        }
        local = dict(d.split(" ", 1) for d in CONTENT_SECURITY_POLICY.split("; "))
        for page in (response, client.get("/")):
            directives = _directives(page)
            # Only the issuer's origin is added, and only to connect-src.
            assert directives["connect-src"] == f"'self' ws: wss: {issuer.url}"
            assert {k: v for k, v in directives.items() if k != "connect-src"} == {
                k: v for k, v in local.items() if k != "connect-src"
            }
    changed = _oidc(tmp_path, issuer, oidc_client_id="pearl-web", oidc_scopes="openid offline_access")
    with TestClient(create_app(changed)) as client:
        got = client.get("/api/auth/config").json()
        assert (got["client_id"], got["scopes"]) == ("pearl-web", "openid offline_access")


def test_an_issuer_that_is_not_an_http_url_is_refused(tmp_path: Path, issuer: Issuer) -> None:
    from review_app.main import create_app

    with pytest.raises(ValueError, match="PEARL_OIDC_ISSUER must be an http"):
        create_app(_oidc(tmp_path, issuer, oidc_issuer="https://id.example.org; script-src *"))


def _authorize(issuer: Issuer, challenge: str, **extra: str) -> dict[str, str]:
    query = {
        "client_id": AUDIENCE,
        "redirect_uri": PAGE,
        "response_type": "code",
        "scope": "openid",
        "state": "s1",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    } | extra
    response = httpx.get(f"{issuer.url}/authorize", params=query)
    assert response.status_code == 302, response.text
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == PAGE
    return dict(parse_qsl(location.query))


def _exchange(issuer: Issuer, code: str, verifier: str) -> httpx.Response:
    form = {"grant_type": "authorization_code", "client_id": AUDIENCE, "redirect_uri": PAGE, "code": code}
    return httpx.post(f"{issuer.url}/token", data=form | {"code_verifier": verifier})


def test_the_test_provider_checks_pkce(issuer: Issuer) -> None:
    verifier = secrets.token_urlsafe(48)
    answer = _authorize(issuer, s256(verifier))
    assert answer["state"] == "s1" and answer["code"]
    wrong = _exchange(issuer, answer["code"], secrets.token_urlsafe(48))
    assert wrong.status_code == 400 and wrong.json()["error_description"] == "PKCE verification failed"
    assert _exchange(issuer, answer["code"], verifier).status_code == 400  # the code was used up
    answer = _authorize(issuer, s256(verifier))
    tokens = _exchange(issuer, answer["code"], verifier)
    assert tokens.status_code == 200 and tokens.json()["token_type"] == "Bearer"
    assert tokens.headers["access-control-allow-origin"] == "*"
    # Without S256 (plain, or no challenge) no code is issued at all.
    assert _authorize(issuer, verifier[:43], code_challenge_method="plain")["error"] == "invalid_request"
    refused = httpx.get(f"{issuer.url}/authorize", params={"client_id": AUDIENCE, "redirect_uri": "http://evil/"})
    assert refused.status_code == 400 and "location" not in refused.headers
