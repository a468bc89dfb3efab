"""Run-time settings: one place, `PEARL_` environment prefix, all state under `PEARL_HOME`."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pearl_pipelines.layout import Layout

REPO_ROOT = Path(__file__).resolve().parents[1]


DEFAULT_AUTH_SECRET = "local-only-not-a-secret"
DEFAULT_STAC_API = "default"  # the id of the configured default STAC API (resolved_stac_url)
STAC_API_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # what a STAC API id may look like


class Settings(BaseSettings):
    """Every knob of the system. Read from the environment (`PEARL_HOME=/data pearl ...`) or a `.env`."""

    model_config = SettingsConfigDict(env_prefix="PEARL_", env_file=".env", extra="ignore")

    home: Path = Field(default=Path(".pearl"), description="Data directory holding all run-time state")
    assets_dir: Path = Field(default=REPO_ROOT / "assets", description="Class schemas and region files")
    deployment: Literal["local", "k8s"] = "local"

    # Imagery source: the local STAC API over the local catalog, or Planetary Computer's NAIP.
    stac_source: Literal["local", "planetary-computer"] = "local"
    stac_url: str | None = Field(default=None, description="STAC API root; default depends on stac_source")
    stac_collection: str | None = Field(default=None, description="Collection to search; default per source")
    stac_port: int = 7822
    planetary_computer_url: str = "https://planetarycomputer.microsoft.com/api/stac/v1"
    # The STAC APIs review projects may search, by id: a project names an id (`api`), never a URL, and the server
    # sends requests to these APIs' hosts only (pearl_pipelines.geo.stac). `resolved_stac_apis` is the whole list.
    stac_apis: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "More STAC APIs for review projects, id -> API root URL (http or https), e.g. "
            'PEARL_STAC_APIS=\'{"naip-pc": "https://planetarycomputer.microsoft.com/api/stac/v1"}\'. '
            "The id `default` is always the configured default API (PEARL_STAC_URL, else the one of "
            "PEARL_STAC_SOURCE) and cannot be set here; ids are 1-64 letters, digits, `_`, `.` or `-`"
        ),
    )

    # Tile grid: morecantile TMS id and zoom of the tile keys (z15 of WebMercatorQuad ~ 0.9 km at 39N).
    tms: str = "WebMercatorQuad"
    tile_zoom: int = Field(default=15, ge=10, le=18)

    mlflow_tracking_uri: str | None = None
    mlflow_port: int = 5000
    dagster_port: int = Field(default=3000, description="local Dagster webserver (direct label-run submission)")
    # Sensors and schedules start RUNNING; benchmarks and tests that submit runs themselves turn them off
    # (PEARL_DAGSTER_AUTOMATION=off) so that no sensor run competes with theirs.
    dagster_automation: bool = True
    # The label sensor submits a project's labels once they have been still this long: a burst gives one run, and
    # the review app (which fits, registers and submits the same label set itself within seconds) goes first.
    label_quiet_s: float = Field(default=20.0, ge=0, description="seconds without label events before the sensor runs")

    # Label store (review app + Dagster sensor): SQLAlchemy URL; default SQLite (WAL) under PEARL_HOME.
    label_store_url: str | None = Field(default=None, description="e.g. postgresql+psycopg://user@host/pearl")

    # Review app (FastAPI + titiler): where uvicorn listens, and the live-mapping area limit.
    review_host: str = "127.0.0.1"
    review_port: int = 8000
    live_aoi_max_km2: float = Field(default=25.0, gt=0, description="Largest AOI for live inference/retraining")
    # AOI files uploaded from the page (review_app/services/aoi_files.py): what one upload may hold.
    aoi_upload_max_bytes: int = Field(
        default=20 << 20, ge=1 << 10, description="Largest AOI file upload, bytes (PEARL_AOI_UPLOAD_MAX_BYTES)"
    )
    aoi_upload_max_features: int = Field(
        default=500, ge=1, description="Most features read from one AOI file (PEARL_AOI_UPLOAD_MAX_FEATURES)"
    )
    aoi_max_vertices: int = Field(
        default=10_000, ge=4, description="Most vertices of one uploaded AOI (PEARL_AOI_MAX_VERTICES)"
    )
    # Base models the review app keeps in memory (least recently used first out, reloaded on demand); projects on
    # the same registered base version share one.
    model_cache_size: int = Field(default=4, ge=1, description="Base models kept loaded by the review app (LRU)")
    # Who may call the review app. local: one local user, signed in automatically, loopback only (`make demo`).
    # oidc: OpenID Connect bearer tokens of `oidc_issuer` for `oidc_audience`, or personal API tokens.
    auth_mode: Literal["local", "oidc"] = "local"
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_jwks_url: str | None = Field(default=None, description="default: from the issuer's discovery document")
    # The browser's own sign-in (Authorization Code + PKCE, a public client): the client id registered at the
    # identity provider for the page, and the scopes it asks for.
    oidc_client_id: str | None = Field(default=None, description="the front-end's client id; default: oidc_audience")
    oidc_scopes: str = Field(default="openid profile email", description="scopes the front-end's sign-in asks for")
    auth_secret: str = Field(default=DEFAULT_AUTH_SECRET, description="key of the API tokens' HMAC; set outside local")
    # Abuse limits and browser policy of the review app.
    max_body_bytes: int = Field(default=2 << 20, gt=0, description="Largest request body (413 beyond)")
    # Imagery uploaded from the page (review_app/services/uploads.py): sent in chunks of at most max_body_bytes.
    upload_max_bytes: int = Field(
        default=8 << 30, ge=1 << 20, description="Largest GeoTIFF one upload may be, bytes (PEARL_UPLOAD_MAX_BYTES)"
    )
    write_rate_limit: str = Field(
        default="30/second;600/minute", description="Writes per user (POST/PUT/PATCH/DELETE), `limits` syntax"
    )
    # Where the write counts live: memory:// counts per process (N workers or replicas allow N times the limit);
    # redis://host:port/db shares one budget per user between every process naming the same Redis database.
    rate_limit_storage: str = Field(
        default="memory://", description="`limits` storage URI of the write counts: memory:// or redis://host:port/db"
    )
    # Websocket events of a project reach the browsers on every app process that names the same Redis (pub/sub);
    # memory:// delivers within this process only (one app process: make demo).
    events_url: str = Field(
        default="memory://", description="event fan-out between app processes: memory:// or redis://host:port/db"
    )
    # Where the files that layout.py names live: a local folder (PEARL_HOME, the default) or an S3-compatible
    # bucket, s3://bucket/prefix (endpoint and keys from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).
    storage_url: str | None = Field(default=None, description="s3://bucket/prefix; default: files under PEARL_HOME")
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed to call the API from a browser; none by default"
    )
    # Host names the app answers to (DNS rebinding: a foreign page's name resolved to 127.0.0.1 must get nothing).
    # Empty: loopback names only in local mode; any host in oidc mode (set it to the public name behind an ingress).
    allowed_hosts: list[str] = Field(
        default_factory=list, description="Host header values served, e.g. pearl.example.org; see security.py"
    )
    # Per-user quotas: what one signed-in user can make the server store and hold in memory.
    quota_projects: int = Field(default=20, ge=1, description="projects a user may own")
    quota_aois: int = Field(default=50, ge=1, description="AOIs per project")
    # Read-only share links (review_app/services/shares.py): each copies its maps, so their number is bounded too.
    share_max_days: int = Field(default=365, ge=1, le=3650, description="longest life of a share link, in days")
    share_max_per_project: int = Field(default=50, ge=1, description="live share links per project")
    # Map patches (review_app/services/patches.py): every map of the AOIs a patch covers is painted with it.
    patch_max_per_project: int = Field(
        default=500, ge=1, description="map patches in force per project (PEARL_PATCH_MAX_PER_PROJECT)"
    )
    quota_bytes: int = Field(
        default=20 << 30, ge=1 << 20, description="disk bytes of the projects a user owns (layers, caches, versions)"
    )
    # Compare two versions as maps: the versions' maps and change rasters are kept per project up to this many bytes
    # (the least recently used go first), so a second compare of the same maps is instant.
    compare_max_bytes: int = Field(
        default=1 << 30, ge=1 << 20, description="disk bytes of one project's compare maps (PEARL_COMPARE_MAX_BYTES)"
    )

    # Compute precision of training: auto = bfloat16 only where a timed probe finds it natively faster.
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    @property
    def home_abs(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def layout(self) -> Layout:
        """Every file under PEARL_HOME (pearl_pipelines.layout)."""
        return Layout.at(self.home)

    @property
    def catalog_dir(self) -> Path:
        """Local STAC catalog: one folder per collection (region), items with COG assets."""
        return self.layout.path(Layout.catalog)

    @property
    def tiles_dir(self) -> Path:
        return self.layout.path(Layout.tiles)

    @property
    def cache_dir(self) -> Path:
        """Per-machine measurements (e.g. the precision probe), safe to delete."""
        return self.layout.path(Layout.machine_cache)

    @property
    def models_dir(self) -> Path:
        return self.layout.path(Layout.models)

    @property
    def resolved_label_store_url(self) -> str:
        return self.label_store_url or f"sqlite:///{self.home_abs / 'labels.db'}"

    @property
    def resolved_stac_url(self) -> str:
        if self.stac_url:
            return self.stac_url
        if self.stac_source == "planetary-computer":
            return self.planetary_computer_url
        return f"http://127.0.0.1:{self.stac_port}"

    @property
    def resolved_stac_apis(self) -> dict[str, str]:
        """Every STAC API a project may search, by id: `default` (resolved_stac_url) and those of `stac_apis`."""
        return {DEFAULT_STAC_API: self.resolved_stac_url, **self.stac_apis}

    @field_validator("stac_apis")
    @classmethod
    def _check_stac_apis(cls, apis: dict[str, str]) -> dict[str, str]:
        for api_id, url in apis.items():
            if api_id == DEFAULT_STAC_API:
                raise ValueError("the id 'default' is the default STAC API: set PEARL_STAC_URL for it")
            if not STAC_API_ID.fullmatch(api_id):
                raise ValueError(f"STAC API id {api_id!r}: use 1-64 letters, digits, '_', '.' or '-'")
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"STAC API {api_id!r}: the URL must be http(s)://host/...")
        return apis

    @property
    def resolved_mlflow_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"http://127.0.0.1:{self.mlflow_port}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
