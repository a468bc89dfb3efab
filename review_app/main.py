"""The review app: `uvicorn review_app.main:app` serves the API, the tiles, the websocket and the front-end.

Everything comes from settings (PEARL_HOME, PEARL_LABEL_STORE_URL, PEARL_MLFLOW_TRACKING_URI...). On
first start the demo project is created; its imagery mosaic and base model load in the background,
and the page says what is missing (no imagery generated yet, no model trained yet) instead of failing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, WebSocketException
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from pearl_pipelines.settings import Settings, get_settings
from review_app.auth.guard import AuditMiddleware, authorize, check_every_route_has_a_rule
from review_app.container import ReviewServices
from review_app.errors import add_exception_handlers
from review_app.routers import accounts, aois, compare, labels, models, patches, projects, shares, uploads, ws
from review_app.schemas import COMMON_ERRORS
from review_app.security import add_security, allowed_hosts
from review_app.tiles import TileCacheMiddleware, mount_tiles

log = logging.getLogger(__name__)
DIST = Path(__file__).resolve().parent / "static" / "dist"
NOT_BUILT = """<!doctype html><html><head><meta charset="utf-8"><title>PEARL review app</title></head>
<body style="font-family:sans-serif;margin:3rem;max-width:40rem">
<h1>PEARL review app</h1><p>The front-end is not built. Run <code>make install</code> (it runs
<code>npm ci</code> and the esbuild bundle into <code>review_app/static/dist</code>), then reload.</p>
<p>The API works already: <a href="/docs">/docs</a>.</p></body></html>"""


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = ReviewServices(settings or get_settings())
        services.hub.bind(asyncio.get_running_loop())
        app.state.services = services
        services.start()
        log.info("review app ready; PEARL_HOME=%s", services.settings.home_abs)
        try:
            yield
        finally:
            services.close()

    app = FastAPI(
        dependencies=[Depends(authorize)],  # every route, websocket and tile included: review_app/auth/rules.py
        title="PEARL review app",
        version="0.1.0",
        description=(
            "Human-in-the-loop land-cover mapping: imagery and prediction tiles (titiler), projects, AOIs, "
            "classes, labels, live retraining, checkpoints, metrics and exports. Progress and map updates "
            "are pushed on the websocket `/api/projects/{id}/ws`."
        ),
        lifespan=lifespan,
        docs_url=None,  # served by _mount_frontend from this origin: FastAPI's page loads Swagger UI from a CDN
        redoc_url=None,
    )
    add_exception_handlers(app)
    app.add_exception_handler(WebSocketException, ws.close_with_code)
    limits = settings or get_settings()
    app.add_middleware(AuditMiddleware)
    add_security(
        app,
        max_body_bytes=limits.max_body_bytes,
        cors_origins=limits.cors_origins,
        hosts=allowed_hosts(limits.allowed_hosts, local=limits.auth_mode == "local"),
        oidc_issuer=limits.oidc_issuer if limits.auth_mode == "oidc" else None,
        # Routes that take a file, not JSON (security.FileRoute).
        file_routes=[*aois.file_routes(limits), *uploads.file_routes(limits)],
    )
    app.add_middleware(TileCacheMiddleware)
    for module in (projects, aois, labels, models, accounts, patches, compare, uploads):
        app.include_router(module.router, responses=COMMON_ERRORS)
    app.include_router(projects.choices_router, responses=COMMON_ERRORS)  # imagery and starters to choose from
    app.include_router(accounts.public_router)
    for router in (models.jobs_router, ws.router):
        app.include_router(router, responses=COMMON_ERRORS)
    ws.add_event_schemas(app)  # the websocket's events, for the front-end's generated types
    mount_tiles(app)
    compare.mount_compare_tiles(app)
    app.include_router(shares.router)  # share links: the owner's routes (its own COMMON_ERRORS)
    app.include_router(shares.link_router)  # the link's page, data, downloads and /maps: no sign-in (rules.py "share")
    shares.mount_share_tiles(app)
    _mount_frontend(app)
    check_every_route_has_a_rule(app)
    return app


def _mount_frontend(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False, response_model=None)
    def index() -> FileResponse | HTMLResponse:
        page = DIST / "index.html"
        return FileResponse(page, headers={"Cache-Control": "no-cache"}) if page.is_file() else HTMLResponse(NOT_BUILT)

    @app.get("/docs", include_in_schema=False, response_model=None)
    def docs() -> FileResponse | HTMLResponse:
        """Swagger UI over /openapi.json, its files bundled by `make install` (the CSP allows no CDN)."""
        page = DIST / "swagger" / "docs.html"
        return FileResponse(page, headers={"Cache-Control": "no-cache"}) if page.is_file() else HTMLResponse(NOT_BUILT)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.mount("/static", StaticFiles(directory=DIST, check_dir=False), name="static")


app = create_app()
