"""Starter-model quality on the held-out region, next to a per-pixel baseline measured in the same run.

Self-sufficient: under PEARL_HOME (default ./.pearl) it generates the regions it needs, starts an MLflow
server when none answers (and stops it at the end), trains + registers the starter models when
`models:/pearl-starter-<schema>@starter` is missing, then scores both registered starters on every
pixel of the `holdout` region against its reference labels.

Baseline: multinomial logistic regression on the raw R, G, B, NIR values of single pixels, fitted on
pixels of the same training regions: what spectra alone can do, without any spatial context.

    .venv/bin/python bench/starter_quality.py

Last line: {"macro_f1_9": ..., "macro_f1_4": ..., "baseline_macro_f1_9": ..., "baseline_macro_f1_4": ...}
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pearl_pipelines.ml.data import LabelledRaster, load_labelled_rasters
from pearl_pipelines.ml.metrics import MetricsReport, compute_metrics
from pearl_pipelines.ml.refs import starter_model_name
from pearl_pipelines.ml.registry import ModelRegistry
from pearl_pipelines.ml.starter import (
    HOLDOUT_REGION,
    STARTER_ALIAS,
    ensure_regions,
    format_report,
    train_starter,
    training_regions,
)
from pearl_pipelines.ml.train import evaluate_rasters
from pearl_pipelines.services import ensure_mlflow
from pearl_pipelines.settings import get_settings

SCHEMAS = {"9": "chesapeake9", "4": "chesapeake4"}
BASELINE_SAMPLES = 100_000


def pixel_table(rasters: list[LabelledRaster]) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4) float pixel values / 255 and (N,) labels of every labelled pixel."""
    x = np.concatenate([r.image.reshape(r.image.shape[0], -1).T for r in rasters])
    y = np.concatenate([r.labels.ravel() for r in rasters])
    keep = y != 255
    return x[keep] / 255.0, y[keep]


def logistic_baseline(
    train: list[LabelledRaster], holdout: list[LabelledRaster], class_names: list[str]
) -> MetricsReport:
    x, y = pixel_table(train)
    pick = np.random.default_rng(0).choice(len(y), size=min(BASELINE_SAMPLES, len(y)), replace=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter: the fit is a reference, not a tuned model
        classifier = LogisticRegression(max_iter=300).fit(x[pick], y[pick])
    x_test, y_test = pixel_table(holdout)
    return compute_metrics(y_test, classifier.predict(x_test), class_names, method="reference_raster")


def main() -> int:
    settings = get_settings()
    print(f"PEARL_HOME = {settings.home_abs}")
    train_names = training_regions(settings)
    ensure_regions(settings, [*train_names, HOLDOUT_REGION])
    result: dict[str, float] = {}
    with ensure_mlflow(settings) as uri:
        registry = ModelRegistry(uri)
        for key, schema_id in SCHEMAS.items():
            name = starter_model_name(schema_id)
            if registry.get_version(name, STARTER_ALIAS) is None:
                print(f"models:/{name}@{STARTER_ALIAS} is missing: training it")
                train_starter(schema_id, settings=settings, tracking_uri=uri)
            version = registry.resolve(name, STARTER_ALIAS)
            model = registry.load_model(name, STARTER_ALIAS)
            holdout = load_labelled_rasters(settings.catalog_dir, [HOLDOUT_REGION], schema_id)
            started = time.perf_counter()
            report = evaluate_rasters(model, holdout)
            seconds = time.perf_counter() - started
            train = load_labelled_rasters(settings.catalog_dir, train_names, schema_id)
            baseline = logistic_baseline(train, holdout, model.spec.schema.names)
            print(
                f"\n== {name} v{version.version} ({model.spec.arch}) on {HOLDOUT_REGION}: {report.n_samples} px, "
                f"predicted in {seconds:.1f} s"
            )
            print(format_report(report))
            print(
                f"baseline (per-pixel logistic regression on RGBN): macro F1 {baseline.macro_f1:.3f}, "
                f"OA {baseline.accuracy:.3f}; per-class F1 "
                + ", ".join(f"{n} {f:.2f}" for n, f in zip(baseline.class_names, baseline.f1, strict=True))
            )
            result[f"macro_f1_{key}"] = round(report.macro_f1, 4)
            result[f"baseline_macro_f1_{key}"] = round(baseline.macro_f1, 4)
    print(
        json.dumps({k: result[k] for k in ("macro_f1_9", "macro_f1_4", "baseline_macro_f1_9", "baseline_macro_f1_4")})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
