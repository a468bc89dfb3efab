"""The page's own OpenID Connect sign-in in a real browser (headless Chromium) against the real app in oidc mode.

The identity provider is tests/review_app/idp.py on loopback: a real authorization server (Authorization Code
with PKCE S256, one public client, refresh tokens, end session) that approves one fixed user at once. uvicorn
runs `review_app.main:app` with PEARL_AUTH_MODE=oidc (tests/review_app/test_browser.py: `running_app`). The test
follows the whole round trip: the page goes to the provider, comes back with a code, trades it (with its PKCE
verifier) for tokens, and then every API call, tile and the websocket carry the access token. Screenshots go to
test-artifacts/review_app/.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest

from pearl_pipelines.labels.accounts import Accounts, Role
from pearl_pipelines.labels.store import LabelStore
from pearl_pipelines.settings import Settings
from tests.review_app.browser import chromium_page, running_app
from tests.review_app.conftest import ARTIFACTS, new_home
from tests.review_app.idp import AUDIENCE, Issuer, s256

pytestmark = pytest.mark.slow

ACCESS_TTL_S = 80  # the page renews an access token 60 s before it expires: here 20 s after each sign-in


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    issuer = Issuer(user=("ada", "Ada Lovelace"), access_ttl_s=ACCESS_TTL_S)
    yield issuer
    issuer.close()


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def oidc_app(
    review_assets: Any, tmp_path_factory: pytest.TempPathFactory, issuer: Issuer
) -> Iterator[tuple[str, Settings]]:
    """The app in oidc mode; Ada is a mapper of the demo project (1), Grace owns project 2 (Ada is not in it)."""
    settings = new_home(tmp_path_factory, review_assets)
    secret = secrets.token_urlsafe(48)
    env = {
        "PEARL_AUTH_MODE": "oidc",
        "PEARL_OIDC_ISSUER": issuer.url,
        "PEARL_OIDC_AUDIENCE": AUDIENCE,
        "PEARL_AUTH_SECRET": secret,
    }
    with running_app(settings, wait_ready=False, env=env) as url:
        issuer.redirect_uris.add(f"{url}/")  # the client's registered redirect (and post-logout) URI: the page
        accounts = Accounts(LabelStore(settings.resolved_label_store_url), secret)
        accounts.set_role(1, accounts.user(issuer.subject("ada"), "Ada Lovelace"), Role.mapper)
        ada, grace = _bearer(issuer.token("ada")), _bearer(issuer.token("grace"))
        created = httpx.post(
            f"{url}/api/projects", json={"name": "Grace's", "imagery": {"collection": "demo"}}, headers=grace
        )
        assert created.status_code == 201, created.text
        deadline = time.monotonic() + 60
        while (project := httpx.get(f"{url}/api/projects/1", headers=ada, timeout=10).json())["imagery"][
            "state"
        ] != "ready" or not project["model"]["ready"]:
            assert time.monotonic() < deadline, project
            time.sleep(0.2)
        yield url, settings


@pytest.fixture(scope="module")
def browser_page() -> Iterator[Any]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with chromium_page() as page:
        yield page


def _session_keys(page: Any) -> dict[str, list[str]]:
    return page.evaluate("() => ({session: Object.keys(sessionStorage), local: Object.keys(localStorage)})")


def _stored_user(page: Any) -> dict[str, Any]:
    return page.evaluate(
        "() => JSON.parse(sessionStorage.getItem(Object.keys(sessionStorage).find(k => k.startsWith('oidc.user:'))))"
    )


def _signed_in(page: Any) -> None:
    page.get_by_test_id("user-name").filter(has_text="Ada Lovelace").wait_for(timeout=30000)
    page.get_by_test_id("project-name").filter(has_text="Demo").wait_for(timeout=30000)


def test_sign_in_with_pkce_tokens_on_every_call_and_sign_out(
    browser_page: Any, oidc_app: tuple[str, Settings], issuer: Issuer
) -> None:
    page = browser_page
    url, _ = oidc_app
    api_calls: list[tuple[str, str | None, int]] = []  # path, Authorization header, status
    tiles: list[tuple[str, int]] = []

    def seen(response: Any) -> None:
        parts = urlsplit(response.url)
        if parts.netloc != urlsplit(url).netloc:
            return
        if parts.path.startswith("/api/"):
            api_calls.append((parts.path, response.request.headers.get("authorization"), response.status))
        elif parts.path.startswith("/tiles/"):
            tiles.append((response.url, response.status))

    page.on("response", seen)

    # 1. Opening the app goes to the provider and back: signed in, on the page, with the code and state gone.
    page.goto(f"{url}/?project=1")
    _signed_in(page)
    assert page.url == f"{url}/?project=1", page.url  # where sign-in started; no code, no state
    (asked,) = issuer.seen.authorize
    assert (asked["client_id"], asked["redirect_uri"], asked["response_type"]) == (AUDIENCE, f"{url}/", "code")
    assert asked["code_challenge_method"] == "S256" and asked["scope"] == "openid profile email"
    ((form, status),) = issuer.seen.token
    assert status == 200 and form["grant_type"] == "authorization_code"
    assert s256(form["code_verifier"]) == asked["code_challenge"]  # the page holds the verifier of its challenge

    # 2. Every API call (but the public sign-in settings) carried the access token; Ada sees her project only.
    token = _stored_user(page)["access_token"]
    assert [path for path, _, _ in api_calls[:2]] == ["/api/auth/config"] * 2  # before and after the provider
    calls = [(path, auth, status) for path, auth, status in api_calls if path != "/api/auth/config"]
    assert {"/api/me", "/api/projects", "/api/projects/1"} <= {path for path, _, _ in calls}
    bad = [
        (path, (auth or "")[:12], status) for path, auth, status in calls if (auth, status) != (f"Bearer {token}", 200)
    ]
    assert not bad, bad
    listed = page.evaluate(
        "async (t) => (await fetch('/api/projects', {headers: {Authorization: 'Bearer ' + t}})).json()", token
    )
    assert [p["id"] for p in listed] == [1]
    assert httpx.get(f"{url}/api/projects/2", headers=_bearer(token)).status_code == 404

    # 3. Tiles load with the token (a tile without it is refused); the websocket is connected with it.
    page.locator("[data-testid=ws-status][data-connected=true]").wait_for(timeout=30000)
    page.wait_for_function("() => window.__pearl.map.loaded() && window.__pearl.map.areTilesLoaded()", timeout=30000)
    imagery = [(u, s) for u, s in tiles if "/tiles/imagery/1/tiles/" in u]
    assert imagery and all(s == 200 for _, s in imagery), imagery[:3]
    first = urlsplit(imagery[0][0])
    assert dict(parse_qsl(first.query))["access_token"] == token
    bare = {k: v for k, v in parse_qsl(first.query) if k != "access_token"}
    assert httpx.get(f"{url}{first.path}?{urlencode(bare)}", timeout=30).status_code == 401
    # Exports are links: in oidc mode the page fetches them with the token and saves them under the server's name.
    with page.expect_download() as download:
        page.get_by_test_id("export-geojson").click()
    assert download.value.suggested_filename.endswith(".geojson"), download.value.suggested_filename
    assert json.loads(Path(download.value.path()).read_text())["type"] == "FeatureCollection"
    assert api_calls[-1] == ("/api/projects/1/labels/export.geojson", f"Bearer {token}", 200)
    # Tokens are kept for this tab only.
    keys = _session_keys(page)
    assert any(k.startswith("oidc.user:") for k in keys["session"]) and not any("oidc" in k for k in keys["local"])
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / "40-oidc-signed-in.png"))

    # 4. Sign out: the tokens go, the provider's end-session endpoint is called, the page does not sign in again.
    page.get_by_test_id("sign-out").click()
    page.get_by_test_id("sign-in-message").filter(has_text="You are signed out.").wait_for(timeout=30000)
    (ended,) = issuer.seen.end_session
    assert ended["post_logout_redirect_uri"] == f"{url}/" and ended["id_token_hint"]
    assert not any(k.startswith("oidc.user:") for k in _session_keys(page)["session"])
    assert page.url == f"{url}/"
    assert len(issuer.seen.authorize) == 1
    page.screenshot(path=str(ARTIFACTS / "41-oidc-signed-out.png"))

    # 5. PKCE is checked: the same sign-in with a changed code_verifier is refused by the provider, and the page
    # says so instead of signing in.
    def wrong_verifier(route: Any) -> None:
        sent = dict(parse_qsl(route.request.post_data))
        route.continue_(post_data=urlencode(sent | {"code_verifier": secrets.token_urlsafe(48)}))

    page.route(f"{issuer.url}/token", wrong_verifier)
    page.get_by_test_id("sign-in").click()
    message = page.get_by_test_id("sign-in-message").filter(has_text="Sign-in failed")
    message.wait_for(timeout=30000)
    assert "PKCE verification failed" in message.inner_text()
    assert issuer.seen.token[-1][1] == 400 and len(issuer.seen.authorize) == 2
    assert page.get_by_test_id("user-name").count() == 0
    assert "code=" not in page.url and "state=" not in page.url
    page.screenshot(path=str(ARTIFACTS / "42-oidc-wrong-verifier-refused.png"))
    page.unroute(f"{issuer.url}/token")

    # 6. Signing in again works; before the access token expires the page renews it with the refresh token, and
    # a reload keeps the session (sessionStorage) without going to the provider.
    page.get_by_test_id("sign-in").click()
    # Signed out at /, so signed in again on the projects list; the project opens from there.
    page.get_by_test_id("project-list").filter(has_text="Demo").wait_for(timeout=30000)
    page.goto(f"{url}/?project=1")
    _signed_in(page)
    assert issuer.seen.token[-1][1] == 200 and len(issuer.seen.authorize) == 3
    before, signed_in = _stored_user(page)["access_token"], len(issuer.seen.token)
    deadline = time.monotonic() + ACCESS_TTL_S
    while not any(f["grant_type"] == "refresh_token" and s == 200 for f, s in issuer.seen.token[signed_in:]):
        assert time.monotonic() < deadline, issuer.seen.token
        time.sleep(0.5)
    page.wait_for_function("(t) => !Object.values(sessionStorage).some(v => v.includes(t))", arg=before)
    renewed = _stored_user(page)["access_token"]
    assert renewed != before and page.get_by_test_id("user-name").inner_text() == "Ada Lovelace"
    page.reload()
    _signed_in(page)
    assert len(issuer.seen.authorize) == 3
    assert api_calls[-1][1] == f"Bearer {renewed}"
    assert not page.errors, page.errors
