"""Live retrain, checkpoints (list, save with a name, restore, compare), metrics of the current model, jobs."""

from __future__ import annotations

from fastapi import APIRouter, Query, status

from review_app.deps import (
    MAX_ID,
    CheckpointId,
    ClassesDep,
    JobsDep,
    LabelsDep,
    ModelsDep,
    ProjectDep,
    ProjectId,
    StatesDep,
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
    on the websocket (`prediction_updated`), then metrics follow (`metrics_updated`). Refused (422) without labels."""
    return models.start_retrain(project_id, (body or RetrainRequest()).aoi_id).out()


STRATEGY_HELP = {
    "logistic_regression": "linear head, refit in well under a second: the default",
    "mlp": "one hidden layer: more capacity, pays off with many labels",
    "spatial_ensemble": "local heads per neighbourhood of labels: for maps whose look changes from place to place",
}


def _strategy_out(name: str) -> StrategyOut:
    options = [StrategyOption(name=n, description=d) for n, d in STRATEGY_HELP.items()]  # type: ignore[arg-type]
    return StrategyOut(strategy=name, available=options)  # type: ignore[arg-type]


@router.get("/strategy", response_model=StrategyOut, responses=ERRORS)
def get_strategy(states: StatesDep, project: ProjectDep) -> StrategyOut:
    """The retraining strategy of this project and the ones it can switch to."""
    return _strategy_out(states.get(project.id).strategy)


@router.put("/strategy", response_model=StrategyOut, responses=ERRORS)
def set_strategy(states: StatesDep, project: ProjectDep, body: StrategyIn) -> StrategyOut:
    """Choose how the next retrains fit their head (the current map stays until the next retrain)."""
    with states.update(project.id) as state:
        state.strategy = body.strategy
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
    states: StatesDep,
    project: ProjectDep,
    all_versions: bool = Query(default=False, description="include unnamed retrain versions"),
) -> list[CheckpointOut]:
    """Saved checkpoints (and the base model), newest first; the current model is always listed."""
    state = states.get(project.id)
    infos = sorted(state.models.values(), key=lambda m: m.id, reverse=True)
    return [
        _checkpoint(m, state.current_model)
        for m in infos
        if all_versions or m.name is not None or m.id == state.current_model
    ]


@router.post("/checkpoints", response_model=CheckpointOut, status_code=status.HTTP_201_CREATED, responses=ERRORS)
def save_checkpoint(
    models: ModelsDep, states: StatesDep, project_id: ProjectId, body: CheckpointCreate
) -> CheckpointOut:
    """Name the current model as a checkpoint: the alias `checkpoint-<name>` of its version of MLflow's
    `pearl-project-<id>` (set as soon as MLflow has the version)."""
    info = models.save_checkpoint(project_id, body.name)
    return _checkpoint(info, states.get(project_id).current_model)


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
    states: StatesDep,
    classes: ClassesDep,
    project_id: ProjectId,
    a: int = Query(ge=0, le=MAX_ID, description="checkpoint id"),
    b: int = Query(ge=0, le=MAX_ID, description="checkpoint id"),
) -> CompareOut:
    """Per-class F1 of two checkpoints side by side (each measured on the labels it was evaluated with)."""
    current = states.get(project_id).current_model
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
def current_metrics(states: StatesDep, labels: LabelsDep, project: ProjectDep) -> MetricsOut:
    """Per-class F1 and confusion matrix of the current model (grouped cross-validation over the labels)."""
    state = states.get(project.id)
    info = state.models.get(state.current_model) if state.current_model is not None else None
    if info is not None and info.metrics is not None:
        return info.metrics
    return MetricsOut(
        model_version=state.current_model,
        method="none",
        per_class=[],
        confusion=[],
        classes=[],
        mean_f1=None,
        accuracy=None,
        n_labels=len(labels.of_project(project.id)),
        n_samples=0,
        message="no metrics yet: add labels of two classes or more and retrain",
    )


@jobs_router.get("/{job_id}", response_model=JobOut, responses={404: {"model": ErrorOut}})
def get_job(jobs: JobsDep, job_id: str) -> JobOut:
    """A job's state (the browser gets the same on the websocket; this is for scripts)."""
    return jobs.get(job_id).out()
