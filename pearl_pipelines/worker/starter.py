"""The `train-starter` task: `ml.starter.train_starter` (train, evaluate on holdout, log, register) + metadata."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pearl_pipelines.settings import get_settings
from pearl_pipelines.worker.contracts import TrainStarterInput


def f1_table(report: Any) -> str:
    """Per-class F1, precision, recall and support as a Markdown table (Dagster metadata)."""
    rows = ["| class | F1 | precision | recall | support |", "|---|---|---|---|---|"]
    for i, name in enumerate(report.class_names):
        if report.support[i]:
            rows.append(
                f"| {name} | {report.f1[i]:.3f} | {report.precision[i]:.3f} | {report.recall[i]:.3f} | "
                f"{report.support[i]} |"
            )
    return "\n".join(rows)


def train_and_register(inp: TrainStarterInput, *, tags: dict[str, str], log: Callable[[str], None]) -> dict[str, Any]:
    """Train the starter model the task's input describes; returns the materialization metadata."""
    from pearl_pipelines.ml.metrics import confusion_figure
    from pearl_pipelines.ml.shipped import require_shipped
    from pearl_pipelines.ml.starter import StarterRecipe, recipe_for, train_starter
    from pearl_pipelines.ml.train import TrainConfig

    settings = get_settings()
    schema_id = inp.schema_id
    recipe = recipe_for(schema_id, inp.arch)
    overrides = inp.recipe
    if overrides:
        train = recipe.train.model_copy(update=overrides.get("train", {}))
        recipe = StarterRecipe(
            **{**recipe.model_dump(exclude={"train"}), **{k: v for k, v in overrides.items() if k != "train"}},
            train=TrainConfig.model_validate(train.model_dump()),
        )
    shipped = inp.source == "shipped"
    weights = require_shipped(settings.assets_dir, schema_id, recipe.arch) if shipped else None
    result = train_starter(
        schema_id,
        recipe.arch,
        settings,
        recipe=recipe,
        tracking_uri=inp.mlflow_uri,
        train_regions=inp.train_regions,
        holdout_regions=inp.holdout_regions,
        model_name=inp.model_name,
        tags=tags,
        show_progress=False,
        log=log,
        weights=weights,
        on_epoch=lambda stats, epochs: log(
            f"{schema_id}: epoch {stats.epoch}/{epochs}, loss {stats.loss:.3f}, "
            f"pixel accuracy {stats.accuracy:.3f} ({stats.seconds:.0f} s)"
        ),
    )
    log(f"{result.model_name} v{result.model_version}: holdout macro F1 {result.holdout.macro_f1:.3f}")
    report_dir = settings.home_abs / inp.report_dir
    report_dir.mkdir(parents=True, exist_ok=True)
    confusion_path = report_dir / f"{result.model_name}-v{result.model_version}-confusion.png"
    confusion_figure(result.holdout, confusion_path)
    return {
        "model_uri": f"models:/{result.model_name}/{result.model_version}",
        "model_name": result.model_name,
        "model_version": int(result.model_version),
        "mlflow_run_id": result.run_id,
        "arch": result.arch,
        "schema": result.schema_id,
        "holdout_macro_f1": result.holdout.macro_f1,
        "holdout_accuracy": result.holdout.accuracy,
        "holdout_f1_per_class": {"raw_value": f1_table(result.holdout), "type": "md"},
        "confusion_matrix": {"raw_value": f"![confusion matrix]({confusion_path})", "type": "md"},
        "confusion_matrix_path": {"raw_value": str(confusion_path), "type": "path"},
        "model_path": {"raw_value": str(result.model_path), "type": "path"},
        "train_seconds": round(result.train_seconds, 1),
        "precision": result.precision.describe(),
        "epochs": len(result.history),
        "final_loss": result.history[-1].loss if result.history else None,
        "became_champion": result.became_champion,
    }
