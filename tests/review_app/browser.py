"""The browser harness for the review app's Chromium tests: the app under uvicorn, a headless Chromium page, and a
`Mapper` that drives the page like a person (clicks at lon/lat, keys, a screenshot per step).

Each browser test module keeps its screenshots in its own folder under test-artifacts/review_app/ (`Mapper.dir`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pearl_pipelines.settings import Settings
from tests.conftest import free_port
from tests.review_app.conftest import ARTIFACTS
from tests.review_app.servers import log_path, ready_project, uvicorn

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DIST = Path(__file__).resolve().parents[2] / "review_app" / "static" / "dist" / "index.html"


@contextlib.contextmanager
def running_app(settings: Settings, *, wait_ready: bool = True, env: dict[str, str] | None = None) -> Iterator[str]:
    """`uvicorn review_app.main:app` on a free port, configured by environment variables only (`env`: more of them,
    e.g. PEARL_AUTH_MODE; without wait_ready it returns once the app answers at all, even 401)."""
    if not DIST.is_file():
        pytest.fail("the front-end is not built: run `make install` (npm ci + esbuild into review_app/static/dist)")
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (make test does it)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with uvicorn(settings, port, env=env) as process:
        ready_project(url, 60, ready=wait_ready, process=process, log=log_path(settings, port))
        yield url


@contextlib.contextmanager
def chromium_page() -> Iterator[Any]:
    """A page of headless Chromium; `page.errors` collects page errors and Content-Security-Policy violations."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1440, "height": 900}, accept_downloads=True)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        # The app's Content-Security-Policy must not block anything the page itself loads.
        page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
        page.errors = errors
        yield page
        context.close()
        browser.close()


class Mapper:
    """Drives the page like a person: keys, clicks at lon/lat on the map, and a screenshot per step."""

    def __init__(self, page: Any, url: str, settings: Settings, folder: Path = ARTIFACTS) -> None:
        self.page, self.url, self.settings = page, url, settings
        self.dir = folder
        self.step = 0

    def shot(self, name: str) -> None:
        self.step += 1
        self.page.wait_for_timeout(300)  # let the last tiles fade in
        self.dir.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(self.dir / f"{self.step:02d}-{name}.png"))

    def screen(self, lon: float, lat: float) -> tuple[float, float]:
        point = self.page.evaluate("([x, y]) => window.__pearl.map.project([x, y])", [lon, lat])
        box = self.page.locator("#map").bounding_box()
        return box["x"] + point["x"], box["y"] + point["y"]

    def click(self, lon: float, lat: float) -> None:
        self.page.mouse.click(*self.screen(lon, lat))

    def draw_polygon(self, ring: list[tuple[float, float]]) -> None:
        for lon, lat in ring[:-1]:
            self.click(lon, lat)
            self.page.wait_for_timeout(80)
        self.page.keyboard.press("Enter")

    def api(self, path: str) -> Any:
        return httpx.get(self.url + path, timeout=10).json()

    def prediction_version(self, aoi_id: int) -> int | None:
        return self.page.evaluate("(id) => window.__pearl.predictionVersion(id)", aoi_id)

    def wait_for(self, condition: str, timeout: float = 60000) -> None:
        """Wait for a JS condition; fail at once with the app's message if an error toast shows up instead."""
        self.page.wait_for_function(
            f"() => ({condition}) || document.querySelector('[data-testid=toast-error]') !== null", timeout=timeout
        )
        error = self.page.locator("[data-testid=toast-error]")
        if error.count():
            raise AssertionError(f"the app reported an error: {error.first.inner_text()}")

    def wait_idle(self) -> None:
        self.page.wait_for_function(
            "() => window.__pearl.map.loaded() && window.__pearl.map.areTilesLoaded()", timeout=30000
        )
