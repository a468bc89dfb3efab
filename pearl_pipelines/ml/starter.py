"""Starter models: train on the `train` regions, evaluate on `holdout`, log to MLflow, register.

PEARL ships a 9-class and a 4-class Chesapeake starter model (F1 ~0.80); these are ours. Each is trained
on the reference labels of the regions whose role is `train` (never demo, holdout or shifted), scored
densely on the `holdout` region, saved with its replay set under `PEARL_HOME/models/starter-<schema>-<arch>/`,
logged as one MLflow run (params, per-epoch loss/accuracy, holdout per-class metrics, confusion matrix,
model + replay artifacts) and registered as `pearl-starter-<schema>` with alias `starter` (and `champion`
when the model has none yet).

Reproduce the registered starter models (regions are generated and an MLflow server is started when
missing; the recipes below are the defaults, seed 0):

    PEARL_HOME=.pearl .venv/bin/pearl starter --schema all          # add --ship to refresh assets/starters
    PEARL_HOME=.pearl .venv/bin/pearl starter --schema all --shipped  # register the shipped weights instead
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from pydantic import BaseModel, Field

from pearl_pipelines.classes import load_schema
from pearl_pipelines.geo.regions import LABEL_SCHEMAS, Region, load_regions
from pearl_pipelines.layout import Layout
from pearl_pipelines.ml.data import LabelledRaster, band_stats, load_labelled_rasters
from pearl_pipelines.ml.embeddings import backbone_digest
from pearl_pipelines.ml.features import DEFAULT_FEATURES
from pearl_pipelines.ml.lineage import experiment_id, mlflow_client
from pearl_pipelines.ml.metrics import MetricsReport, confusion_figure
from pearl_pipelines.ml.models import LandcoverModel, ModelSpec, load_model, save_model, with_features
from pearl_pipelines.ml.precision import PrecisionChoice
from pearl_pipelines.ml.refs import CHAMPION_ALIAS, starter_model_name
from pearl_pipelines.ml.registry import MODEL_ARTIFACT_PATH, MODEL_FILE, ModelRegistry
from pearl_pipelines.ml.replay import REPLAY_FILE, ReplaySet, build_replay_set
from pearl_pipelines.ml.shipped import export_shipped, file_digest, load_shipped, shipped_path
from pearl_pipelines.ml.tracking import (
    CONFUSION_ARTIFACT,
    METRICS_ARTIFACT,
    TAG_BASE_MODEL,
    TAG_SCHEMA,
    TAG_VERSION,
)
from pearl_pipelines.ml.train import (
    EpochStats,
    TrainConfig,
    evaluate_rasters,
    seed_everything,
    train_model,
    training_precision,
)
from pearl_pipelines.ml.versions import ModelVersion
from pearl_pipelines.ml.zero_shot import ZeroShotFit, ZeroShotRecipe, fit_zero_shot_head
from pearl_pipelines.settings import Settings, get_settings
from pearl_pipelines.synthetic.regions import build_region

STARTER_SCHEMAS = LABEL_SCHEMAS  # every schema the regions carry reference labels for
EXPERIMENT = "pearl-starter-models"
STARTER_ALIAS = "starter"
TRAIN_ROLE = "train"
HOLDOUT_REGION = "holdout"


class StarterRecipe(BaseModel):
    """Architecture and training settings of one starter model."""

    arch: str
    embed_dim: int = 64
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    train: TrainConfig = Field(default_factory=TrainConfig)
    replay_per_class: int = 500
    # Training items (1 km^2 each) the replay set is drawn from: 4 of the 12 hold every class, and embedding
    # all 12 with the wide embedding cost ~90 s of a first run.
    replay_images: int | None = 4
    # Feature groups embedded beside the learned ones once trained (ml/features.py): the head starts with zero
    # weight on them, so the starter's own map is unchanged, and every retrain can use them.
    features: list[str] = Field(default_factory=lambda: list(DEFAULT_FEATURES))
    # The head a starter is registered with: fitted on the transferable feature groups of domain-randomised
    # patches (ml/zero_shot.py), so its first map holds on real imagery. patches=0 keeps the trained head.
    zero_shot: ZeroShotRecipe = ZeroShotRecipe()  # pydantic copies it per instance


# Chosen on a validation split of the training items (20 % of 500 px blocks, never holdout). The U-Net is
# narrow and deep (16 base features, 4 levels: 1.9 M parameters, a 140 px receptive field): on this CPU it
# trains 3x faster per step than 32 x 3 levels and tells roofs from roads by their shape and shadows.
# bfloat16 autocast runs 1.3x (U-Net) to 2.2x (FCN) faster on CPUs with AVX512-BF16 and ~10x slower (emulated)
# on CPUs without it, so precision is `auto`: measured per machine (`ml.precision`). Half the patches are
# centred on a random class so that barren, shrubland and structures (1-3 % of pixels) are seen often.
_UNET = {"base": 16, "depth": 4}


def _train(epochs: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, steps_per_epoch=100, class_balance=0.5, precision="auto")


RECIPES: dict[tuple[str, str], StarterRecipe] = {
    ("chesapeake9", "fcn"): StarterRecipe(arch="fcn", train=_train(12)),
    ("chesapeake9", "unet"): StarterRecipe(arch="unet", arch_kwargs=_UNET, train=_train(20)),
    ("chesapeake4", "fcn"): StarterRecipe(arch="fcn", train=_train(12)),
    ("chesapeake4", "unet"): StarterRecipe(arch="unet", arch_kwargs=_UNET, train=_train(12)),
}
DEFAULT_ARCH: dict[str, str] = {"chesapeake9": "unet", "chesapeake4": "fcn"}


def starter_dir(settings: Settings, schema_id: str, arch: str) -> Path:
    return settings.layout.path(Layout.starter(schema_id, arch))


def recipe_for(schema_id: str, arch: str | None = None) -> StarterRecipe:
    if schema_id not in DEFAULT_ARCH:
        raise KeyError(f"no starter recipe for schema {schema_id!r}; known: {', '.join(DEFAULT_ARCH)}")
    arch = arch or DEFAULT_ARCH[schema_id]
    if (schema_id, arch) not in RECIPES:
        known = sorted({a for _, a in RECIPES})
        raise KeyError(f"no starter recipe for architecture {arch!r}; known: {', '.join(known)}")
    return RECIPES[(schema_id, arch)].model_copy(deep=True)


@dataclass
class StarterResult:
    schema_id: str
    arch: str
    model_name: str
    model_version: str
    experiment_id: str
    run_id: str
    model_path: Path
    replay_path: Path
    holdout: MetricsReport
    train_seconds: float
    train_cpu_seconds: float
    history: list[EpochStats]
    became_champion: bool
    precision: PrecisionChoice
    recipe: StarterRecipe


def ensure_regions(settings: Settings, names: Sequence[str], *, scale: float = 1.0) -> dict[str, Region]:
    """Build the named synthetic regions that are missing from the local catalog; returns them by name."""
    regions = load_regions(settings.assets_dir)
    unknown = [n for n in names if n not in regions]
    if unknown:
        raise KeyError(f"unknown region(s) {', '.join(unknown)}; known: {', '.join(regions)}")
    for name in names:
        if not (settings.catalog_dir / name / "collection.json").is_file():
            build_region(regions[name], settings.catalog_dir, scale=scale, show_progress=True)
    return {n: regions[n] for n in names}


def training_regions(settings: Settings) -> list[str]:
    """Regions whose role is `train` (demo, holdout and shifted are never trained on)."""
    return [r.name for r in load_regions(settings.assets_dir).values() if r.properties.role == TRAIN_ROLE]


def _params(schema_id: str, recipe: StarterRecipe, train: Sequence[str], holdout: Sequence[str]) -> list[Param]:
    params: dict[str, Any] = {
        "schema_id": schema_id,
        "arch": recipe.arch,
        "embed_dim": recipe.embed_dim,
        "arch_kwargs": json.dumps(recipe.arch_kwargs, sort_keys=True),
        "replay_per_class": recipe.replay_per_class,
        "train_regions": ",".join(train),
        "holdout_regions": ",".join(holdout),
        **{f"train.{k}": v for k, v in recipe.train.model_dump().items()},
    }
    return [Param(k, str(v)) for k, v in params.items()]


def _precision_params(choice: PrecisionChoice) -> list[Param]:
    values: dict[str, object] = {"precision": choice.precision, "precision_source": choice.source}
    if choice.fp32_ms is not None:
        values |= {"precision_probe_fp32_ms": choice.fp32_ms, "precision_probe_bf16_ms": choice.bf16_ms}
    return [Param(k, str(v)) for k, v in values.items()]


def _shipped_params(path: Path, provenance: dict[str, Any]) -> list[Param]:
    values = {"source": "shipped", "shipped_file": path.name, "shipped_sha256": file_digest(path)}
    values |= {f"shipped.{k}": json.dumps(v) if isinstance(v, dict | list) else v for k, v in provenance.items()}
    return [Param(k, str(v)[:6000]) for k, v in values.items()]


def train_starter(
    schema_id: str,
    arch: str | None = None,
    settings: Settings | None = None,
    *,
    recipe: StarterRecipe | None = None,
    epochs: int | None = None,
    tracking_uri: str | None = None,
    train_regions: Sequence[str] | None = None,
    holdout_regions: Sequence[str] = (HOLDOUT_REGION,),
    model_name: str | None = None,
    tags: dict[str, str] | None = None,
    show_progress: bool = True,
    on_epoch: Callable[[EpochStats, int], None] | None = None,
    log: Callable[[str], None] = print,
    weights: Path | None = None,
) -> StarterResult:
    """Train, evaluate on holdout, save (model + replay set), log one MLflow run and register the model.

    Missing regions are generated at full scale. `recipe` overrides the default recipe of (schema, arch)
    (tests use tiny ones); `epochs` overrides the recipe's epoch count. `on_epoch(stats, epochs)` reports
    progress where no terminal progress bar is seen (a Dagster worker); `log` gets one-off lines (the precision).
    `weights` (a shipped starter file, `ml.shipped`) skips training: the rest (holdout, replay set, MLflow run,
    registration) is the same.
    """
    settings = settings or get_settings()
    recipe = (recipe or recipe_for(schema_id, arch)).model_copy(deep=True)
    if epochs is not None:
        recipe.train.epochs = epochs
    data = _load_data(settings, schema_id, train_regions, holdout_regions, show_progress=show_progress)
    name = model_name or starter_model_name(schema_id)
    uri = tracking_uri or settings.resolved_mlflow_uri
    client = mlflow_client(uri)

    # 1. The model: a shipped file's (with the recipe it was trained with) or a new one to train.
    shipped: dict[str, Any] | None = None
    if weights is not None:
        model, recipe, shipped = _shipped_model(weights, schema_id, recipe, settings)
    else:
        model = _new_model(schema_id, recipe, data.train, settings)
    run_name = f"starter-{schema_id}-{recipe.arch}" + ("-shipped" if weights is not None else "")
    experiment = experiment_id(client, EXPERIMENT)
    run_tags = {TAG_SCHEMA: schema_id, "mlflow.runName": run_name, **(tags or {})}
    with _mlflow_run(client, experiment, run_tags) as run_id:
        # 2. Train it (logging params and per-epoch metrics), or log where the shipped weights come from.
        params = _params(schema_id, recipe, data.train_names, data.holdout_names)
        if weights is not None and shipped is not None:
            fit = _log_shipped(client, run_id, params, weights, shipped, schema_id=schema_id, log=log)
        else:
            fit = _train_logged(
                client,
                run_id,
                params,
                model=model,
                train=data.train,
                recipe=recipe,
                schema_id=schema_id,
                show_progress=show_progress,
                on_epoch=on_epoch,
                log=log,
            )
        # 3. Score the trained head on holdout, widen the model with the feature groups, fit the zero-shot head.
        heads = _score_and_fit_heads(model, data, recipe, schema_id=schema_id, log=log)
        # 4. Model file + replay set under PEARL_HOME, metrics and artifacts into the run.
        model_path, replay_path = _save_and_log(
            client,
            run_id=run_id,
            model=heads.model,
            train=data.train,
            report=heads.report,
            settings=settings,
            schema_id=schema_id,
            recipe=recipe,
            timings=fit.timings() | heads.timings(),
            holdout_names=data.holdout_names,
            with_prior=heads.zero_shot is not None,
        )
    # 5. Register the run's model (alias `starter`, and `champion` when the name has none yet).
    version, became_champion = _register(
        uri, name, run_id, heads, schema_id=schema_id, recipe=recipe, train_names=data.train_names, tags=tags
    )
    return StarterResult(
        schema_id=schema_id,
        arch=recipe.arch,
        model_name=name,
        model_version=version,
        experiment_id=experiment,
        run_id=run_id,
        model_path=model_path,
        replay_path=replay_path,
        holdout=heads.report,
        train_seconds=fit.seconds,
        train_cpu_seconds=fit.cpu_seconds,
        history=fit.history,
        became_champion=became_champion,
        precision=fit.precision,
        recipe=recipe,
    )


# -- the steps of train_starter -------------------------------------------------------------------------------------
@dataclass
class _StarterData:
    """The labelled rasters a starter is trained on and scored on, and their regions."""

    train_names: list[str]
    holdout_names: list[str]
    train: list[LabelledRaster]
    holdout: list[LabelledRaster]


def _load_data(
    settings: Settings,
    schema_id: str,
    train_regions: Sequence[str] | None,
    holdout_regions: Sequence[str],
    *,
    show_progress: bool,
) -> _StarterData:
    """The training regions (default: those whose role is `train`) and holdout ones, generated when missing."""
    train_names = list(train_regions or training_regions(settings))
    holdout_names = list(holdout_regions)
    ensure_regions(settings, [*train_names, *holdout_names])
    train = load_labelled_rasters(settings.catalog_dir, train_names, schema_id, show_progress=show_progress)
    holdout = load_labelled_rasters(settings.catalog_dir, holdout_names, schema_id, show_progress=show_progress)
    return _StarterData(train_names, holdout_names, train, holdout)


def _shipped_model(
    weights: Path, schema_id: str, recipe: StarterRecipe, settings: Settings
) -> tuple[LandcoverModel, StarterRecipe, dict[str, Any]]:
    """A shipped file's model, the recipe it was trained with and its provenance. The zero-shot recipe stays the
    caller's: fitting that head is a registration step, the file does not say how."""
    zero_shot_recipe = recipe.zero_shot
    model, shipped = load_shipped(weights)
    if model.spec.schema.names != load_schema(schema_id, settings.assets_dir).names:
        raise ValueError(f"{weights} holds a model of classes {model.spec.schema.names}, not schema {schema_id}")
    recipe = (
        StarterRecipe.model_validate(shipped["recipe"])
        if "recipe" in shipped
        else recipe_for(schema_id, model.spec.arch).model_copy(
            update={"embed_dim": model.embed_dim, "arch_kwargs": model.spec.arch_kwargs}
        )
    ).model_copy(update={"zero_shot": zero_shot_recipe})
    return model, recipe, shipped


def _new_model(
    schema_id: str, recipe: StarterRecipe, train: Sequence[LabelledRaster], settings: Settings
) -> LandcoverModel:
    """An untrained model of the recipe, normalised with the training rasters' band statistics."""
    mean, std = band_stats(train)
    seed_everything(recipe.train.seed)  # the initial weights are part of what the seed reproduces
    spec = ModelSpec(
        arch=recipe.arch,
        schema=load_schema(schema_id, settings.assets_dir),
        embed_dim=recipe.embed_dim,
        mean=mean,
        std=std,
        arch_kwargs=recipe.arch_kwargs,
    )
    return LandcoverModel(spec)


@contextlib.contextmanager
def _mlflow_run(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> Iterator[str]:
    """A new run of the experiment (its id), marked FINISHED after the block, FAILED if the block raises."""
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    try:
        yield run_id
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")


@dataclass
class _Training:
    """How the backbone was trained: the precision, per-epoch stats and times (none for shipped weights)."""

    precision: PrecisionChoice
    history: list[EpochStats]
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def timings(self) -> dict[str, float]:
        return {"train_seconds": self.seconds, "train_cpu_seconds": self.cpu_seconds}


def _log_shipped(
    client: MlflowClient,
    run_id: str,
    params: list[Param],
    weights: Path,
    shipped: dict[str, Any],
    *,
    schema_id: str,
    log: Callable[[str], None],
) -> _Training:
    """No training: the run's params say which shipped file the model is and how it was trained."""
    precision = PrecisionChoice(shipped.get("precision", "fp32"), "shipped", "cpu")
    log(f"{schema_id}: shipped weights {weights.name} (trained in {precision.precision}), no training")
    client.log_batch(run_id, params=[*params, *_shipped_params(weights, shipped)])
    return _Training(precision, [])


def _train_logged(
    client: MlflowClient,
    run_id: str,
    params: list[Param],
    *,
    model: LandcoverModel,
    train: Sequence[LabelledRaster],
    recipe: StarterRecipe,
    schema_id: str,
    show_progress: bool,
    on_epoch: Callable[[EpochStats, int], None] | None,
    log: Callable[[str], None],
) -> _Training:
    """Train `model` in place by the recipe (precision chosen for this machine), each epoch logged to the run."""
    precision = training_precision(recipe.train)
    log(f"{schema_id}: training in {precision.describe()}")
    client.log_batch(run_id, params=[*params, *_precision_params(precision)])

    def log_epoch(stats: EpochStats, _: LandcoverModel) -> None:
        now = int(time.time() * 1000)
        values = {
            "loss": stats.loss,
            "train_accuracy": stats.accuracy,
            "lr": stats.lr,
            "epoch_seconds": stats.seconds,
        }
        client.log_batch(run_id, metrics=[Metric(k, v, now, stats.epoch) for k, v in values.items()])
        if on_epoch is not None:
            on_epoch(stats, recipe.train.epochs)

    started, cpu_started = time.perf_counter(), time.process_time()
    history = train_model(
        model, train, recipe.train, on_epoch=log_epoch, show_progress=show_progress, precision=precision
    )
    train_seconds = time.perf_counter() - started
    # CPU time of this process: on a shared machine wall time says more about the neighbours than the model.
    train_cpu_seconds = time.process_time() - cpu_started
    return _Training(precision, history, train_seconds, train_cpu_seconds)


@dataclass
class _Heads:
    """The model to register (widened with the feature groups) and the holdout scores of its heads."""

    model: LandcoverModel
    trained: MetricsReport  # the head trained with the backbone
    report: MetricsReport  # the head registered: the zero-shot one when fitted, else the trained one
    zero_shot: ZeroShotFit | None

    def timings(self) -> dict[str, float]:
        zero_shot = {"zero_shot_fit_seconds": self.zero_shot.seconds} if self.zero_shot else {}
        return {"trained_head_holdout_macro_f1": self.trained.macro_f1, **zero_shot}


def _score_and_fit_heads(
    model: LandcoverModel, data: _StarterData, recipe: StarterRecipe, *, schema_id: str, log: Callable[[str], None]
) -> _Heads:
    """Score the trained head on holdout, add the recipe's feature groups, fit the zero-shot head (and score it)."""
    holdout, train = ", ".join(data.holdout_names), ", ".join(data.train_names)
    log(f"{schema_id}: scoring on {holdout}, then the replay set from {train}")
    trained_report = evaluate_rasters(model, data.holdout)  # before widening: the zero-padded head predicts the same
    log(f"{schema_id}: trained head: holdout macro F1 {trained_report.macro_f1:.3f}")
    model = with_features(model, recipe.features)
    report = trained_report
    zero_shot = fit_zero_shot_head(model, data.train, recipe.zero_shot, seed=recipe.train.seed)
    if zero_shot is not None:
        log(
            f"{schema_id}: zero-shot head on {' + '.join(zero_shot.groups)} fitted on {zero_shot.samples} "
            f"domain-randomised pixels in {zero_shot.seconds:.0f} s"
        )
        report = evaluate_rasters(model, data.holdout)
    log(f"{schema_id}: holdout macro F1 {report.macro_f1:.3f}, overall accuracy {report.accuracy:.3f}")
    return _Heads(model, trained_report, report, zero_shot)


def _register(
    uri: str,
    name: str,
    run_id: str,
    heads: _Heads,
    *,
    schema_id: str,
    recipe: StarterRecipe,
    train_names: Sequence[str],
    tags: dict[str, str] | None,
) -> tuple[str, bool]:
    """Register the run's model as a version of `name` with alias `starter`, and `champion` when `name` has no
    champion yet; returns (version, whether it became champion)."""
    registry = ModelRegistry(uri)
    version = registry.register(
        name,
        run_id,
        aliases=[STARTER_ALIAS],
        tags={
            TAG_SCHEMA: schema_id,
            TAG_BASE_MODEL: backbone_digest(heads.model),
            TAG_VERSION: f"{name}-starter-{run_id[:8]}",
            **(tags or {}),
        },
        description=f"starter model ({recipe.arch}, {schema_id}) trained on {', '.join(train_names)}; "
        f"holdout macro F1 {heads.report.macro_f1:.3f}",
    )
    became_champion = registry.set_alias_if_missing(name, CHAMPION_ALIAS, version.version)
    return str(version.version), became_champion


def starter_replay_set(
    model: LandcoverModel, train: Sequence[LabelledRaster], recipe: StarterRecipe, *, with_prior: bool
) -> ReplaySet:
    """The starter's replay set from its training rasters; `with_prior`: carrying the model's (zero-shot) head,
    so every retrain starts from that map (ml/replay.py)."""
    replay = build_replay_set(
        model,
        [r.image for r in train],
        [r.labels for r in train],
        per_class=recipe.replay_per_class,
        seed=recipe.train.seed,
        max_images=recipe.replay_images,
    )
    if not with_prior:
        return replay
    head = ModelVersion.from_model(model)
    return replay.with_prior(head.weight, head.bias)


def _save_and_log(
    client: MlflowClient,
    *,
    run_id: str,
    model: LandcoverModel,
    train: Sequence[LabelledRaster],
    report: MetricsReport,
    settings: Settings,
    schema_id: str,
    recipe: StarterRecipe,
    timings: dict[str, float],
    holdout_names: Sequence[str],
    with_prior: bool,
) -> tuple[Path, Path]:
    """Replay set + model file under PEARL_HOME, then metrics and artifacts into the run."""
    replay = starter_replay_set(model, train, recipe, with_prior=with_prior)
    out_dir = starter_dir(settings, schema_id, recipe.arch)
    replay_path = replay.save(out_dir / REPLAY_FILE)
    extra = {
        "schema_id": schema_id,
        "recipe": recipe.model_dump(mode="json"),
        "holdout_regions": list(holdout_names),
        "holdout_macro_f1": report.macro_f1,
        "mlflow_run_id": run_id,
    }
    model_path = save_model(model, out_dir / MODEL_FILE, extra=extra)
    now = int(time.time() * 1000)
    metrics = {**report.to_flat_dict("holdout_"), **timings, "replay_samples": len(replay)}
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    client.log_artifacts(run_id, str(out_dir), MODEL_ARTIFACT_PATH)
    with tempfile.TemporaryDirectory(prefix="pearl-starter-") as tmp:
        confusion_figure(report, Path(tmp) / CONFUSION_ARTIFACT)
        (Path(tmp) / METRICS_ARTIFACT).write_text(json.dumps(report.model_dump(mode="json"), indent=2))
        client.log_artifact(run_id, str(Path(tmp) / CONFUSION_ARTIFACT))
        client.log_artifact(run_id, str(Path(tmp) / METRICS_ARTIFACT))
    return model_path, replay_path


def ship_starter(result: StarterResult, assets_dir: Path) -> Path:
    """Export a freshly trained starter as the shipped weights of its (schema, arch), with its provenance."""
    provenance = {
        "recipe": result.recipe.model_dump(mode="json"),
        "precision": result.precision.precision,
        "steps": len(result.history) * result.recipe.train.steps_per_epoch,
        "train_seconds": round(result.train_seconds, 1),
        "holdout_macro_f1": round(result.holdout.macro_f1, 4),
        "holdout_accuracy": round(result.holdout.accuracy, 4),
        "mlflow_run_id": result.run_id,
        "torch": str(torch.__version__),
    }
    model = load_model(result.model_path)
    return export_shipped(model, shipped_path(assets_dir, result.schema_id, result.arch), provenance)


def format_report(report: MetricsReport) -> str:
    """Per-class table (precision, recall, F1, support) plus macro F1 and overall accuracy."""
    width = max(len(n) for n in report.class_names)
    lines = [f"{'class':<{width}}  precision  recall     F1   support"]
    for i, cls in enumerate(report.class_names):
        lines.append(
            f"{cls:<{width}}  {report.precision[i]:9.3f}  {report.recall[i]:6.3f}  {report.f1[i]:5.3f}  "
            f"{report.support[i]:8d}"
        )
    lines.append(f"{'macro F1':<{width}}  {report.macro_f1:.3f}   overall accuracy {report.accuracy:.3f}")
    return "\n".join(lines)
