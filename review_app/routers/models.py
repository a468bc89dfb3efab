"""Live retrain, checkpoints (list, save with a name, restore, compare), metrics of the current model, jobs."""

from __future__ import annotations

from fastapi import APIRouter, Query, status

from pearl_pipelines.ml.strategies import STRATEGIES
from review_app.deps import (
    MAX_ID,
    CheckpointId,
    ClassesDep,
    JobsDep,
    ModelsDep,
    ProjectDep,
    ProjectId,
)
from review_app.schemas import (
    CheckpointCreate,
    CheckpointOut,
    CompareOut,
    CompareRow,
    ErrorOut,
    JobOut,
    MetricsOut,
    RetrainRequest,
    StrategyIn,
    StrategyOption,
    StrategyOut,
)
from review_app.workspace import ModelVersionInfo

router = APIRouter(prefix="/api/projects/{project_id}", tags=["models"])
jobs_router = APIRouter(prefix="/api/jobs", tags=["jobs"])
ERRORS: dict[int | str, dict] = {404: {"model": ErrorOut}, 409: {"model": ErrorOut}, 422: {"model": ErrorOut}}


@router.post("/retrain", response_model=JobOut, status_code=status.HTTP_202_ACCEPTED, responses=ERRORS)
def retrain(models: ModelsDep, project_id: ProjectId, body: RetrainRequest | None = None) -> JobOut:
    """Fit a new head on the labels over cached embeddings; the AOI in view is re-predicted first and announced
    on the websocket (`prediction_updated`), then metrics follow (`metrics_updated`). Refused (422) without labels.
    A large AOI shows first the block around the centre of `view` (the mapper's map; default the AOI's centre) as a
    `partial` layer version, then the whole AOI as the next one."""
    request = body or RetrainRequest()
    return models.start_retrain(project_id, request.aoi_id, request.view).out()


def _strategy_out(name: str) -> StrategyOut:
    """The project's strategy and every one of the registry (ml/strategies.py), with its title and description."""
    options = [StrategyOption(name=n, title=c.title, description=c.description) for n, c in STRATEGIES.items()]
    return StrategyOut(strategy=name, available=options)


@router.get("/strategy", response_model=StrategyOut, responses=ERRORS)
def get_strategy(models: ModelsDep, project: ProjectDep) -> StrategyOut:
    """The retraining strategy of this project and the ones it can switch to."""
    return _strategy_out(models.strategy(project.id))


@router.put("/strategy", response_model=StrategyOut, responses=ERRORS)
def set_strategy(models: ModelsDep, project: ProjectDep, body: StrategyIn) -> StrategyOut:
    """Choose how the next retrains fit their head (the current map stays until the next retrain)."""
    models.set_strategy(project.id, body.strategy)
    return _strategy_out(body.strategy)


def _checkpoint(info: ModelVersionInfo, current: int | None) -> CheckpointOut:
    return CheckpointOut(
        id=info.id,
        name=info.name,
        kind=info.kind,
        parent=info.parent,
        created_at=info.created_at,
        n_labels=info.n_labels,
        label_set=info.label_set,
        classes=info.classes,
        mean_f1=info.metrics.mean_f1 if info.metrics else None,
        current=info.id == current,
        saved=info.name is not None,
        mlflow_version=info.mlflow_version,
    )


@router.get("/checkpoints", response_model=list[CheckpointOut], responses=ERRORS)
def list_checkpoints(
    models: ModelsDep,
    project: ProjectDep,
    all_versions: bool = Query(default=False, description="include unnamed retrain versions"),
) -> list[CheckpointOut]:
    """Saved checkpoints (and the base model), newest first; the current model is always listed."""
    current = models.current_version(project.id)
    return [_checkpoint(m, current) for m in models.checkpoints(project.id, all_versions=all_versions)]


@router.post("/checkpoints", response_model=CheckpointOut, status_code=status.HTTP_201_CREATED, responses=ERRORS)
def save_checkpoint(models: ModelsDep, project_id: ProjectId, body: CheckpointCreate) -> CheckpointOut:
    """Name the current model as a checkpoint: the alias `checkpoint-<name>` of its version of MLflow's
    `pearl-project-<id>` (set as soon as MLflow has the version)."""
    info = models.save_checkpoint(project_id, body.name)
    return _checkpoint(info, models.current_version(project_id))


@router.post(
    "/checkpoints/{checkpoint_id}/restore",
    response_model=JobOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses=ERRORS,
)
def restore_checkpoint(models: ModelsDep, project_id: ProjectId, checkpoint_id: CheckpointId) -> JobOut:
    """Make a checkpoint the current model and re-predict the AOIs with it (from cached embeddings)."""
    return models.start_restore(project_id, checkpoint_id).out()


@router.get("/checkpoints/compare", response_model=CompareOut, responses=ERRORS)
def compare_checkpoints(
    *,
    models: ModelsDep,
    classes: ClassesDep,
    project_id: ProjectId,
    a: int = Query(ge=0, le=MAX_ID, description="checkpoint id"),
    b: int = Query(ge=0, le=MAX_ID, description="checkpoint id"),
) -> CompareOut:
    """Per-class F1 of two checkpoints side by side (each measured on the labels it was evaluated with)."""
    current = models.current_version(project_id)
    info_a, info_b = models.checkpoint_info(project_id, a), models.checkpoint_info(project_id, b)
    f1_a = {c.name: c.f1 for c in info_a.metrics.per_class} if info_a.metrics else {}
    f1_b = {c.name: c.f1 for c in info_b.metrics.per_class} if info_b.metrics else {}
    names = [n for n in classes.get(project_id).names if n in f1_a or n in f1_b]
    rows = []
    for name in names:
        fa, fb = f1_a.get(name), f1_b.get(name)
        rows.append(CompareRow(class_name=name, f1_a=fa, f1_b=fb, delta=None if fa is None or fb is None else fb - fa))
    return CompareOut(a=_checkpoint(info_a, current), b=_checkpoint(info_b, current), rows=rows)


@router.get("/metrics", response_model=MetricsOut, responses=ERRORS)
def current_metrics(models: ModelsDep, project: ProjectDep) -> MetricsOut:
    """Per-class F1 and confusion matrix of the current model (grouped cross-validation over the labels)."""
    return models.metrics(project.id)


@jobs_router.get("/{job_id}", response_model=JobOut, responses={404: {"model": ErrorOut}})
def get_job(jobs: JobsDep, job_id: str) -> JobOut:
    """A job's state (the browser gets the same on the websocket; this is for scripts)."""
    return jobs.get(job_id).out()
