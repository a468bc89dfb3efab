"""Retraining strategies: logistic, MLP and spatial ensemble heads, on cache, in checkpoints and in full models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from shapely.geometry import Point

from pearl_pipelines.ml.embeddings import apply_head, sample_embeddings
from pearl_pipelines.ml.models import LandcoverModel, load_model, save_model
from pearl_pipelines.ml.retrain import RetrainError, RetrainOptions, make_strategy, retrain
from pearl_pipelines.ml.strategies import STRATEGIES, centred_logistic
from pearl_pipelines.ml.versions import ModelVersion
from tests.ml.conftest import labels_frame, pixel_xy
from tests.ml.test_retrain import Area, area, model_points  # noqa: F401 - the module-scoped fixture

KINDS = {"logistic_regression": "linear", "mlp": "mlp", "spatial_ensemble": "spatial"}


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


@pytest.fixture(scope="module")
def versions(area: Area) -> dict[str, ModelVersion]:  # noqa: F811
    labels = model_points(area, 120, seed=4)
    return {name: retrain(area.parent, area.cache, labels, strategy=make_strategy(name)) for name in STRATEGIES}


def test_every_strategy_learns_the_labels(versions: dict[str, ModelVersion]) -> None:
    assert set(versions) == set(KINDS)
    for name, version in versions.items():
        assert version.strategy == name and version.head_kind == KINDS[name]
        assert version.metrics is not None and version.metrics.accuracy > 0.7, (name, version.metrics.accuracy)


@pytest.mark.parametrize("name", list(KINDS))
def test_head_on_cache_matches_the_version(versions, area: Area, name: str, tmp_path: Path) -> None:  # noqa: F811
    """The re-predicted map is the version's own argmax at every pixel checked, and survives a checkpoint."""
    version = ModelVersion.load(versions[name].save(tmp_path / "ckpt"))
    result = apply_head(
        area.cache, version.weight, version.bias, version.schema, tmp_path / "map", extra=version.head_extra
    )
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, area.cache.shape[0], 500), rng.integers(0, area.cache.shape[1], 500)
    x = sample_embeddings(area.cache, rows, cols)
    expected = np.argmax(version.logits(x, area.cache.xy(rows, cols)), axis=1)
    assert (read(result.classes_path)[rows, cols] == expected).mean() > 0.995  # float16 ties aside


def test_mlp_version_runs_as_a_full_model(versions, fcn: LandcoverModel, area: Area, tmp_path: Path) -> None:  # noqa: F811
    version = versions["mlp"]
    model = load_model(save_model(version.to_model(fcn), tmp_path / "mlp.pt"))
    assert model.spec.head_hidden == version.head_extra["hidden_weight"].shape[0]
    x = torch.randint(0, 256, (1, 4, 48, 48), dtype=torch.uint8)
    with torch.inference_mode():
        emb = fcn.embed(x)[0].flatten(1).T.numpy()
        logits = model(x)[0].flatten(1).T.numpy()
    np.testing.assert_allclose(logits, version.logits(emb), rtol=1e-4, atol=1e-3)


def test_spatial_version_refuses_a_full_model_with_a_reason(versions, fcn: LandcoverModel) -> None:
    with pytest.raises(ValueError, match="cached embeddings only"):
        versions["spatial_ensemble"].to_model(fcn)


def test_spatial_ensemble_learns_what_differs_between_places(area: Area) -> None:  # noqa: F811
    """Left of the middle the labels are the model's classes, right of it a permutation of them: the same
    embedding means another class on each side. One global head cannot fit both; local heads can."""
    points = model_points(area, 240, seed=7)
    names = area.parent.schema.names
    swap = {n: names[(i + 1) % len(names)] for i, n in enumerate(names)}
    x0 = points.geometry.x.median()
    right = points.geometry.x > x0
    points.loc[right, "class_name"] = points.loc[right, "class_name"].map(swap)
    train, test = points.iloc[::2], points.iloc[1::2]

    def accuracy(name: str, **params) -> float:
        version = retrain(
            area.parent,
            area.cache,
            train,
            strategy=make_strategy(name, **params),
            options=RetrainOptions(evaluate=False),
        )
        cols = np.floor(test.geometry.x.to_numpy() - area.cache.transform.c).astype(int)
        rows = np.floor(area.cache.transform.f - test.geometry.y.to_numpy()).astype(int)
        logits = version.logits(sample_embeddings(area.cache, rows, cols), area.cache.xy(rows, cols))
        return float((np.array(version.schema.names)[logits.argmax(axis=1)] == test["class_name"].to_numpy()).mean())

    global_acc, spatial_acc = accuracy("logistic_regression"), accuracy("spatial_ensemble")
    assert spatial_acc > global_acc + 0.2, (global_acc, spatial_acc)
    assert spatial_acc > 0.75


def test_spatial_strategy_with_few_labels_is_a_linear_head(area: Area) -> None:  # noqa: F811
    version = retrain(
        area.parent, area.cache, model_points(area, 12, seed=1), strategy=make_strategy("spatial_ensemble")
    )
    assert version.head_kind == "linear"


def test_unknown_strategy_and_parameters_are_named() -> None:
    with pytest.raises(RetrainError, match="available: logistic_regression, mlp, spatial_ensemble"):
        make_strategy("svm")
    with pytest.raises(RetrainError, match="bad parameters for strategy 'mlp'"):
        make_strategy("mlp", depth=3)


def test_new_class_pads_every_head(area: Area) -> None:  # noqa: F811
    """A clicked new class gets a row in the output layer and in every local head."""
    points = model_points(area, 90, seed=3)
    extra = labels_frame([Point(*pixel_xy(60, 60))], ["solar_panel"])
    extra["label_id"] = 9999
    labels = gpd.GeoDataFrame(gpd.pd.concat([points, extra], ignore_index=True), crs=points.crs)
    for name in STRATEGIES:
        version = retrain(
            area.parent, area.cache, labels, strategy=make_strategy(name), new_classes={"solar_panel": "#ffaa00"}
        )
        k = len(version.schema)
        assert version.weight.shape[0] == k and version.logits(
            np.zeros((1, area.cache.meta.channels)), np.zeros((1, 2))
        ).shape == (1, k)
        if "local_weight" in version.head_extra:
            assert version.head_extra["local_weight"].shape[1] == k


def test_centred_fit_learns_how_far_to_trust_its_prior() -> None:
    """The same 60 labels, a prior that maps them well and one that swaps two classes: the labels keep the good
    prior's scale near 1 and shrink the wrong one's, and both heads then classify the labels."""
    rng = np.random.default_rng(0)
    centres = np.array([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0]])
    y = np.repeat(np.arange(3), 20)
    x = centres[y] + rng.normal(0, 0.7, (len(y), 3))
    good = (centres.copy(), -0.5 * (centres**2).sum(axis=1))  # nearest centre: the labels' own classes
    swapped = (good[0][[1, 0, 2]], good[1][[1, 0, 2]])
    fits = {
        name: centred_logistic(
            x,
            y,
            prior,
            reference=x,
            sample_weight=np.ones(len(y)),
            channel_groups={"embedding": (0, 3)},
            group_weights={},
            C=1.0,
        )
        for name, prior in (("good", good), ("swapped", swapped))
    }
    assert fits["good"][2] > 0.8, fits["good"][2]
    assert fits["swapped"][2] < 0.3, fits["swapped"][2]
    for weight, bias, _ in fits.values():
        assert (np.argmax(x @ weight.T + bias, axis=1) == y).mean() > 0.9


def test_centred_fit_started_from_its_own_head_stays_there() -> None:
    """`start` hands the solver a head it returned (the parent version's, in the live loop): one step from the
    optimum leaves the head where it was, while one step from scratch is far from it, and a few labels more move
    a started fit to the same optimum as a cold one."""
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 2.0, (4, 6))
    y = np.repeat(np.arange(4), 30)
    x = centres[y] + rng.normal(0, 1.0, (len(y), 6))
    prior = (centres * 0.5, rng.normal(0, 0.3, 4))

    def fit(xs: np.ndarray, ys: np.ndarray, **more: Any) -> tuple[np.ndarray, np.ndarray, float]:
        return centred_logistic(
            xs, ys, prior, reference=x, sample_weight=np.ones(len(ys)), channel_groups={"embedding": (0, 6)},
            group_weights={}, C=1.0, **more,
        )  # fmt: skip

    weight, bias, scale = fit(x, y)
    again = fit(x, y, start=(weight, bias, scale), max_iter=1)
    cold = fit(x, y, max_iter=1)
    assert np.abs(again[0] - weight).max() < 5e-3 and abs(again[2] - scale) < 5e-3
    assert np.abs(cold[0] - weight).max() > 0.05
    more_x = np.vstack([x, centres[[0, 3]] + 0.1])
    more_y = np.concatenate([y, [0, 3]])
    warm, reference = fit(more_x, more_y, start=(weight, bias, scale)), fit(more_x, more_y)
    assert np.abs(warm[0] - reference[0]).max() < 0.02 and abs(warm[2] - reference[2]) < 0.01
