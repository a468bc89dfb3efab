"""The starters' zero-shot head: fitted on the transferable feature groups of domain-randomised synthetic patches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pearl_pipelines.geo.regions import load_regions
from pearl_pipelines.ml.data import LabelledRaster, load_labelled_rasters
from pearl_pipelines.ml.metrics import compute_metrics
from pearl_pipelines.ml.models import LandcoverModel, with_features
from pearl_pipelines.ml.train import predict_array
from pearl_pipelines.ml.zero_shot import ZeroShotRecipe, fit_zero_shot_head
from pearl_pipelines.settings import Settings
from pearl_pipelines.synthetic.regions import build_region
from tests.ml.conftest import tiny_model

RECIPE = ZeroShotRecipe(patches=40, patch_size=64)


@pytest.fixture(scope="module")
def rasters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[LabelledRaster]]:
    settings = Settings(home=tmp_path_factory.mktemp("zero_shot_home"))
    regions = load_regions(settings.assets_dir)
    for name in ("train-a", "holdout"):
        build_region(regions[name], settings.catalog_dir, scale=0.25)
    return {name: load_labelled_rasters(settings.catalog_dir, [name], "chesapeake4") for name in ("train-a", "holdout")}


def wide_tiny() -> LandcoverModel:
    return with_features(tiny_model("fcn", "chesapeake4"), ["spectral_texture"])


def holdout_f1(model: LandcoverModel, rasters: list[LabelledRaster], shift: tuple[float, float] = (1.0, 0.0)) -> float:
    """Macro F1 over the rasters' labelled pixels, the imagery optionally seen through another sensor (gain, offset)."""
    truth, predicted = [], []
    for r in rasters:
        image = np.clip(r.image.astype(np.float32) * shift[0] + shift[1], 0, 255).astype(np.uint8)
        classes = predict_array(model, image)
        keep = r.labels < len(model.spec.schema)
        truth.append(r.labels[keep])
        predicted.append(classes[keep])
    names = model.spec.schema.names
    return compute_metrics(np.concatenate(truth), np.concatenate(predicted), names, method="test").macro_f1


def test_head_weighs_only_the_transferable_groups_and_maps_unseen_imagery(rasters) -> None:
    model = wide_tiny()
    untrained = holdout_f1(model, rasters["holdout"])
    fit = fit_zero_shot_head(model, rasters["train-a"], RECIPE, seed=0)
    assert fit is not None and fit.groups == ["spectral_texture"] and fit.samples > 1000
    weight = model.head.weight.detach()[:, :, 0, 0]
    assert not weight[:, slice(*model.channel_groups["backbone"])].any()  # the synthetic-trained features: none
    assert weight[:, slice(*model.channel_groups["spectral_texture"])].abs().min(dim=1).values.gt(0).all()
    # On the held-out region, clean and through a brighter, offset sensor, the map is far above chance.
    clean = holdout_f1(model, rasters["holdout"])
    shifted = holdout_f1(model, rasters["holdout"], shift=(1.25, 12.0))
    assert clean > 0.8 and shifted > 0.75 and clean > untrained + 0.3, (untrained, clean, shifted)


def test_same_seed_same_head_and_no_patches_keeps_the_trained_head(rasters) -> None:
    first, second, kept = wide_tiny(), wide_tiny(), wide_tiny()
    fit_zero_shot_head(first, rasters["train-a"], RECIPE, seed=3)
    fit_zero_shot_head(second, rasters["train-a"], RECIPE, seed=3)
    assert torch.equal(first.head.weight, second.head.weight)
    before = kept.head.weight.detach().clone()
    assert fit_zero_shot_head(kept, rasters["train-a"], RECIPE.model_copy(update={"patches": 0})) is None
    assert torch.equal(kept.head.weight, before)


def test_a_model_without_transferable_groups_keeps_its_head(rasters) -> None:
    narrow = tiny_model("fcn", "chesapeake4")
    before = narrow.head.weight.detach().clone()
    assert fit_zero_shot_head(narrow, rasters["train-a"], RECIPE) is None
    assert torch.equal(narrow.head.weight, before)
