"""What each worker task takes (its Pipes extras) and what it sends back, as pydantic models: the one contract
between the callers (Dagster assets, the review app) and the worker (`worker.tasks`).

A caller builds the task's input model and passes `model.extras()` (its JSON dump) as the Pipes extras; the worker
parses them with `model_validate`, so a missing, unknown (`extra="forbid"`) or malformed field fails at the start of
the task with pydantic's message naming it. Paths are keys relative to PEARL_HOME (absolute ones are taken as they
are), so a pod that mounts PEARL_HOME elsewhere resolves them against its own.

Light on purpose (pydantic and the class schema only): Dagster definitions and the review app import it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pearl_pipelines.classes import ClassSchema
from pearl_pipelines.ml.lineage import task_run_tags

PROGRESS_INTERVAL_S = 0.2  # predict-aoi: at most this often a progress message (plus the last window)


class Contract(BaseModel):
    """A task's input: unknown fields are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def extras(self) -> dict[str, Any]:
        """The Pipes extras of this input (JSON, field aliases as the worker reads them)."""
        return self.model_dump(mode="json", by_alias=True)


class TaskInput(Contract):
    """Fields every task takes: where it was started from, for its MLflow run's tags."""

    asset: str = ""
    dagster_run_id: str = ""
    tags: dict[str, str] = Field(default_factory=dict)  # more MLflow run tags

    def run_tags(self, task: str) -> dict[str, str]:
        return task_run_tags(task, dagster_run_id=self.dagster_run_id, asset=self.asset, extra=self.tags)


class MlflowTaskInput(TaskInput):
    mlflow_uri: str  # the tracking server as the worker sees it (`GpuCompute.worker_extras` swaps it in k8s mode)


class RegisteredRef(Contract):
    """A pinned registered-model version."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    name: str
    version: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


class Tile(Contract):
    """A tile to predict: head-only over `cache_dir` when given (and covering it), else full inference."""

    key: str
    tile_path: str
    out_dir: str | None = None  # retrain: the worker names it after the version it registered
    cache_dir: str | None = None


# -- inputs ---------------------------------------------------------------------------------------------------
class ProbeInput(TaskInput):
    echo: str = ""


class TrainStarterInput(MlflowTaskInput):
    model_name: str
    schema_id: str
    source: Literal["train", "shipped"] = "train"
    train_regions: list[str]
    holdout_regions: list[str]
    catalog_dir: str | None = None
    report_dir: str = "reports"
    arch: str | None = None
    recipe: dict[str, Any] = Field(default_factory=dict)  # overrides of `ml.starter.recipe_for` (`train`: nested)


class EmbedAoi(Contract):
    aoi_id: int
    geometry: dict[str, Any]  # lon/lat GeoJSON
    tile_paths: list[str]
    cache_dir: str
    predictions_dir: str


class EmbedInput(MlflowTaskInput):
    model: RegisteredRef
    aois: list[EmbedAoi]


class RetrainInput(MlflowTaskInput):
    project_id: int
    label_set: str  # GeoParquet of the label set
    label_set_digest: str  # the label store's digest of it
    class_schema: ClassSchema = Field(alias="schema")
    parent: RegisteredRef
    base: RegisteredRef | None = None  # the version whose backbone and replay set the head uses (default: parent)
    champion: RegisteredRef | None = None  # the version to beat on the held-out labels
    adopt: RegisteredRef | None = None  # the review app registered a version for this label set already
    caches: list[str]
    holdout_fraction: float = 0.2
    seed: int = 0
    aliases: list[str] = Field(default_factory=list)
    report_dir: str
    predict_tiles: list[Tile] = Field(default_factory=list)  # re-predicted head-only right after registering

    @property
    def base_ref(self) -> RegisteredRef:
        return self.base or self.parent


class PredictInput(MlflowTaskInput):
    model: RegisteredRef
    tiles: list[Tile]
    report_check: bool = True  # False: the caller validates the COGs (e.g. the map step, its mosaic)


class PredictAoiInput(TaskInput):
    base_model: str  # the project's base model.pt
    version_dir: str | None = None  # the head version folder it maps with (default: the base model's own head)
    imagery: str
    aoi: dict[str, Any]  # lon/lat GeoJSON
    out_dir: str
    embeddings_dir: str
    model_id: str | None = None
    progress_interval_s: float = PROGRESS_INTERVAL_S
    # Predict the AOI's first block (ml/preview.py: one window near `view`) into this folder before the whole AOI,
    # and say so (`FirstBlockResult`); no folder: the whole AOI only.
    first_out_dir: str | None = None
    view: tuple[float, float, float, float] | None = None  # lon/lat (west, south, east, north) the mapper sees


# -- outputs (custom messages) --------------------------------------------------------------------------------
class TileResult(BaseModel):
    """A predicted tile (custom message `kind: tile`)."""

    kind: Literal["tile"] = "tile"
    tile_key: str
    classes: str
    confidence: str
    mode: str  # head | full | precomputed
    seconds: float
    class_pixels: dict[str, int]
    width: int
    height: int


class AoiProgress(BaseModel):
    """Windows done in a predict-aoi task (custom message `kind: progress`), per stage: the first block, the AOI."""

    kind: Literal["progress"] = "progress"
    done: int
    total: int
    stage: Literal["first_block", "aoi"] = "aoi"


class FirstBlockResult(BaseModel):
    """The first block of a predict-aoi task is written (custom message `kind: first_block`): the caller can show
    it while the whole AOI runs. Not sent when the AOI is small enough to predict whole at once."""

    kind: Literal["first_block"] = "first_block"
    out_dir: str
    seconds: float
    windows: int
    height: int
    width: int


class AoiSummary(BaseModel):
    """The end of a predict-aoi task (custom message `kind: summary`)."""

    kind: Literal["summary"] = "summary"
    pid: int
    forked_from_warm_server: bool = False
    torch_threads: int | None = None
    seconds: float
    windows: int = 0
    height: int
    width: int
