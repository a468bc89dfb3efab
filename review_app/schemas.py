"""Request and response models of the REST API and the websocket (one set of schemas for both)."""

from __future__ import annotations

import datetime as dt
import math
import sys
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from pearl_pipelines.classes import ClassSchema
from pearl_pipelines.labels.accounts import MAX_TOKEN_DAYS
from pearl_pipelines.labels.store import MAX_ID, text_problem
from pearl_pipelines.ml.refs import ACCEPTED_FORMS, REGISTERED_REF, parse_registered_ref
from pearl_pipelines.ml.strategies import STRATEGIES

DEFAULT_BASE_MODEL = "models:/pearl-starter-chesapeake9@starter"


def _as_utc(value: dt.datetime) -> dt.datetime:
    """Stores hand back naive UTC datetimes (SQLite keeps no zone): the API always says which zone it means."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


UtcDatetime = Annotated[dt.datetime, AfterValidator(_as_utc)]

# -- the rules every request body follows (the stores check the same again before they write) --------------------
# MAX_ID: the label store's ids are INTEGER columns, 32-bit on PostgreSQL: a larger id names nothing on either store.
Id = Annotated[int, Field(ge=1, le=MAX_ID)]  # every id in a request body: out of range is a 422, never an overflow

# One line of plain text: no control characters (C0, DEL, C1) and no lone surrogates, the rule of the label store's
# `text_problem`. The pattern documents it in the OpenAPI schema (surrogates are left out of it: a JavaScript
# regex without the u flag would refuse every emoji); the validator enforces it with a message that names the
# character and its position.
PLAIN_TEXT_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"


def _plain_text(value: str) -> str:
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


PlainText = Annotated[
    str,
    AfterValidator(_plain_text),
    Field(json_schema_extra={"pattern": PLAIN_TEXT_PATTERN}),
]


def _finite_coordinates(value: dict[str, Any]) -> dict[str, Any]:
    """Every number in `coordinates` must be a finite float: JSON integers have no bound (10**400 overflows the
    float conversion of shapely), and Python's JSON reader accepts NaN and Infinity."""
    stack: list[Any] = [value.get("coordinates")]
    while stack:
        item = stack.pop()
        if isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, bool):
            continue
        elif (isinstance(item, int) and abs(item) > sys.float_info.max) or (
            isinstance(item, float) and not math.isfinite(item)
        ):
            raise ValueError("coordinates must be finite numbers within the range of a 64-bit float")
    return value


GeoJSONGeometry = Annotated[
    dict[str, Any],
    AfterValidator(_finite_coordinates),
    Field(
        description="A GeoJSON geometry object (RFC 7946), lon/lat unless `crs` says otherwise",
        examples=[{"type": "Point", "coordinates": [-76.41, 38.96]}],
    ),
]
CrsName = Annotated[
    PlainText,
    Field(
        max_length=1000,
        description="CRS of the coordinates: EPSG:4326 (default) or any EPSG code, e.g. EPSG:26918",
    ),
]


# -- projects -------------------------------------------------------------------------------------------------
class LocalImagery(BaseModel):
    """Imagery from a collection of the local STAC catalog under PEARL_HOME (read from disk)."""

    source: Literal["local"] = "local"
    collection: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", examples=["demo"])


class StacImagery(BaseModel):
    """Imagery found by a STAC API search (e.g. NAIP on Planetary Computer) over a bounding box.

    The API is one the operator configured (PEARL_STAC_APIS), named by its id: the server sends requests to no URL
    a request names (an unknown id is a 422 that lists the configured ones; a `url` is refused)."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["stac"] = "stac"
    api: str = Field(
        default="default",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="id of a STAC API the operator configured; `default`: the configured default API",
        examples=["default"],
    )
    collections: list[str] = Field(min_length=1, examples=[["naip"]])
    bbox: tuple[float, float, float, float] = Field(description="lon/lat west, south, east, north")
    datetime: str | None = Field(default=None, examples=["2021-01-01/2021-12-31"])

    @model_validator(mode="before")
    @classmethod
    def _no_url(cls, value: Any) -> Any:
        if isinstance(value, dict) and "url" in value:
            raise ValueError("`url` is not accepted: name one of the configured STAC APIs by its id in `api`")
        return value


def _imagery_source(value: Any) -> str:
    """`source` picks the model; without it, a local collection is meant."""
    return value.get("source", "local") if isinstance(value, dict) else getattr(value, "source", "local")


ImagerySource = Annotated[
    Annotated[LocalImagery, Tag("local")] | Annotated[StacImagery, Tag("stac")], Discriminator(_imagery_source)
]


SchemaId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]  # a file name in assets/schemas


BASE_MODEL_REFUSED = (
    f"must be a registered model you may use ({ACCEPTED_FORMS}): a starter, e.g. {DEFAULT_BASE_MODEL}, "
    "or the model of a project you have a role in, e.g. models:/pearl-project-<id>@current"
)


def _registered_model_ref(value: str) -> str:
    """The form only (who may use which model is the project service's check); the same words as that check's."""
    try:
        parse_registered_ref(value)
    except ValueError:
        raise ValueError(BASE_MODEL_REFUSED) from None
    return value


class ProjectCreate(BaseModel):
    name: PlainText = Field(min_length=1, max_length=120)
    imagery: ImagerySource
    class_schema: SchemaId | ClassSchema = Field(
        default="chesapeake9", description="A schema id from assets/schemas (chesapeake9, chesapeake4) or a schema"
    )
    base_model: Annotated[str, AfterValidator(_registered_model_ref)] = Field(
        default=DEFAULT_BASE_MODEL,
        max_length=300,
        description="A registered model: a starter (models:/pearl-starter-<schema>@<alias> or /<version>), or the "
        "model of a project you have a role in (models:/pearl-project-<id>@<alias> or /<version>). Never a path",
        examples=[DEFAULT_BASE_MODEL],
        json_schema_extra={"pattern": f"^{REGISTERED_REF.pattern}$"},
    )


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
    partial: bool = Field(
        default=False,
        description="only the block of the AOI that was in view: the rest is being predicted (or its pass failed)",
    )


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
    role: Literal["viewer", "mapper", "owner"] | None = Field(
        default=None, description="the caller's role in the project (what the page offers them)"
    )


# -- the projects page (issue 24 item 1): the list, rename, imagery to choose from, starters ------------------------
class ProjectListItem(ProjectSummary):
    """One row of the projects page."""

    imagery_source: dict[str, Any] = Field(description="`source` local (`collection`) or stac (`api`, `collections`)")
    class_schema_id: str
    class_count: int
    label_count: int = Field(description="live labels (not deleted)")
    aoi_count: int
    last_activity: UtcDatetime = Field(description="newest label, AOI or audited action; else the creation time")
    role: Literal["viewer", "mapper", "owner"] = Field(description="the caller's role in the project")


class ProjectRename(BaseModel):
    name: PlainText = Field(min_length=1, max_length=120, examples=["Shoreline 2024"])


class LocalCollectionOut(BaseModel):
    """A collection of the server's local STAC catalog (a demo region, or imagery uploaded or ingested)."""

    id: str
    title: str
    description: str
    item_count: int
    bbox: tuple[float, float, float, float] | None = Field(default=None, description="lon/lat w, s, e, n")
    start: str | None = Field(default=None, description="first acquisition (ISO 8601), when known")
    end: str | None = None


class StacApiOut(BaseModel):
    """A STAC API the operator configured (PEARL_STAC_APIS), by id: its URL is never sent to the page."""

    id: str
    default: bool


class StacItemOut(BaseModel):
    id: str
    collection: str
    datetime: str | None
    bbox: tuple[float, float, float, float]
    geometry: dict[str, Any] | None = None
    thumbnail: str = Field(description="this app's URL of a small PNG rendered from the item's image")


class StacSearchOut(BaseModel):
    api: str
    items: list[StacItemOut]
    more: bool = Field(description="more items matched than `limit`: narrow the view or the dates")


class StarterOut(BaseModel):
    """A starter model a new project can begin with (its class schema comes with it)."""

    name: str = Field(examples=["pearl-starter-chesapeake9"])
    base_model: str = Field(description="the reference to send as ProjectCreate.base_model")
    class_schema_id: str
    class_titles: list[str]
    holdout_f1: float | None = Field(description="macro F1 on the holdout region; null when not known here")
    available: bool = Field(description="registered in MLflow or stored on this server: a project maps at once")
    source: Literal["registry", "local", "shipped", "none"] = Field(
        description="where the figures come from: the MLflow registry, the server's copy, the shipped file, nothing"
    )
    version: str | None = None


# -- classes --------------------------------------------------------------------------------------------------
class ClassCreate(BaseModel):
    name: PlainText = Field(
        max_length=48, description="snake_case identifier, e.g. solar_panels", examples=["solar_panels"]
    )
    title: PlainText | None = Field(default=None, max_length=80)
    color: str = Field(max_length=7, description="#rrggbb", examples=["#ff7f0e"])


class ClassUpdate(BaseModel):
    name: PlainText | None = Field(default=None, max_length=48, description="new snake_case name")
    title: PlainText | None = Field(default=None, max_length=80)
    color: str | None = Field(default=None, max_length=7, description="#rrggbb")


# -- AOIs and labels ------------------------------------------------------------------------------------------
class _ViewRequest(BaseModel):
    """A request that carries the mapper's map view: the part of the AOI nearest its centre is shown first."""

    view: tuple[float, float, float, float] | None = Field(
        default=None,
        description="the mapper's map view, lon/lat (west, south, east, north): the part of the AOI nearest its "
        "centre is predicted and shown first",
        examples=[[-76.52, 38.97, -76.49, 38.99]],
    )

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.view is not None:
            west, south, east, north = self.view
            if not (-180 <= west <= east <= 180 and -90 <= south <= north <= 90):
                raise ValueError(
                    f"view {self.view} is not lon/lat (west, south, east, north) with west <= east, south <= north"
                )
        return self


class InferenceRequest(_ViewRequest):
    pass


class AoiCreate(BaseModel):
    name: PlainText = Field(default="", max_length=120)
    geometry: GeoJSONGeometry
    crs: CrsName = "EPSG:4326"


class LabelCreate(BaseModel):
    class_name: PlainText = Field(max_length=48, examples=["tree_canopy"])
    geometry: GeoJSONGeometry
    aoi_id: Id | None = Field(default=None, description="AOI the label belongs to; default: the AOI containing it")
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


# -- map patches (review_app/services/patches.py) -------------------------------------------------------------------
PatchKind = Literal["fill", "checkpoint"]


class PatchCreate(BaseModel):
    """A hand correction of the map: fill a polygon with a class, or paint in another checkpoint's map there."""

    kind: PatchKind = Field(description="fill: one class inside the polygon; checkpoint: that checkpoint's map")
    geometry: GeoJSONGeometry = Field(description="a Polygon or MultiPolygon over one or more mapped AOIs")
    class_name: PlainText | None = Field(default=None, max_length=48, description="fill: the class painted")
    checkpoint: int | None = Field(
        default=None, ge=0, le=MAX_ID, description="checkpoint: the model version whose map is painted in (0: base)"
    )
    crs: CrsName = "EPSG:4326"


class PatchOut(BaseModel):
    id: int
    kind: PatchKind
    geometry: dict[str, Any]
    class_name: str | None = Field(description="fill: the class painted (its current name)")
    checkpoint: int | None = Field(description="checkpoint: the model version painted in")
    aoi_ids: list[int] = Field(description="the AOIs whose maps it changes")
    user: str = Field(description="who drew it")
    created_at: dt.datetime
    removed_at: dt.datetime | None = None


class PatchChangeOut(BaseModel):
    patch: PatchOut | None = Field(description="the patch added, removed or (undo) reverted; null: nothing to undo")
    restored: bool = Field(default=False, description="undo: true when it brought a removed patch back")
    job: JobOut | None = Field(
        default=None, description="the job re-applying the patches to the maps they touch (`prediction_updated`)"
    )


# -- jobs, models, checkpoints, metrics -----------------------------------------------------------------------
JobKind = Literal["imagery", "inference", "retrain", "restore", "compare", "patch"]
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


class RetrainRequest(_ViewRequest):
    aoi_id: Id | None = Field(default=None, description="AOI to re-predict first; default: every AOI with labels")


# The names of ml.strategies.STRATEGIES, the registry: an enum in the OpenAPI schema (and so a union of string
# literals in the front-end's generated types) that a new strategy joins by its registry entry alone.
if TYPE_CHECKING:
    StrategyName = str
else:
    StrategyName = Literal[tuple(STRATEGIES)]


class StrategyIn(BaseModel):
    strategy: StrategyName


class StrategyOption(BaseModel):
    name: StrategyName
    title: str = Field(description="what a selector shows")
    description: str = Field(description="when to choose it")


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

    @classmethod
    def empty(cls, model_version: int | None, *, n_labels: int = 0, message: str) -> MetricsOut:
        """No figures (no model, or too few labels to measure it): `message` says why."""
        return cls(
            model_version=model_version,
            method="none",
            per_class=[],
            confusion=[],
            classes=[],
            mean_f1=None,
            accuracy=None,
            n_labels=n_labels,
            n_samples=0,
            message=message,
        )


class CheckpointCreate(BaseModel):
    name: PlainText = Field(min_length=1, max_length=80, examples=["after water fix"])


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


# -- compare two versions as maps (routers/compare.py) -------------------------------------------------------------
class CompareMapsRequest(BaseModel):
    """Two (AOI, model version) maps: A (`aoi`, `a`) and B (`aoi_b`, default `aoi`; `b`), B of this project or of
    `project_b` (a project of the same place on imagery of another date; the caller needs a role in it too)."""

    aoi: Id = Field(description="AOI of map A (and of B unless aoi_b is given)")
    a: int = Field(ge=0, le=MAX_ID, description="model version (checkpoint id) of map A; 0: the base model")
    b: int = Field(ge=0, le=MAX_ID, description="model version (checkpoint id) of map B (of project_b when given)")
    aoi_b: Id | None = Field(
        default=None, description="AOI of map B: another AOI over the same place (e.g. imagery of another date)"
    )
    project_b: Id | None = Field(
        default=None, description="project of map B (its aoi_b and version b); default: this project"
    )


class CompareChangeRow(BaseModel):
    """Pixels of class `from_class` in A that are `to_class` in B."""

    from_class: str
    to_class: str
    pixels: int
    hectares: float


class CompareMapsOut(BaseModel):
    aoi: int
    aoi_b: int
    project_b: int = Field(description="the project of map B (this one unless asked for another)")
    a: int
    b: int
    rows: list[CompareChangeRow] = Field(description="changed pairs only, largest area first")
    unchanged_hectares: float
    changed_hectares: float
    compared_hectares: float = Field(description="the overlap mapped in both (nodata in either is left out)")
    pixel_m2: float
    bounds: tuple[float, float, float, float] = Field(description="lon/lat of the compared overlap")
    tilejson_a: str
    tilejson_b: str
    tilejson_change: str


# -- websocket events -------------------------------------------------------------------------------------------
# Server -> browser messages on /api/projects/{id}/ws, one model per `type`; publishers build them
# (EventHub.publish takes a model) and `WsEvent` is their union. An OpenAPI document has no place for a
# websocket's messages: routers/ws.py adds `WsEvent` and its members to the components of the app's schema, where
# the front-end's generated types (review_app/frontend/src/api-types.ts) pick them up.
class _WsEventBase(BaseModel):
    # `type` has a default (publishers need not repeat it) but is always sent: required in the schema.
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


class HelloEvent(_WsEventBase):
    """The first message of every socket: the project and its jobs under way."""

    type: Literal["hello"] = "hello"
    project_id: int
    active_jobs: list[JobOut]


class JobEvent(JobOut):
    """A job's progress or state changed (the job as GET /api/jobs/{id} gives it)."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)
    type: Literal["job"] = "job"


class ImageryReadyEvent(_WsEventBase):
    """The project's imagery mosaic is ready."""

    type: Literal["imagery_ready"] = "imagery_ready"
    bounds: tuple[float, float, float, float] = Field(description="lon/lat bounds")


class ModelStatusEvent(_WsEventBase):
    """The project's model loaded, or says why not."""

    type: Literal["model_status"] = "model_status"
    ready: bool
    message: str


class PredictionUpdatedEvent(_WsEventBase):
    """A new prediction layer of an AOI: fetch its tiles (the TileJSON links of `version`)."""

    type: Literal["prediction_updated"] = "prediction_updated"
    aoi_id: int
    version: int = Field(description="layer version: bump -> refetch tiles")
    model_version: int | None
    job_id: str
    tilejson: TileJsonLinks
    partial: bool = Field(
        default=False,
        description="only the block of the AOI in view (a new AOI's first block, or a retrain's first re-predicted "
        "block): the whole AOI follows as the next version; draw it over the AOI's previous layer until then",
    )
    embeddings: bool = Field(
        default=True, description="the AOI's embeddings are cached: retrains and suggestions can use it"
    )


class MetricsUpdatedEvent(_WsEventBase):
    """New metrics of the current model (GET /metrics)."""

    type: Literal["metrics_updated"] = "metrics_updated"
    model_version: int


class LabelsChangedEvent(_WsEventBase):
    """The project's labels changed (GET /labels)."""

    type: Literal["labels_changed"] = "labels_changed"


class ClassesChangedEvent(_WsEventBase):
    """The project's classes changed (GET the project)."""

    type: Literal["classes_changed"] = "classes_changed"


class ErrorEvent(_WsEventBase):
    """Something failed; `job_id` names the job when a job did (its `job` event carries the same error)."""

    type: Literal["error"] = "error"
    message: str
    job_id: str | None = None


class PingEvent(_WsEventBase):
    """Sent on an idle socket, so proxies keep it open."""

    type: Literal["ping"] = "ping"


WsEventModel = (
    HelloEvent
    | JobEvent
    | ImageryReadyEvent
    | ModelStatusEvent
    | PredictionUpdatedEvent
    | MetricsUpdatedEvent
    | LabelsChangedEvent
    | ClassesChangedEvent
    | ErrorEvent
    | PingEvent
)
WsEvent = Annotated[WsEventModel, Field(discriminator="type")]


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
    email: str | None = Field(default=None, description="the e-mail their identity provider gave at their last sign-in")


class MemberIn(BaseModel):
    """A member by `subject`, or by the `email` of a user who has signed in once (exactly one of the two)."""

    subject: PlainText | None = Field(
        default=None, min_length=1, max_length=300, description="the user's subject: 'oidc:<issuer>#<sub>'"
    )
    email: PlainText | None = Field(
        default=None,
        min_length=3,
        max_length=320,
        description="the e-mail of a user who has signed in once (their identity provider gave it)",
        examples=["ana@example.org"],
    )
    role: RoleName
    name: PlainText | None = Field(
        default=None,
        max_length=200,
        description="display name of a user not seen yet, until their own sign-in; an existing user keeps theirs",
    )

    @model_validator(mode="after")
    def _subject_or_email(self) -> Self:
        if (self.subject is None) == (self.email is None):
            raise ValueError("name the member by `subject` or by `email` (exactly one of them)")
        return self


class TokenCreate(BaseModel):
    name: PlainText = Field(min_length=1, max_length=80, examples=["nightly export script"])
    days: int = Field(default=90, ge=1, le=MAX_TOKEN_DAYS, description="lifetime in days")


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


# -- read-only share links (review_app/services/shares.py) ----------------------------------------------------------
MAX_SHARE_AOIS = 100  # a request's list; each must be an AOI of the project (PEARL_QUOTA_AOIS bounds them anyway)


class ShareCreate(BaseModel):
    title: PlainText = Field(min_length=1, max_length=120, examples=["Farm survey, June"])
    aoi_ids: list[Annotated[int, Field(ge=1, le=MAX_ID)]] = Field(
        min_length=1, max_length=MAX_SHARE_AOIS, description="AOIs of the project whose current maps are shared"
    )
    days: int = Field(default=30, ge=1, description="lifetime in days, at most PEARL_SHARE_MAX_DAYS (default 365)")
    listed: bool = Field(default=False, description="list it on the public-maps page (/maps)")


class ShareOut(BaseModel):
    id: int
    title: str
    aoi_ids: list[int]
    area_ha: float
    listed: bool
    created_at: UtcDatetime
    expires_at: UtcDatetime
    revoked_at: UtcDatetime | None = None
    state: Literal["live", "expired", "revoked"]
    url: str | None = Field(default=None, description="the link, for listed shares (others: shown once, at creation)")


class ShareIssued(ShareOut):
    token: str = Field(description="shown once: the link is /share/<token>")
    url: str


class ShareClass(BaseModel):
    index: int
    name: str
    title: str
    color: str


class ShareArea(BaseModel):
    class_index: int
    class_name: str
    title: str
    pixels: int
    area_m2: float
    area_ha: float
    percent: float


class ShareMap(BaseModel):
    """One AOI's frozen map in a share: what the shared page shows and downloads."""

    aoi_id: int
    name: str
    geometry: dict[str, Any]
    bounds: tuple[float, float, float, float]
    model_version: int | None
    layer_version: int
    areas: list[ShareArea]
    tilejson: str
    download: str
    areas_csv: str


class ShareView(BaseModel):
    """A share as its link shows it: no labels, members, other versions or project details."""

    title: str
    created_at: UtcDatetime
    expires_at: UtcDatetime
    bounds: tuple[float, float, float, float]
    legend: list[ShareClass]
    maps: list[ShareMap]
    imagery_tilejson: str


class PublicMapOut(BaseModel):
    title: str
    area_ha: float
    created_at: UtcDatetime
    url: str


# -- imagery uploads (issue 24 item 2): chunked GeoTIFF uploads, their check, and their ingest ----------------------
UploadState = Literal["receiving", "ready", "rejected"]
IngestState = Literal["queued", "running", "done", "failed"]


class UploadCreate(BaseModel):
    """Announce a file: its name (for the item id and messages) and its exact size in bytes."""

    model_config = ConfigDict(extra="forbid")

    filename: PlainText = Field(min_length=1, max_length=200, examples=["rotterdam.tif"])
    size: int = Field(ge=0, le=1 << 50, description="bytes; at most PEARL_UPLOAD_MAX_BYTES")


class UploadInspection(BaseModel):
    """What the server read from a complete upload: enough for the page to show it and ask for a band mapping."""

    width: int
    height: int
    count: int = Field(description="number of bands")
    dtype: str
    crs: str
    bounds: tuple[float, float, float, float] = Field(description="lon/lat w, s, e, n")
    descriptions: list[str] = Field(description="per band, '' where the file has none")
    colorinterp: list[str] = Field(description="per band colour interpretation, '' where undefined")
    band_map: list[int] | None = Field(
        description="1-based bands of red, green, blue, NIR when the file says; null: the user must choose"
    )
    band_note: str = Field(default="", description="why the file's bands could not be mapped by themselves")


class UploadOut(BaseModel):
    id: str
    filename: str
    size: int
    received: int = Field(description="bytes the server has: the next chunk starts here")
    chunk_bytes: int = Field(description="largest chunk a PUT may carry")
    state: UploadState
    error: str | None = Field(default=None, description="why a rejected file was refused, and what is accepted")
    inspection: UploadInspection | None = None
    created_at: UtcDatetime


class UploadFileIngest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    upload_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    band_map: tuple[int, int, int, int] | None = Field(
        default=None, description="1-based source bands for red, green, blue, NIR; default: what the file says"
    )

    @model_validator(mode="after")
    def _distinct_bands(self) -> Self:
        if self.band_map is not None and len(set(self.band_map)) != 4:
            raise ValueError("band_map must name four different bands for red, green, blue and NIR")
        return self


class IngestCreate(BaseModel):
    """Ingest complete uploads into a new local collection `upload-<your user id>-<slug of name>`."""

    model_config = ConfigDict(extra="forbid")

    name: PlainText = Field(min_length=1, max_length=80, examples=["Rotterdam 2019"])
    files: list[UploadFileIngest] = Field(min_length=1, max_length=100)


class IngestOut(BaseModel):
    id: str
    collection: str = Field(description="the local collection the files go into; use it as a project's imagery")
    state: IngestState
    progress: float = 0.0
    message: str = ""
    error: str | None = None


# Answers any route may give (the guard, the limits): documented on every route of the API.
COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _error("not signed in: a bearer token (OIDC or a personal API token) is missing, invalid or expired"),
    403: _error("a member of the project without the role this needs"),
    404: _error("unknown id, or a project the caller is not a member of"),
    413: _error("request body larger than the server accepts"),
    422: _error("the request does not validate; the message says what is accepted"),
    429: _error("too many writes, or a retrain/inference already waiting; see Retry-After"),
    431: _error("a request header (e.g. Authorization) longer than the server accepts"),
}
