from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score

from pearl_pipelines.ml.metrics import (
    compute_metrics,
    confusion_figure,
    evaluate_against_reference,
    grouped_cross_val_predict,
)

NAMES = ["water", "tree_canopy", "field", "built"]


def test_metrics_match_sklearn_and_flatten_for_mlflow() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, 200)  # class 3 never occurs
    y_pred = np.where(rng.random(200) < 0.8, y_true, rng.integers(0, 4, 200))
    report = compute_metrics(y_true, y_pred, NAMES, method="test")
    assert report.macro_f1 == f1_score(y_true, y_pred, labels=[0, 1, 2], average="macro")
    assert report.support[3] == 0 and np.sum(report.confusion) == 200
    flat = report.to_flat_dict("cv_")
    assert flat["cv_macro_f1"] == report.macro_f1 and "cv_f1_water" in flat and "cv_f1_built" not in flat


def test_grouped_cv_keeps_groups_together() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(20), 10)
    y = groups % 3
    seen: list[tuple[set, set]] = []

    def fit_predict(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        seen.append((set(groups[train]), set(groups[test])))
        return rng.integers(0, 3, len(test))

    predicted, notes = grouped_cross_val_predict(y, groups, fit_predict, n_splits=5)
    assert len(seen) == 5 and all(not (train & test) for train, test in seen)
    assert set().union(*(test for _, test in seen)) == set(range(20))
    assert (predicted >= 0).all() and "grouped 5-fold" in notes[0]


def test_grouped_cv_degrades_with_few_groups() -> None:
    y, groups = np.array([0, 0, 1, 1, 1]), np.array([0, 0, 1, 1, 2])
    predicted, notes = grouped_cross_val_predict(y, groups, lambda tr, te: np.zeros(len(te), int), n_splits=5)
    assert (predicted >= 0).all() and any("only 3 label groups" in n for n in notes)
    predicted, notes = grouped_cross_val_predict(y[:2], groups[:2], lambda tr, te: te, n_splits=5)
    assert (predicted == -1).all() and "no held-out metrics" in notes[0]


def test_reference_evaluation_ignores_nodata() -> None:
    reference = np.array([[0, 1], [2, 255]], np.uint8)
    predicted = np.array([[0, 1], [255, 3]], np.uint8)
    report = evaluate_against_reference(predicted, reference, NAMES)
    assert report.n_samples == 2 and report.accuracy == 1.0 and report.method == "reference_raster"


def test_confusion_figure_is_a_png(tmp_path: Path) -> None:
    report = compute_metrics(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), NAMES, method="test")
    png = confusion_figure(report, tmp_path / "cm.png")
    assert png.startswith(b"\x89PNG") and (tmp_path / "cm.png").read_bytes() == png
