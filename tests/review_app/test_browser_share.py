"""Share a map in a real browser (headless Chromium) against the real app in oidc mode: the owner signs in, makes a
read-only link in the page's Share section, and a fresh browser context with no account opens it (map over its
imagery, legend, area table, COG download), finds it on the public-maps page, gets 401/404 from every other route
with the link's token, and a bare 404 once the owner revoked it. Screenshots: test-artifacts/review_app/share/.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import rasterio

from pearl_pipelines.labels.accounts import Accounts, Role
from pearl_pipelines.labels.store import LabelStore
from pearl_pipelines.settings import Settings
from review_app.auth.rules import rule_for
from tests.review_app.browser import chromium_page, running_app
from tests.review_app.conftest import ARTIFACTS, new_home
from tests.review_app.idp import AUDIENCE, Issuer

pytestmark = pytest.mark.slow
SHOTS = ARTIFACTS / "share"


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    issuer = Issuer(user=("ada", "Ada Lovelace"))
    yield issuer
    issuer.close()


@pytest.fixture(scope="module")
def owner_app(
    review_assets: Any, tmp_path_factory: pytest.TempPathFactory, issuer: Issuer
) -> Iterator[tuple[str, Settings, int]]:
    """The app in oidc mode; Ada owns the demo project (1), which has one predicted AOI (its id is yielded)."""
    settings = new_home(tmp_path_factory, review_assets)
    secret = secrets.token_urlsafe(48)
    env = {
        "PEARL_AUTH_MODE": "oidc",
        "PEARL_OIDC_ISSUER": issuer.url,
        "PEARL_OIDC_AUDIENCE": AUDIENCE,
        "PEARL_AUTH_SECRET": secret,
    }
    with running_app(settings, wait_ready=False, env=env) as url:
        issuer.redirect_uris.add(f"{url}/")
        accounts = Accounts(LabelStore(settings.resolved_label_store_url), secret)
        accounts.set_role(1, accounts.user(issuer.subject("ada"), "Ada Lovelace"), Role.owner)
        ada = _bearer(issuer.token("ada"))
        deadline = time.monotonic() + 90
        while (project := httpx.get(f"{url}/api/projects/1", headers=ada, timeout=10).json())["imagery"][
            "state"
        ] != "ready" or not project["model"]["ready"]:
            assert time.monotonic() < deadline, project
            time.sleep(0.2)
        west, south, east, north = project["imagery"]["bounds"]
        lon, lat, d = (west + east) / 2, (south + north) / 2, 0.002
        ring = [[lon - d, lat - d], [lon + d, lat - d], [lon + d, lat + d], [lon - d, lat + d], [lon - d, lat - d]]
        aoi = httpx.post(
            f"{url}/api/projects/1/aois",
            json={"name": "north field", "geometry": {"type": "Polygon", "coordinates": [ring]}},
            headers=ada,
            timeout=30,
        ).json()
        job = httpx.post(f"{url}/api/projects/1/aois/{aoi['id']}/inference", headers=ada, timeout=30).json()
        while (state := httpx.get(f"{url}/api/jobs/{job['id']}", headers=ada, timeout=10).json()["state"]) not in (
            "done",
            "failed",
        ):
            assert time.monotonic() < deadline + 120
            time.sleep(0.2)
        assert state == "done"
        yield url, settings, aoi["id"]


def _other_routes(url: str, aoi_id: int) -> list[str]:
    """Every GET route of the API and the tiles that is not the share's own or public, with ids filled in."""
    values = {"project_id": "1", "aoi_id": str(aoi_id), "tileMatrixSetId": "WebMercatorQuad", "z": "15"}
    values |= {"x": "9000", "y": "12000", "format": "png", "version": "1", "name": "water"}
    paths = []
    for path, methods in httpx.get(f"{url}/openapi.json", timeout=10).json()["paths"].items():
        rule = rule_for("GET", path)
        if "get" not in methods or rule is None or rule.scope in ("public", "share"):
            continue
        paths.append(re.sub(r"\{(\w+)\}", lambda m: values.get(m[1], "1"), path))
    return paths


def test_owner_shares_a_map_and_a_stranger_opens_only_that(
    owner_app: tuple[str, Settings, int], issuer: Issuer
) -> None:
    url, _, aoi_id = owner_app
    SHOTS.mkdir(parents=True, exist_ok=True)
    with chromium_page() as page:
        # 1. The owner signs in, picks the AOI in the Share section, lists it, and creates the link.
        page.goto(f"{url}/?project=1")
        page.get_by_test_id("user-name").filter(has_text="Ada Lovelace").wait_for(timeout=30000)
        page.get_by_test_id(f"share-aoi-{aoi_id}").wait_for(timeout=30000)
        page.get_by_test_id("share-title-input").fill("North field, June")
        page.get_by_test_id(f"share-aoi-{aoi_id}").check()
        page.get_by_test_id("share-listed").check()
        page.get_by_test_id("share-create").click()
        link = page.get_by_test_id("share-link")
        link.wait_for(timeout=30000)
        shared = link.input_value()
        assert re.fullmatch(re.escape(url) + r"/share/pearl_share_[A-Za-z0-9_-]{43}", shared), shared
        page.get_by_test_id("share-item").filter(has_text="North field, June").wait_for()
        page.get_by_test_id("share-panel").scroll_into_view_if_needed()
        page.screenshot(path=str(SHOTS / "01-owner-created-link.png"))
        token = shared.rsplit("/", 1)[1]

        # 2. A fresh browser context, no account: the link opens the map over its imagery, legend, areas.
        browser = page.context.browser
        stranger = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
        visitor = stranger.new_page()
        errors: list[str] = []
        visitor.on("pageerror", lambda error: errors.append(str(error)))
        visitor.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
        seen: list[tuple[str, int, str | None]] = []
        visitor.on("response", lambda r: seen.append((r.url, r.status, r.request.headers.get("authorization"))))
        visitor.goto(shared)
        visitor.get_by_test_id("share-title").filter(has_text="North field, June").wait_for(timeout=30000)
        visitor.wait_for_function("() => document.body.dataset.ready === 'true'", timeout=30000)
        visitor.wait_for_function(
            "() => window.__share.map.loaded() && window.__share.map.areTilesLoaded()", timeout=60000
        )
        visitor.wait_for_timeout(500)
        visitor.screenshot(path=str(SHOTS / "02-stranger-opens-shared-map.png"))
        visitor.get_by_test_id("share-opacity").fill("25")  # the imagery under the map shows through
        opacity = visitor.evaluate("(id) => window.__share.map.getPaintProperty(`map-${id}`, 'raster-opacity')", aoi_id)
        assert opacity == pytest.approx(0.25)
        visitor.wait_for_timeout(500)
        visitor.screenshot(path=str(SHOTS / "02b-stranger-map-over-imagery.png"))
        tiles = [(u, s) for u, s, _ in seen if "/tiles/shares/" in u and "/tiles/WebMercatorQuad/" in u]
        assert any("/imagery/" in u and s == 200 for u, s in tiles), tiles[:5]
        assert any(f"/maps/{aoi_id}/" in u and s == 200 for u, s in tiles), tiles[:5]
        assert all(auth is None for _, _, auth in seen)  # nothing but the link: no account, no token header
        legend = visitor.get_by_test_id("share-legend").inner_text()
        rows = visitor.locator("[data-testid=share-areas] tbody tr")
        assert rows.count() >= 1
        first_class = rows.first.locator("td").first.inner_text()
        assert first_class in legend
        total = visitor.get_by_test_id("share-total").inner_text()
        assert float(total.split()[0].replace(",", "")) > 10  # a 350 x 450 m AOI: about 15 ha
        page_text = visitor.locator("body").inner_text()
        assert "Ada" not in page_text and "Demo" not in page_text and "label" not in page_text.lower()

        # 3. The COG download is the shared map: a uint8 class raster with the legend's classes.
        with visitor.expect_download() as download:
            visitor.get_by_test_id("share-download").click()
        path = Path(download.value.path())
        with rasterio.open(path) as cog:
            classes = cog.read(1)
            assert cog.dtypes[0] == "uint8" and cog.crs.is_projected
        assert np.isin(np.unique(classes), np.arange(0, 256)).all() and (classes != 255).any()
        ada = _bearer(issuer.token("ada"))
        own = httpx.get(f"{url}/api/projects/1/aois/{aoi_id}/export/classes.tif", headers=ada, timeout=30)
        assert path.read_bytes() == own.content

        # 4. The public-maps page lists it; its card opens the same map.
        visitor.goto(f"{url}/maps")
        card = visitor.get_by_test_id("public-map").filter(has_text="North field, June")
        card.wait_for(timeout=30000)
        visitor.screenshot(path=str(SHOTS / "03-public-maps.png"))
        card.click()
        visitor.get_by_test_id("share-title").filter(has_text="North field, June").wait_for(timeout=30000)

        # 5. The token opens nothing else: every other route refuses it (401) or knows nothing (404), as header
        # and as query parameter, and so does the visitor without it.
        others = _other_routes(url, aoi_id)
        assert len(others) > 20
        request = stranger.request
        for path in others:
            for got in (
                request.get(url + path, headers=_bearer(token)),
                request.get(f"{url}{path}?access_token={token}"),
                request.get(url + path),
            ):
                assert got.status in (401, 404), (path, got.status, got.text()[:200])

        # 6. The owner revokes it: the link, its data and tiles are a bare 404, and the public list forgets it.
        page.get_by_test_id("share-item").filter(has_text="North field, June").get_by_test_id("share-revoke").click()
        page.locator("[data-testid=share-item][data-state=revoked]").wait_for(timeout=30000)
        page.screenshot(path=str(SHOTS / "04-owner-revoked-link.png"))
        gone = visitor.goto(shared)
        assert gone is not None and gone.status == 404
        assert request.get(f"{url}/api/shares/{token}").status == 404
        tile = next(u for u, _ in tiles if "/imagery/" in u)
        assert request.get(tile).status == 404
        visitor.goto(f"{url}/maps")
        visitor.get_by_test_id("public-maps-empty").wait_for(timeout=30000)
        visitor.screenshot(path=str(SHOTS / "05-after-revoke-public-maps-empty.png"))
        assert not errors, errors
        assert not page.errors, page.errors
        stranger.close()
