"""ml.suggest: "label here next" points on real embedding caches (float16 on disk, read back through the memmaps)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from affine import Affine
from pyproj import Transformer
from scipy.spatial.distance import pdist

from pearl_pipelines.classes import load_schema
from pearl_pipelines.ml.embeddings import EmbeddingCache
from pearl_pipelines.ml.errors import SuggestionError
from pearl_pipelines.ml.suggest import MAX_SUGGESTIONS, suggest_clicks, uncertainty
from pearl_pipelines.ml.versions import ModelVersion
from tests.ml.conftest import CRS, ORIGIN

SIZE = 100
AMBIGUOUS_COL = 50  # embedding channel 0 crosses zero here: the two learned classes tie
TRANSFORM = Affine(1.0, 0.0, ORIGIN[0], 0.0, -1.0, ORIGIN[1])
# Class 0 ("east") wins where x0 > 0, class 1 ("west") where x0 < 0; class 2 is unlearned (a class added since the
# last retrain).
WEIGHT = np.array([[2.0, 0.0, 0.0], [-2.0, 0.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
BIAS = np.array([0.0, 0.0, -1e4], np.float32)


def linear(x: np.ndarray) -> np.ndarray:
    return x @ WEIGHT.T + BIAS


def make_cache(directory: Path, valid: np.ndarray | None = None) -> EmbeddingCache:
    """SIZE x SIZE pixels; channel 0 = (col - 50) / 10, so margin is smallest on column 50; channels 1, 2 noise."""
    rng = np.random.default_rng(1)
    cols = np.broadcast_to(np.arange(SIZE, dtype=np.float32), (SIZE, SIZE))
    block = np.stack([(cols - AMBIGUOUS_COL) / 10, *rng.normal(5.0, 1.0, (2, SIZE, SIZE))], axis=-1)
    cache = EmbeddingCache.create(
        directory, crs=CRS, transform=TRANSFORM, height=SIZE, width=SIZE, channels=3, backbone_digest="bb-test"
    )
    cache.write_block(0, 0, torch.from_numpy(block.astype(np.float32)), valid)
    cache.flush()
    return EmbeddingCache.open(directory)


@pytest.fixture
def cache(tmp_path: Path) -> EmbeddingCache:
    return make_cache(tmp_path / "emb")


def test_points_fall_where_the_two_classes_tie(cache: EmbeddingCache) -> None:
    found = suggest_clicks(cache, linear, n=8, stride=2, spacing_px=6)
    assert len(found) == 8
    # Grid every 2 px from column 1: columns 49 and 51 are the closest to the tie, at equal margins.
    assert set(found.cols.tolist()) <= {AMBIGUOUS_COL - 1, AMBIGUOUS_COL + 1}
    assert np.all(found.score > 0.8) and np.all(np.diff(found.score) <= 0)  # 1 - tanh(0.2), best first
    assert set(found.predicted.tolist()) <= {0, 1}  # the unlearned class is never "predicted"
    assert np.all(found.rows % 2 == 1) and np.all(found.cols % 2 == 1)  # on the stride grid


def test_entropy_agrees_on_the_ambiguous_band(cache: EmbeddingCache) -> None:
    found = suggest_clicks(cache, linear, n=6, stride=1, spacing_px=8, method="entropy")
    assert len(found) == 6 and np.all(np.abs(found.cols - AMBIGUOUS_COL) <= 1)


def test_uncertainty_is_stable_and_bounded() -> None:
    logits = np.array([[1000.0, 1000.0, -1e4], [50.0, -50.0, -1e4], [3.0, 3.0, 3.0]])
    margin = uncertainty(logits, "margin")
    entropy = uncertainty(logits, "entropy")
    assert np.all(np.isfinite(margin)) and np.all(np.isfinite(entropy))  # no overflow at logit 1000
    np.testing.assert_allclose(margin, [1.0, 0.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(entropy, [np.log(2) / np.log(3), 0.0, 1.0], atol=1e-12)


def test_suggestions_keep_their_spacing_and_fill_the_area(cache: EmbeddingCache) -> None:
    found = suggest_clicks(cache, linear, n=30, stride=1, spacing_px=12)
    assert len(found) == 30
    points = np.stack([found.rows, found.cols], axis=-1)
    assert pdist(points).min() >= 12
    # Default spacing: sqrt(area / n) / 2, and every point keeps it.
    default = suggest_clicks(cache, linear, n=4)
    assert default.spacing_px == pytest.approx(np.sqrt(SIZE * SIZE / 4) / 2)
    assert pdist(np.stack([default.rows, default.cols], axis=-1)).min() >= default.spacing_px


def test_fewer_points_when_the_area_cannot_hold_them(tmp_path: Path) -> None:
    valid = np.zeros((SIZE, SIZE), bool)
    valid[40:60, 40:60] = True  # 20 x 20 px
    small = make_cache(tmp_path / "small", valid)
    found = suggest_clicks(small, linear, n=50, stride=1, spacing_px=15)
    assert 2 <= len(found) <= 4  # at most a 2 x 2 arrangement fits
    assert pdist(np.stack([found.rows, found.cols], axis=-1)).min() >= 15


def test_invalid_pixels_are_never_suggested(tmp_path: Path) -> None:
    valid = np.ones((SIZE, SIZE), bool)
    valid[:, AMBIGUOUS_COL - 5 : AMBIGUOUS_COL + 6] = False  # the most uncertain band lies outside the AOI
    valid[:30] = False
    masked = make_cache(tmp_path / "masked", valid)
    found = suggest_clicks(masked, linear, n=20, stride=1, spacing_px=3)
    assert len(found) == 20
    assert masked.valid[found.rows, found.cols].all()
    assert set(np.abs(found.cols - AMBIGUOUS_COL).tolist()) <= {6, 7, 8}  # the nearest valid columns
    nothing = make_cache(tmp_path / "empty", np.zeros((SIZE, SIZE), bool))
    assert len(suggest_clicks(nothing, linear, n=5)) == 0


def test_existing_labels_are_kept_at_a_distance(cache: EmbeddingCache) -> None:
    labelled_rows = np.arange(0, SIZE, 10)
    exclude = (labelled_rows, np.full(labelled_rows.shape, AMBIGUOUS_COL))
    found = suggest_clicks(cache, linear, n=10, stride=1, spacing_px=9, exclude=exclude)
    assert len(found) == 10
    labels = np.stack(exclude, axis=-1)[:, None, :]
    distances = np.hypot(*(np.stack([found.rows, found.cols], axis=-1)[None] - labels).transpose(2, 0, 1))
    assert distances.min() >= 9
    free = suggest_clicks(cache, linear, n=10, stride=1, spacing_px=9)
    assert np.hypot(*(np.stack([free.rows, free.cols], axis=-1)[None] - labels).transpose(2, 0, 1)).min() < 9


def test_chunked_scoring_gives_the_same_points(cache: EmbeddingCache) -> None:
    whole = suggest_clicks(cache, linear, n=12, stride=3)
    chunked = suggest_clicks(cache, linear, n=12, stride=3, chunk_pixels=7)
    np.testing.assert_array_equal(whole.rows, chunked.rows)
    np.testing.assert_array_equal(whole.cols, chunked.cols)


def test_a_version_head_and_a_spatial_caller_fit(cache: EmbeddingCache) -> None:
    """A ModelVersion's own logits (x, xy): the callable receives the pixels' map coordinates when asked."""
    version = ModelVersion(
        id="v-test",
        parent_id=None,
        base_model_id="bb-test",
        schema=load_schema("chesapeake4"),
        weight=np.vstack([WEIGHT, np.zeros((1, 3), np.float32)]),
        bias=np.append(BIAS, -1e4).astype(np.float32),
        strategy="test",
    )
    seen: list[np.ndarray] = []

    def spatial(x: np.ndarray, xy: np.ndarray) -> np.ndarray:
        seen.append(xy)
        return version.logits(x, xy)

    found = suggest_clicks(cache, spatial, n=5, stride=2, spacing_px=6, needs_xy=True)
    assert len(found) == 5 and set(found.cols.tolist()) <= {AMBIGUOUS_COL - 1, AMBIGUOUS_COL + 1}
    xy = np.concatenate(seen)
    assert xy.shape[1] == 2 and xy[:, 0].min() == ORIGIN[0] + 1.5  # first grid column (1) at its pixel centre


def test_geojson_points_are_the_lonlat_of_the_pixel_centres(cache: EmbeddingCache) -> None:
    found = suggest_clicks(cache, linear, n=5, stride=2)
    collection = found.to_geojson(["east", "west", "unlearned"])
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 5
    to_lonlat = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    for i, feature in enumerate(collection["features"]):
        x = ORIGIN[0] + found.cols[i] + 0.5
        y = ORIGIN[1] - (found.rows[i] + 0.5)
        lon, lat = to_lonlat.transform(x, y)
        assert feature["geometry"]["type"] == "Point"
        assert feature["geometry"]["coordinates"] == pytest.approx([lon, lat], abs=1e-9)
        props = feature["properties"]
        assert props["rank"] == i + 1 and props["score"] == pytest.approx(found.score[i])
        assert props["predicted_class"] == ("east" if found.cols[i] > AMBIGUOUS_COL else "west")
    assert -78 < lon < -74 and 39 < lat < 40.5  # UTM 18N at this origin: Maryland


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, f"ask for 1 to {MAX_SUGGESTIONS}"),
        ({"n": MAX_SUGGESTIONS + 1}, f"ask for 1 to {MAX_SUGGESTIONS}"),
        ({"method": "random"}, "accepted: margin, entropy"),
        ({"stride": 0}, ">= 1"),
        ({"spacing_px": -1.0}, ">= 0 pixels"),
    ],
)
def test_bad_options_say_what_is_accepted(cache: EmbeddingCache, kwargs: dict, message: str) -> None:
    with pytest.raises(SuggestionError, match=message):
        suggest_clicks(cache, linear, **kwargs)
    assert issubclass(SuggestionError, ValueError)


def test_a_head_with_the_wrong_output_is_refused(cache: EmbeddingCache) -> None:
    with pytest.raises(SuggestionError, match=r"expected \(N, K\)"):
        suggest_clicks(cache, lambda x: x[:, 0], n=3)
