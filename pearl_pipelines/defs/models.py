"""Models: `starter_model` (trained and registered), `landcover_model` (a retrained version per label set)
and `champion_model` (the `champion` alias moved to a version that passed `model_not_worse_than_champion`).

Every model is an MLflow registered-model version; runs pin aliases to version numbers before the
worker sees them. Lineage lives in MLflow tags (parent version, label set, Dagster run id) and in the
Dagster asset graph.
"""

from dataclasses import dataclass
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from pearl_pipelines.defs.events import materialization_in_run, upstream_metadata
from pearl_pipelines.defs.labels import get_project_or_fail
from pearl_pipelines.defs.resources import (
    GpuCompute,
    LabelStoreResource,
    MlflowRegistry,
    RasterStore,
)
from pearl_pipelines.layout import model_slug
from pearl_pipelines.ml.lineage import Lineage
from pearl_pipelines.ml.refs import CHAMPION_ALIAS, CURRENT_ALIAS, project_model_name, starter_model_name
from pearl_pipelines.worker.contracts import RegisteredRef, RetrainInput, Tile, TrainStarterInput

STARTER = "starter"


@dataclass(frozen=True)
class ModelRef:
    """A pinned registered-model version."""

    name: str
    version: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def slug(self) -> str:
        return model_slug(self.name, self.version)

    def ref(self) -> RegisteredRef:
        """As a worker task's input names it."""
        return RegisteredRef(name=self.name, version=self.version)


def resolve_or_fail(mlflow: MlflowRegistry, model_ref: str, what: str) -> ModelRef:
    try:
        name, version = mlflow.resolve(model_ref)
    except (KeyError, ValueError) as exc:
        raise dg.Failure(
            description=f"{what} {model_ref} cannot be resolved: {exc}. Materialize starter_model first "
            f"(or point the project at an existing models:/name@alias)",
            allow_retries=False,
        ) from exc
    return ModelRef(name, version)


def champion_ref(mlflow: MlflowRegistry, name: str) -> ModelRef | None:
    found = mlflow.version_by_alias(name, CHAMPION_ALIAS)
    return ModelRef(name, str(found.version)) if found is not None else None


def project_model_ref(mlflow: MlflowRegistry, project: Any) -> tuple[ModelRef, ModelRef]:
    """(latest model of the project, its base model): the project's `current` version if it has one, else the base.

    A project's versions are one registered model, `pearl-project-<id>`, whichever loop made them (review app or
    Dagster); each is a head on the base version named in its lineage (`Lineage.base_model`)."""
    base = resolve_or_fail(mlflow, project.base_model, f"project {project.id}'s base model")
    name = project_model_name(project.id)
    latest = mlflow.version_by_alias(name, CURRENT_ALIAS)
    return (ModelRef(name, str(latest.version)) if latest is not None else base), base


class StarterModelConfig(dg.Config):
    """Which starter to train; unset fields keep the engine's recipe (`ml.starter.RECIPES`)."""

    schema_id: str = "chesapeake9"
    # train: the recipe from scratch; shipped: register the weights shipped in assets/starters (no training).
    source: Literal["train", "shipped"] = "train"
    train_regions: list[str] = Field(default_factory=lambda: ["train-a", "train-b", "train-c"])
    holdout_regions: list[str] = Field(default_factory=lambda: ["holdout"])
    arch: str | None = None  # fcn | unet; default per schema
    embed_dim: int | None = None
    replay_per_class: int | None = None
    # Feature groups embedded beside the learned ones (ml/features.py); default: the recipe's (all of them).
    features: list[str] | None = None
    # Domain-randomised patches the zero-shot head is fitted on (ml/zero_shot.py); 0 keeps the trained head.
    zero_shot_patches: int | None = None
    epochs: int | None = None
    steps_per_epoch: int | None = None
    batch_size: int | None = None
    patch_size: int | None = None
    model_name: str | None = None  # default: pearl-starter-<schema_id>

    def recipe_overrides(self) -> dict[str, Any]:
        train = {
            k: v
            for k, v in {
                "epochs": self.epochs,
                "steps_per_epoch": self.steps_per_epoch,
                "batch_size": self.batch_size,
                "patch_size": self.patch_size,
            }.items()
            if v is not None
        }
        top: dict[str, Any] = {
            k: v for k, v in {"embed_dim": self.embed_dim, "replay_per_class": self.replay_per_class}.items() if v
        }
        if self.features is not None:
            top["features"] = self.features
        if self.zero_shot_patches is not None:
            top["zero_shot"] = {"patches": self.zero_shot_patches}
        return {**top, **({"train": train} if train else {})}


@dg.asset(
    deps=[dg.AssetDep("imagery_index", partition_mapping=dg.AllPartitionMapping())],
    group_name="models",
    kinds={"pytorch", "mlflow"},
)
def starter_model(
    context: dg.AssetExecutionContext,
    *,
    config: StarterModelConfig,
    rasters: RasterStore,
    mlflow: MlflowRegistry,
    compute: GpuCompute,
) -> dg.MaterializeResult:
    """Backbone + head trained on the train regions' reference labels, evaluated on the holdout region,
    registered in MLflow with alias `starter` (and `champion` when there is none yet)."""
    regions = [*config.train_regions, *config.holdout_regions]
    missing = [r for r in regions if not (rasters.catalog_dir / r / "collection.json").is_file()]
    if missing:
        raise dg.Failure(
            description=f"regions {', '.join(missing)} are not in the local catalog {rasters.catalog_dir}; "
            f"run `pearl generate --regions {','.join(missing)}` first",
            allow_retries=False,
        )
    name = config.model_name or starter_model_name(config.schema_id)
    task = TrainStarterInput(
        asset="starter_model",
        dagster_run_id=context.run.run_id,
        mlflow_uri=mlflow.tracking_uri,
        model_name=name,
        schema_id=config.schema_id,
        source=config.source,
        train_regions=config.train_regions,
        holdout_regions=config.holdout_regions,
        catalog_dir=rasters.rel(rasters.catalog_dir),
        report_dir=rasters.rel(rasters.reports_dir),
        arch=config.arch,
        recipe=config.recipe_overrides(),
    )
    return compute.run(context, "train-starter", task.extras()).get_materialize_result()


class LandcoverModelConfig(dg.Config):
    project_id: int
    holdout_fraction: float = 0.2  # labels held out of every retrain, to compare with the champion
    seed: int = 0


@dg.asset(deps=["label_set", "embeddings", "starter_model"], group_name="models", kinds={"pytorch", "mlflow"})
def landcover_model(
    context: dg.AssetExecutionContext,
    *,
    config: LandcoverModelConfig,
    label_store: LabelStoreResource,
    rasters: RasterStore,
    mlflow: MlflowRegistry,
    compute: GpuCompute,
) -> dg.MaterializeResult:
    """A new head fitted on the project's cached embeddings under its label set, registered as a version
    of the base model's registered model with lineage tags (parent version, label set, Dagster run)."""
    project = get_project_or_fail(label_store, config.project_id)
    labels = upstream_metadata(context, dg.AssetKey("label_set"), match={"project_id": config.project_id})
    if labels is None:
        raise dg.Failure(
            description=f"no label_set materialization for project {config.project_id}; run label_to_map_job",
            allow_retries=False,
        )
    if not labels.get("n_labels"):
        raise dg.Failure(
            description=f"project {config.project_id} has no labels yet: add points or polygons in the review app",
            allow_retries=False,
        )
    parent, base = project_model_ref(mlflow, project)
    name = project_model_name(config.project_id)
    # The version to beat: the project's champion, or the starter version it began from.
    champion = champion_ref(mlflow, name) or base
    # A mapper's burst: the review app fitted and registered this very label set already; adopt it, do not refit.
    made = mlflow.find_version(
        name, **Lineage(label_store_digest=labels["label_set_digest"], source="review-app").to_tags()
    )
    aois = label_store.store().list_aois(config.project_id)
    all_caches = [rasters.embeddings_dir(base.slug, a.id) for a in aois]
    caches = [c for c in all_caches if rasters.cache_ready(c)]
    if not caches:
        raise dg.Failure(
            description=f"project {config.project_id} has no embedding caches for {base.uri}; "
            "materialize `embeddings` for the project (label_to_map_job does) first",
            allow_retries=False,
        )
    task = RetrainInput(
        asset="landcover_model",
        dagster_run_id=context.run.run_id,
        mlflow_uri=mlflow.tracking_uri,
        project_id=config.project_id,
        # By its key (layout.py), not the path the label_set step's pod wrote it at: the worker fetches it by key.
        label_set=rasters.rel(rasters.label_set_path(config.project_id, str(labels["label_set_digest"]))),
        label_set_digest=labels["label_set_digest"],
        schema=label_store.store().schema(config.project_id),
        parent=parent.ref(),
        base=base.ref(),
        champion=champion.ref(),
        adopt=RegisteredRef(name=made.name, version=str(made.version)) if made is not None else None,
        caches=[rasters.rel(c) for c in caches],
        holdout_fraction=config.holdout_fraction,
        seed=config.seed,
        aliases=[CURRENT_ALIAS],
        report_dir=rasters.rel(rasters.reports_dir),
        # The project's tiles under review, re-predicted head-only by the worker right after registering.
        predict_tiles=[
            Tile(key=k, cache_dir=rasters.rel(cache), tile_path=rasters.rel(rasters.tile_path(k)))
            for aoi, cache in zip(aois, all_caches, strict=True)
            if rasters.cache_ready(cache)
            for k in aoi.tile_keys
            if rasters.has_tile(k)
        ],
    )
    result = compute.run(context, "retrain", task.extras()).get_materialize_result()
    return dg.MaterializeResult(
        metadata={
            **(result.metadata or {}),
            "project_id": config.project_id,
            "label_set_uri": dg.MetadataValue.path(str(labels["uri"])),
            "base_model": base.uri,
        },
        data_version=result.data_version,
    )


@dg.asset(deps=["landcover_model"], group_name="models", kinds={"mlflow"})
def champion_model(context: dg.AssetExecutionContext, mlflow: MlflowRegistry) -> dg.MaterializeResult:
    """Moves the `champion` alias to the version `landcover_model` registered in this run.

    Runs only after the blocking check `model_not_worse_than_champion` passed in the same run, so it
    refuses to promote a version materialized elsewhere (whose check it cannot vouch for).
    """
    model = materialization_in_run(context, dg.AssetKey("landcover_model"))
    if model is None:
        raise dg.Failure(
            description="champion_model promotes the landcover_model materialized in the same run, after its "
            "blocking check passed; run label_to_map_job (or landcover_model + champion_model together)",
            allow_retries=False,
        )
    name, version = str(model["model_name"]), str(model["model_version"])
    previous = champion_ref(mlflow, name)
    compared = model.get("holdout_macro_f1") is not None and model.get("champion_holdout_macro_f1") is not None
    # The blocking check stopped worse candidates; promote only on evidence: a project's first champion too must
    # have been compared with the starter it began from.
    promote = compared
    if promote:
        mlflow.set_alias(name, CHAMPION_ALIAS, version)
        context.log.info(f"champion of {name}: v{previous.version if previous else '-'} -> v{version}")
    else:
        context.log.info(f"champion of {name} stays {previous.uri if previous else 'none'}: too few held-out labels")
    champion = ModelRef(name, version) if promote else previous
    champion_uri = champion.uri if champion else "none"
    return dg.MaterializeResult(
        metadata={
            "model_uri": champion_uri,
            "model_name": name,
            "model_version": int(champion.version) if champion else None,
            "candidate": f"models:/{name}/{version}",
            "promoted": promote,
            "previous_champion": previous.uri if previous else "none",
            "project_id": model.get("project_id"),
            "holdout_macro_f1": model.get("holdout_macro_f1"),
            "previous_champion_holdout_macro_f1": model.get("champion_holdout_macro_f1"),
        },
        data_version=dg.DataVersion(champion_uri),
    )
