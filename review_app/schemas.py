"""Request and response models of the REST API and the websocket (one set of schemas for both)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag

from pearl_pipelines.classes import ClassSchema

DEFAULT_BASE_MODEL = "models:/pearl-starter-chesapeake9@starter"


def _as_utc(value: dt.datetime) -> dt.datetime:
    """Stores hand back naive UTC datetimes (SQLite keeps no zone): the API always says which zone it means."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


UtcDatetime = Annotated[dt.datetime, AfterValidator(_as_utc)]

GeoJSONGeometry = Annotated[
    dict[str, Any],
    Field(
        description="A GeoJSON geometry object (RFC 7946), lon/lat unless `crs` says otherwise",
        examples=[{"type": "Point", "coordinates": [-76.41, 38.96]}],
    ),
]
CrsName = Annotated[
    str,
    Field(description="CRS of the coordinates: EPSG:4326 (default) or any EPSG code, e.g. EPSG:26918"),
]


# -- projects -------------------------------------------------------------------------------------------------
class LocalImagery(BaseModel):
    """Imagery from a collection of the local STAC catalog under PEARL_HOME (read from disk)."""

    source: Literal["local"] = "local"
    collection: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", examples=["demo"])


class StacImagery(BaseModel):
    """Imagery found by a STAC API search (e.g. NAIP on Planetary Computer) over a bounding box."""

    source: Literal["stac"] = "stac"
    url: str | None = Field(default=None, description="STAC API root; default: the configured one")
    collections: list[str] = Field(min_length=1, examples=[["naip"]])
    bbox: tuple[float, float, float, float] = Field(description="lon/lat west, south, east, north")
    datetime: str | None = Field(default=None, examples=["2021-01-01/2021-12-31"])


def _imagery_source(value: Any) -> str:
    """`source` picks the model; without it, a local collection is meant."""
    return value.get("source", "local") if isinstance(value, dict) else getattr(value, "source", "local")


ImagerySource = Annotated[
    Annotated[LocalImagery, Tag("local")] | Annotated[StacImagery, Tag("stac")], Discriminator(_imagery_source)
]


class ProjectCreate(BaseModel):
    name: str = Field(min_length=1, max_length=120)
    imagery: ImagerySource
    class_schema: str | ClassSchema = Field(
        default="chesapeake9", description="A schema id from assets/schemas (chesapeake9, chesapeake4) or a schema"
    )
    base_model: str = Field(default=DEFAULT_BASE_MODEL, max_length=300)


class ClassOut(BaseModel):
    index: int = Field(description="pixel value of the class in prediction rasters")
    name: str
    title: str
    color: str
    label_count: int


class TileJsonLinks(BaseModel):
    classes: str | None = None
    confidence: str | None = None
    true_color: str | None = None
    false_color: str | None = None


class ImageryStatus(BaseModel):
    state: Literal["missing", "building", "ready", "error"]
    message: str = ""
    bounds: tuple[float, float, float, float] | None = Field(default=None, description="lon/lat bounds")
    tilejson: TileJsonLinks = Field(default_factory=TileJsonLinks)


class ModelStatus(BaseModel):
    ready: bool
    message: str = ""
    base_model: str
    current_version: int | None = None


class PredictionLayer(BaseModel):
    version: int = Field(description="layer version: bump -> refetch tiles")
    model_version: int | None
    tilejson: TileJsonLinks
    embeddings: bool = Field(description="embeddings cached: retrains re-predict this AOI in well under a second")


class AoiOut(BaseModel):
    id: int
    name: str
    geometry: dict[str, Any]
    area_km2: float
    tile_keys: int
    prediction: PredictionLayer | None = None


class ProjectSummary(BaseModel):
    id: int
    name: str
    created_at: UtcDatetime


class ProjectOut(ProjectSummary):
    imagery_source: dict[str, Any]
    class_schema_id: str
    classes: list[ClassOut]
    imagery: ImageryStatus
    model: ModelStatus
    aois: list[AoiOut]
    live_aoi_max_km2: float


# -- classes --------------------------------------------------------------------------------------------------
class ClassCreate(BaseModel):
    name: str = Field(description="snake_case identifier, e.g. solar_panels", examples=["solar_panels"])
    title: str | None = Field(default=None, max_length=80)
    color: str = Field(description="#rrggbb", examples=["#ff7f0e"])


class ClassUpdate(BaseModel):
    name: str | None = Field(default=None, description="new snake_case name")
    title: str | None = Field(default=None, max_length=80)
    color: str | None = Field(default=None, description="#rrggbb")


# -- AOIs and labels ------------------------------------------------------------------------------------------
class AoiCreate(BaseModel):
    name: str = Field(default="", max_length=120)
    geometry: GeoJSONGeometry
    crs: CrsName = "EPSG:4326"


class LabelCreate(BaseModel):
    class_name: str = Field(examples=["tree_canopy"])
    geometry: GeoJSONGeometry
    aoi_id: int | None = Field(default=None, description="AOI the label belongs to; default: the AOI containing it")
    crs: CrsName = "EPSG:4326"


class LabelFeature(BaseModel):
    type: Literal["Feature"] = "Feature"
    id: int
    geometry: dict[str, Any]
    properties: dict[str, Any]


class LabelCollection(BaseModel):
    type: Literal["FeatureCollection"] = "FeatureCollection"
    features: list[LabelFeature]


class UndoOut(BaseModel):
    undone: LabelFeature | None
    restored: bool = Field(description="true when the undo brought a deleted label back")


# -- jobs, models, checkpoints, metrics -----------------------------------------------------------------------
JobKind = Literal["imagery", "inference", "retrain", "restore"]
JobState = Literal["queued", "running", "done", "failed"]


class JobOut(BaseModel):
    id: str
    project_id: int
    kind: JobKind
    state: JobState
    progress: float = 0.0
    message: str = ""
    error: str | None = None
    aoi_id: int | None = None
    started_at: UtcDatetime | None = None
    finished_at: UtcDatetime | None = None


class RetrainRequest(BaseModel):
    aoi_id: int | None = Field(default=None, description="AOI to re-predict first; default: every AOI with labels")


StrategyName = Literal["logistic_regression", "mlp", "spatial_ensemble"]  # = ml.strategies.STRATEGIES


class StrategyIn(BaseModel):
    strategy: StrategyName


class StrategyOption(BaseModel):
    name: StrategyName
    description: str


class StrategyOut(BaseModel):
    strategy: StrategyName = Field(description="how the next retrains of this project fit their head")
    available: list[StrategyOption]


class ClassMetric(BaseModel):
    name: str
    f1: float | None
    precision: float | None
    recall: float | None
    support: int


class MetricsOut(BaseModel):
    model_version: int | None
    method: str = Field(description="how the figures were computed, e.g. grouped 5-fold cross-validation")
    per_class: list[ClassMetric]
    confusion: list[list[int]] = Field(description="rows: labelled class (`classes`), columns: predicted (`columns`)")
    classes: list[str] = Field(description="classes with labels (rows of the confusion matrix)")
    columns: list[str] = Field(default_factory=list, description="classes predicted for them (columns)")
    mean_f1: float | None
    accuracy: float | None
    n_labels: int
    n_samples: int
    message: str = ""


class CheckpointCreate(BaseModel):
    name: str = Field(min_length=1, max_length=80, examples=["after water fix"])


class CheckpointOut(BaseModel):
    id: int
    name: str | None
    kind: Literal["base", "retrain"]
    parent: int | None
    created_at: UtcDatetime
    n_labels: int
    label_set: str | None
    classes: list[str]
    mean_f1: float | None
    current: bool
    saved: bool
    mlflow_version: str | None = None


class CompareRow(BaseModel):
    class_name: str
    f1_a: float | None
    f1_b: float | None
    delta: float | None


class CompareOut(BaseModel):
    a: CheckpointOut
    b: CheckpointOut
    rows: list[CompareRow]


# -- websocket events -------------------------------------------------------------------------------------------
class Event(BaseModel):
    """A server -> browser message on /api/projects/{id}/ws; `type` says which."""

    model_config = ConfigDict(extra="allow")
    type: Literal[
        "hello",
        "job",
        "imagery_ready",
        "model_status",
        "prediction_updated",
        "metrics_updated",
        "labels_changed",
        "classes_changed",
        "error",
        "ping",
    ]


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorOut, "description": description}


class ErrorOut(BaseModel):
    detail: str
    errors: list[dict[str, Any]] | None = None


# -- accounts ----------------------------------------------------------------------------------------------------
RoleName = Literal["viewer", "mapper", "owner"]


class UserOut(BaseModel):
    id: int
    subject: str
    name: str


class AuthConfigOut(BaseModel):
    """How the front-end signs in: nothing to do in local mode; in oidc mode, the OpenID Connect Authorization Code
    flow with PKCE (S256) as a public client of `issuer`."""

    mode: Literal["local", "oidc"]
    issuer: str | None = Field(default=None, description="OpenID Connect issuer (oidc mode)")
    client_id: str | None = Field(default=None, description="the front-end's client id at the issuer (oidc mode)")
    scopes: str | None = Field(default=None, description="scopes to ask for, space-separated (oidc mode)")


class MemberOut(UserOut):
    role: RoleName


class MemberIn(BaseModel):
    subject: str = Field(min_length=1, max_length=300, description="the user's subject: 'oidc:<issuer>#<sub>'")
    role: RoleName
    name: str | None = Field(default=None, max_length=200, description="display name until the user signs in")


class TokenCreate(BaseModel):
    name: str = Field(min_length=1, max_length=80, examples=["nightly export script"])
    days: int = Field(default=90, ge=1, le=366, description="lifetime in days")


class TokenOut(BaseModel):
    id: int
    name: str
    created_at: UtcDatetime
    expires_at: UtcDatetime
    revoked_at: UtcDatetime | None = None
    last_used_at: UtcDatetime | None = None


class TokenIssued(TokenOut):
    token: str = Field(description="shown once: send it as 'Authorization: Bearer <token>'")


class AuditOut(BaseModel):
    id: int
    at: UtcDatetime
    subject: str
    action: str
    target: dict[str, Any]
    status: int


# Answers any route may give (the guard, the limits): documented on every route of the API.
COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _error("not signed in: a bearer token (OIDC or a personal API token) is missing, invalid or expired"),
    403: _error("a member of the project without the role this needs"),
    404: _error("unknown id, or a project the caller is not a member of"),
    413: _error("request body larger than the server accepts"),
    422: _error("the request does not validate; the message says what is accepted"),
    429: _error("too many writes, or a retrain/inference already waiting; see Retry-After"),
}
