from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from shapely.geometry import LineString, Point, Polygon
from sklearn.linear_model import LogisticRegression

from pearl_pipelines.classes import NODATA_CLASS
from pearl_pipelines.ml.embeddings import EmbeddingCache, apply_head, sample_embeddings
from pearl_pipelines.ml.inference import predict
from pearl_pipelines.ml.models import LandcoverModel
from pearl_pipelines.ml.replay import ReplaySet, build_replay_set
from pearl_pipelines.ml.retrain import (
    UNLEARNED_BIAS,
    LogisticRegressionHead,
    RetrainError,
    RetrainOptions,
    evolve_schema,
    make_strategy,
    rename_classes,
    retrain,
)
from pearl_pipelines.ml.samples import SamplingConfig
from pearl_pipelines.ml.versions import ModelVersion
from tests.ml.conftest import CRS, ORIGIN, blob_image, labels_frame, pixel_box, pixel_xy, tiny_model, write_image

PANELS = [(40, 40, 80, 80), (200, 300, 240, 340)]  # two bright squares: the first is labelled, the second not


@dataclass
class Area:
    cache: EmbeddingCache
    classes: np.ndarray  # the starter model's map of the area
    parent: ModelVersion
    replay: ReplaySet


@pytest.fixture(scope="module")
def area(fcn: LandcoverModel, tmp_path_factory: pytest.TempPathFactory) -> Area:
    root = tmp_path_factory.mktemp("retrain")
    image = blob_image(288, 384, seed=3)
    for r0, c0, r1, c1 in PANELS:
        image[:, r0:r1, c0:c1] = np.array([40, 60, 200, 30], np.uint8)[:, None, None]
    result = predict(
        fcn, write_image(root / "image.tif", image), root / "pred", device="cpu", embeddings_dir=root / "emb"
    )
    with rasterio.open(result.classes_path) as src:
        classes = src.read(1)
    replay = build_replay_set(fcn, [blob_image(128, 128, seed=9)], [classes[:128, :128]], per_class=40, device="cpu")
    return Area(EmbeddingCache.open(root / "emb"), classes, ModelVersion.from_model(fcn), replay)


def model_points(area: Area, n: int, seed: int = 0, classes: tuple[int, ...] | None = None) -> gpd.GeoDataFrame:
    """Points labelled with what the starter model predicts there, away from the panels."""
    rng = np.random.default_rng(seed)
    ok = np.ones_like(area.classes, bool)
    for r0, c0, r1, c1 in PANELS:
        ok[r0 - 5 : r1 + 5, c0 - 5 : c1 + 5] = False
    if classes is not None:
        ok &= np.isin(area.classes, classes)
    rows, cols = np.nonzero(ok)
    pick = rng.choice(len(rows), n, replace=False)
    xs, ys = pixel_xy(rows[pick], cols[pick])
    names = [area.parent.schema.names[c] for c in area.classes[rows[pick], cols[pick]]]
    return labels_frame([Point(x, y) for x, y in zip(xs, ys, strict=True)], names)


def with_panel_label(points: gpd.GeoDataFrame, name: str = "solar_panel") -> gpd.GeoDataFrame:
    r0, c0, r1, c1 = PANELS[0]
    panel = labels_frame([pixel_box(r0 + 5, c0 + 5, r1 - 5, c1 - 5)], [name])
    panel["label_id"] = 10_000
    return gpd.GeoDataFrame(gpd.pd.concat([points, panel], ignore_index=True), crs=CRS)


def test_new_class_grows_the_head_and_is_predicted_where_it_looks_alike(area: Area, tmp_path: Path) -> None:
    labels = with_panel_label(model_points(area, 150))
    version = retrain(area.parent, area.cache, labels, replay=area.replay, new_classes={"solar_panel": "#ffaa00"})
    assert version.schema.names == [*area.parent.schema.names, "solar_panel"]
    assert version.weight.shape == (5, area.cache.meta.channels) and version.parent_id == area.parent.id
    assert version.new_classes == ["solar_panel"] and version.schema.classes[4].color == "#ffaa00"
    result = apply_head(area.cache, version.weight, version.bias, version.schema, tmp_path)
    with rasterio.open(result.classes_path) as src:
        classes = src.read(1)
        assert src.colormap(1)[4][:3] == (255, 170, 0)
    is_panel = np.zeros_like(classes, bool)
    for r0, c0, r1, c1 in PANELS:
        is_panel[r0 + 3 : r1 - 3, c0 + 3 : c1 - 3] = True
    r0, c0, r1, c1 = PANELS[1]  # never labelled
    assert (classes[r0 + 3 : r1 - 3, c0 + 3 : c1 - 3] == 4).mean() > 0.9
    assert (classes[~is_panel] == 4).mean() < 0.02
    assert (classes[~is_panel] == area.classes[~is_panel]).mean() > 0.8  # the rest of the map is kept


def test_a_new_class_clicked_once_is_not_swamped_by_many_labels(area: Area, tmp_path: Path) -> None:
    """One click on a panel among 1200 points of other classes: the new class is up-weighted (capped), so
    the unlabelled panel is predicted as a panel with high confidence, not as a near tie."""
    r0, c0, _, _ = PANELS[0]
    clicked = labels_frame([Point(*pixel_xy(r0 + 10, c0 + 10))], ["solar_panel"])
    clicked["label_id"] = 10_000
    labels = gpd.GeoDataFrame(gpd.pd.concat([model_points(area, 1200, seed=5), clicked], ignore_index=True), crs=CRS)

    def panel_share(options: RetrainOptions) -> tuple[float, float]:
        version = retrain(
            area.parent, area.cache, labels, replay=area.replay, new_classes={"solar_panel": "#ffaa00"}, options=options
        )
        out = tmp_path / str(options.max_class_boost)
        result = apply_head(area.cache, version.weight, version.bias, version.schema, out)
        with rasterio.open(result.classes_path) as src, rasterio.open(result.confidence_path) as conf:
            window = np.s_[PANELS[1][0] + 3 : PANELS[1][2] - 3, PANELS[1][1] + 3 : PANELS[1][3] - 3]  # never labelled
            return float((src.read(1)[window] == 4).mean()), float(conf.read(1)[window].mean())

    # The same replay share for both (the boost is under test, not the replay choice).
    share, confidence = panel_share(RetrainOptions(replay_scale=1.0))
    unweighted_share, unweighted_confidence = panel_share(RetrainOptions(replay_scale=1.0, max_class_boost=1.0))
    assert share > 0.95 and confidence > 220  # max softmax * 255: above 0.86 on average
    assert unweighted_share < share and unweighted_confidence < confidence - 50


def test_retrain_is_deterministic(area: Area) -> None:
    labels = with_panel_label(model_points(area, 80, seed=1))
    options = RetrainOptions(sampling=SamplingConfig(max_pixels_per_polygon=50), seed=3)
    kwargs = {"replay": area.replay, "new_classes": {"solar_panel": "#ffaa00"}, "options": options}
    a, b = retrain(area.parent, area.cache, labels, **kwargs), retrain(area.parent, area.cache, labels, **kwargs)
    np.testing.assert_array_equal(a.weight, b.weight)
    np.testing.assert_array_equal(a.bias, b.bias)
    assert a.label_set_digest == b.label_set_digest and a.metrics == b.metrics
    other = retrain(area.parent, area.cache, labels, **{**kwargs, "options": RetrainOptions(seed=4)})
    assert not np.array_equal(a.weight, other.weight)


def test_metrics_come_from_grouped_cross_validation(area: Area) -> None:
    version = retrain(area.parent, area.cache, model_points(area, 100, seed=2), replay=area.replay)
    assert version.metrics is not None and version.metrics.method == "grouped_cv:5"
    assert version.metrics.n_samples == version.info["n_user_samples"] == 100
    assert version.metrics.macro_f1 > 0.5


def test_single_labelled_class_is_fine_with_replay_and_others_survive(area: Area, tmp_path: Path) -> None:
    labels = model_points(area, 30, classes=(1,))
    version = retrain(area.parent, area.cache, labels, replay=area.replay)
    result = apply_head(area.cache, version.weight, version.bias, version.schema, tmp_path)
    with rasterio.open(result.classes_path) as src:
        predicted = np.unique(src.read(1))
    assert len(set(predicted.tolist()) - {NODATA_CLASS}) >= 3  # replay keeps the unlabelled classes alive


def test_classes_without_any_sample_are_never_predicted(area: Area) -> None:
    version = retrain(area.parent, area.cache, model_points(area, 60, classes=(0, 1)))
    assert version.info["unlearned_classes"] == ["field", "built"]
    assert np.all(version.bias[2:] == UNLEARNED_BIAS) and np.all(version.weight[2:] == 0)


def test_rename_keeps_the_index_and_removal_is_refused(area: Area) -> None:
    renamed = rename_classes(area.parent, {"field": "cropland"})
    assert renamed.schema.names == ["water", "tree_canopy", "cropland", "built"]
    np.testing.assert_array_equal(renamed.weight, area.parent.weight)
    assert renamed.parent_id == area.parent.id
    with pytest.raises(RetrainError, match="cannot be removed"):
        evolve_schema(area.parent.schema, remove=["built"])
    with pytest.raises(RetrainError, match="cannot rename 'forest'"):
        rename_classes(area.parent, {"forest": "woods"})
    with pytest.raises(RetrainError, match="unique"):
        rename_classes(area.parent, {"field": "water"})


def bad(area: Area, case: str) -> tuple[gpd.GeoDataFrame | None, dict]:
    good = model_points(area, 20, seed=5)
    x, y = pixel_xy(np.array([10]), np.array([10]))
    one = labels_frame([Point(x[0], y[0])], ["water"])
    cases = {
        "none": (None, {}),
        "empty": (good.iloc[:0], {}),
        "no class column": (good.drop(columns="class_name"), {}),
        "no crs": (good.set_crs(None, allow_override=True), {}),
        "blank class": (good.assign(class_name=["", *good["class_name"].tolist()[1:]]), {}),
        "null geometry": (good.set_geometry([None, *good.geometry.iloc[1:]]), {}),
        "line": (labels_frame([LineString([(x[0], y[0]), (x[0] + 5, y[0])])], ["water"]), {}),
        "nan": (labels_frame([Point(np.nan, np.nan)], ["water"]), {}),
        "bowtie": (labels_frame([Polygon([(x[0], y[0]), (x[0] + 9, y[0] - 9), (x[0] + 9, y[0]), (x[0], y[0] - 9)])],
                                ["water"]), {}),
        "outside": (labels_frame([Point(ORIGIN[0] - 5000, ORIGIN[1])], ["water"]), {}),
        "unknown class": (with_panel_label(good, "solar_panel"), {}),
        "bad colour": (with_panel_label(good, "solar_panel"), {"new_classes": {"solar_panel": "orange"}}),
        "bad class name": (with_panel_label(good, "Solar Panel"), {"new_classes": {"Solar Panel": "#ffaa00"}}),
        "one class": (one, {}),
    }  # fmt: skip
    return cases[case]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("none", "no labels: add at least one point or polygon"),
        ("empty", "no labels"),
        ("no class column", "columns 'geometry' and 'class_name'"),
        ("no crs", "labels have no CRS"),
        ("blank class", "have no class_name"),
        ("null geometry", "have no geometry"),
        ("line", "are LineString; accepted geometries: Point, MultiPoint, Polygon, MultiPolygon"),
        ("nan", "NaN or infinite coordinates"),
        ("bowtie", "invalid"),
        ("outside", "none of the 1 labels falls inside the area with embeddings"),
        ("unknown class", "'solar_panel' not in schema 'chesapeake4' (water, tree_canopy, field, built); to add"),
        ("bad colour", "new class 'solar_panel' cannot be added: Value error, colour 'orange' must be #rrggbb"),
        ("bad class name", "must be snake_case"),
        ("one class", "all labels are of class 'water' and no replay set brings other classes"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(area: Area, case: str, message: str) -> None:
    labels, kwargs = bad(area, case)
    with pytest.raises(RetrainError) as info:
        retrain(area.parent, area.cache, labels, **kwargs)
    assert message in str(info.value)


def test_embeddings_of_another_backbone_are_refused(area: Area) -> None:
    other = ModelVersion.from_model(tiny_model("fcn", seed=7))
    with pytest.raises(RetrainError, match="predict the area with this model"):
        retrain(other, area.cache, model_points(area, 20))
    with pytest.raises(RetrainError, match="unknown retrain strategy 'svm'; available: logistic_regression"):
        make_strategy("svm")


def test_logistic_head_folds_standardisation_into_the_weights() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, [0.1, 5.0, 1.0], size=(300, 3)).astype(np.float32)
    y = (x[:, 0] > 3.0).astype(int) + (x[:, 1] > 4.0).astype(int)
    weight, bias, _ = LogisticRegressionHead(C=10.0, tol=1e-8).fit(x, y, n_classes=3)
    z = (x - x.mean(0)) / x.std(0)
    reference = LogisticRegression(C=10.0, max_iter=500, tol=1e-8).fit(z, y).predict_proba(z)
    logits = x @ weight.T + bias
    probs = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probs / probs.sum(1, keepdims=True), reference, atol=5e-4)


def test_several_caches_pool_their_labels(area: Area, fcn: LandcoverModel, tmp_path: Path) -> None:
    """Two AOIs of a project: one retrain sees the labels of both; labels outside both are counted."""
    image = blob_image(128, 128, seed=4)
    origin = (ORIGIN[0] + 1000, ORIGIN[1])
    second = predict(fcn, write_image(tmp_path / "b.tif", image, origin), tmp_path / "b", embeddings_dir=tmp_path / "e")
    assert second.embeddings_dir is not None
    points = model_points(area, 40, seed=6)
    x, y = origin[0] + 64.5, origin[1] - 64.5
    far = labels_frame([Point(x, y), Point(ORIGIN[0] - 9000, ORIGIN[1])], ["built", "water"])
    far["label_id"] = [500, 501]
    labels = gpd.GeoDataFrame(gpd.pd.concat([points, far], ignore_index=True), crs=CRS)
    caches = [area.cache, EmbeddingCache.open(tmp_path / "e")]
    version = retrain(area.parent, caches, labels, replay=area.replay)
    assert version.info["n_user_samples"] == 41 and version.info["labels_outside_area"] == 1
    with pytest.raises(RetrainError, match="none of the 1 labels falls inside the 2 areas"):
        retrain(area.parent, caches, far.iloc[[1]])


def _cv_accuracy(version: ModelVersion) -> float:
    assert version.metrics is not None
    return version.metrics.accuracy


def test_replay_never_makes_grouped_cv_accuracy_worse(area: Area) -> None:
    """A replay set from another domain (its labels permuted, so it contradicts the user's): full replay hurts,
    and the per-retrain choice by grouped CV keeps the retrain at least as good as the one without replay."""
    labels = model_points(area, 80, seed=11)
    rng = np.random.default_rng(0)
    k = len(area.parent.schema)
    permuted = ReplaySet(area.replay.embeddings, rng.permutation(k)[area.replay.labels], area.replay.class_names)
    for replay in (area.replay, permuted):
        fixed = {
            s: retrain(area.parent, area.cache, labels, replay=replay, options=RetrainOptions(replay_scale=s))
            for s in (0.0, 0.3, 1.0)
        }
        chosen = retrain(area.parent, area.cache, labels, replay=replay)
        assert _cv_accuracy(chosen) >= _cv_accuracy(fixed[0.0])
        assert _cv_accuracy(chosen) == max(map(_cv_accuracy, fixed.values()))
        assert chosen.replay_scale in fixed
        assert chosen.info["replay_cv_accuracy"] == {f"{s:g}": round(_cv_accuracy(v), 4) for s, v in fixed.items()}
    assert _cv_accuracy(fixed[1.0]) < _cv_accuracy(fixed[0.0])  # the permuted replay does hurt at full weight
    assert chosen.replay_scale < 1.0 and chosen.info["n_replay_samples"] in (0, len(permuted))


def test_one_class_labels_keep_the_replay_set(area: Area) -> None:
    labels = model_points(area, 20, seed=2, classes=(int(np.bincount(area.classes.ravel()).argmax()),))
    version = retrain(area.parent, area.cache, labels, replay=area.replay)
    assert version.replay_scale > 0 and version.info["n_replay_samples"] == len(area.replay)


def _with_starter_prior(area: Area) -> ReplaySet:
    return area.replay.with_prior(area.parent.weight, area.parent.bias)


def test_replay_prior_round_trips_and_must_match_the_embedding(area: Area, tmp_path: Path) -> None:
    replay = _with_starter_prior(area)
    loaded = ReplaySet.load(replay.save(tmp_path / "replay.npz"))
    np.testing.assert_array_equal(loaded.prior_weight, area.parent.weight)
    np.testing.assert_array_equal(loaded.prior_bias, area.parent.bias)
    assert ReplaySet.load(area.replay.save(tmp_path / "plain.npz")).prior_weight is None
    with pytest.raises(ValueError, match="prior head must be"):
        area.replay.with_prior(area.parent.weight[:, :-1], area.parent.bias)


def test_a_few_clicks_correct_the_prior_map_instead_of_replacing_it(area: Area) -> None:
    """Three clicks of two classes: with the starter's map as a prior, the retrain keeps predicting the classes
    nobody clicked where the starter did; without it, those classes vanish wherever replay is thin."""
    labels = model_points(area, 3, seed=21, classes=(0, 1))
    schema = area.parent.schema
    rows, cols = np.meshgrid(np.arange(0, area.cache.shape[0], 6), np.arange(0, area.cache.shape[1], 6))
    x = sample_embeddings(area.cache, rows.ravel(), cols.ravel())
    starter = np.argmax(area.parent.logits(x), axis=1)
    # A replay set that agrees with the starter: its own map, sampled in this area.
    pick = np.random.default_rng(4).choice(len(x), 400, replace=False)
    replay = ReplaySet(x[pick], starter[pick], schema.names, area.parent.base_model_id)
    replay = replay.with_prior(area.parent.weight, area.parent.bias)
    agree = {}
    for prior in (True, False):
        options = RetrainOptions(evaluate=False, replay_scale=0.3, prior=prior)
        version = retrain(area.parent, area.cache, labels, replay=replay, options=options)
        assert version.info["prior_centred"] is prior
        if prior:  # the classes nobody clicked are known from the prior
            assert version.info["unlearned_classes"] == []
        agree[prior] = float((np.argmax(version.logits(x), axis=1) == starter).mean())
    assert len(schema) > 2 and agree[True] > 0.8 and agree[True] > agree[False] + 0.1, agree
    # The clicked points themselves follow the clicks.
    clicked = retrain(area.parent, area.cache, labels, replay=replay, options=RetrainOptions(prior=True))
    xy = np.column_stack([labels.geometry.x, labels.geometry.y])
    rows, cols = rasterio.transform.rowcol(area.cache.transform, xy[:, 0], xy[:, 1])
    predicted = np.argmax(clicked.logits(sample_embeddings(area.cache, np.array(rows), np.array(cols))), axis=1)
    assert [schema.names[i] for i in predicted] == labels["class_name"].tolist()


def test_the_prior_is_chosen_by_grouped_cv_and_never_makes_it_worse(area: Area) -> None:
    labels = model_points(area, 60, seed=8)
    replay = _with_starter_prior(area)
    free = retrain(area.parent, area.cache, labels, replay=replay, options=RetrainOptions(prior=False))
    chosen = retrain(area.parent, area.cache, labels, replay=replay, options=RetrainOptions(prior=None))
    assert retrain(area.parent, area.cache, labels, replay=replay).info["prior_centred"] is True  # the default
    assert set(chosen.info["replay_cv_accuracy"]) == {"0", "0.3", "1", "0+prior", "0.3+prior", "1+prior"}
    assert round(_cv_accuracy(chosen), 4) == max(chosen.info["replay_cv_accuracy"].values())
    assert _cv_accuracy(chosen) >= _cv_accuracy(free)
    # Only the logistic strategy fits around a prior: the others ignore it.
    mlp = retrain(area.parent, area.cache, labels, replay=replay, strategy=make_strategy("mlp"))
    assert mlp.info["prior_centred"] is False


@dataclass
class _FreeLogistic(LogisticRegressionHead):
    """The logistic head, but a strategy that says it does not fit around a prior."""

    centres_on_prior: ClassVar[bool] = False


def test_whether_a_fit_is_centred_on_the_prior_is_the_strategys_own_business(area: Area) -> None:
    labels = model_points(area, 30, seed=8)
    replay = _with_starter_prior(area)
    assert retrain(area.parent, area.cache, labels, replay=replay).info["prior_centred"] is True
    # The same fit, asked through the strategy's `centres_on_prior` and not its class: not centred.
    free = retrain(area.parent, area.cache, labels, replay=replay, strategy=_FreeLogistic())
    assert free.info["prior_centred"] is False and free.prior_scale is None
    with pytest.raises(RetrainError, match="does not fit around a prior"):
        make_strategy("mlp").fit_centred(
            np.zeros((2, 4)), np.zeros(2, np.int64), (np.zeros((2, 4)), np.zeros(2)), sample_weight=np.ones(2)
        )
