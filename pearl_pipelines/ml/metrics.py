"""Classification metrics: per-class P/R/F1, macro F1, accuracy, confusion matrix; grouped CV; reference rasters.

User labels are evaluated by cross-validation over label *groups* (a polygon's pixels stay in one
fold), so a polygon never grades itself - unlike PEARL's F1 on a 10% slice of the user's points.
Macro F1 averages the classes that occur in the reference, so a class nobody labelled cannot drag
it down (its row in the report has support 0).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

NODATA = 255


class MetricsReport(BaseModel):
    class_names: list[str]
    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]
    macro_f1: float
    accuracy: float
    confusion: list[list[int]] = Field(description="rows: reference class, columns: predicted class")
    n_samples: int
    method: str = Field(description="how the samples were held out, e.g. grouped_cv:5 or reference_raster")
    notes: list[str] = Field(default_factory=list)

    def to_flat_dict(self, prefix: str = "") -> dict[str, float]:
        """MLflow-ready metrics: `{prefix}macro_f1`, `{prefix}f1_<class>`, ... (classes without support left out)."""
        flat = {
            f"{prefix}macro_f1": self.macro_f1,
            f"{prefix}accuracy": self.accuracy,
            f"{prefix}n_samples": float(self.n_samples),
        }
        for i, name in enumerate(self.class_names):
            if self.support[i]:
                flat[f"{prefix}precision_{name}"] = self.precision[i]
                flat[f"{prefix}recall_{name}"] = self.recall[i]
                flat[f"{prefix}f1_{name}"] = self.f1[i]
        return flat


def compute_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    class_names: Sequence[str],
    *,
    method: str,
    notes: Sequence[str] = (),
) -> MetricsReport:
    """Metrics over class indices 0..K-1 (all K classes get a row)."""
    labels = np.arange(len(class_names))
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    present = support > 0
    return MetricsReport(
        class_names=list(class_names),
        precision=precision.tolist(),
        recall=recall.tolist(),
        f1=f1.tolist(),
        support=support.astype(int).tolist(),
        macro_f1=float(f1[present].mean()) if present.any() else 0.0,
        accuracy=float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        confusion=confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        n_samples=len(y_true),
        method=method,
        notes=list(notes),
    )


FitPredict = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (train idx, test idx) -> predicted classes of test


def grouped_cross_val_predict(
    y: np.ndarray, groups: np.ndarray, fit_predict: FitPredict, *, n_splits: int = 5, seed: int = 0
) -> tuple[np.ndarray, list[str]]:
    """Out-of-fold predictions (-1 where a sample could not be held out) and notes on how folds were made.

    Folds keep each group whole. Stratified when every class has at least `n_splits` groups; with fewer
    groups than `n_splits` it runs one fold per group; with a single group no fold can be held out.
    """
    y, groups = np.asarray(y), np.asarray(groups)
    notes: list[str] = []
    predicted = np.full(len(y), -1, dtype=np.int64)
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        notes.append(f"only {n_groups} label group: cross-validation needs at least 2; no held-out metrics")
        return predicted, notes
    if n_groups < n_splits:
        notes.append(f"only {n_groups} label groups: {n_groups}-fold cross-validation (one group per fold)")
        n_splits = n_groups
    groups_per_class = {c: len(np.unique(groups[y == c])) for c in np.unique(y)}
    if min(groups_per_class.values()) >= n_splits:
        splitter: GroupKFold | StratifiedGroupKFold = StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)
    else:
        splitter = GroupKFold(n_splits)
        notes.append("some classes have fewer label groups than folds: folds are grouped but not stratified")
    single = sorted(int(c) for c, n in groups_per_class.items() if n == 1)
    if single:
        notes.append(f"classes {single} have one label group each: held out, they are predicted without own labels")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="sklearn")
        for train, test in splitter.split(np.zeros(len(y)), y, groups):
            predicted[test] = fit_predict(train, test)
    notes.insert(0, f"grouped {n_splits}-fold cross-validation over {n_groups} label groups")
    return predicted, notes


def evaluate_against_reference(
    predicted: np.ndarray, reference: np.ndarray, class_names: Sequence[str], *, nodata: int = NODATA
) -> MetricsReport:
    """Dense evaluation of a class raster against a reference label raster of the same grid and schema."""
    if predicted.shape != reference.shape:
        raise ValueError(f"prediction {predicted.shape} and reference {reference.shape} must be on the same grid")
    valid = (predicted != nodata) & (reference != nodata)
    return compute_metrics(reference[valid], predicted[valid], class_names, method="reference_raster")


def confusion_figure(report: MetricsReport, path: Path | None = None) -> bytes:
    """Row-normalised confusion matrix as PNG bytes (also written to `path` when given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(report.confusion, dtype=float)
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    k = len(report.class_names)
    fig, ax = plt.subplots(figsize=(2 + 0.6 * k, 1.5 + 0.6 * k), dpi=100)
    try:
        ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(k), report.class_names, rotation=45, ha="right")
        ax.set_yticks(range(k), report.class_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("reference")
        ax.set_title(f"{report.method}: macro F1 {report.macro_f1:.2f}")
        for (i, j), value in np.ndenumerate(normalised):
            if matrix[i, j]:
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value > 0.5 else "black")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    png = buffer.getvalue()
    if path is not None:
        Path(path).write_bytes(png)
    return png
