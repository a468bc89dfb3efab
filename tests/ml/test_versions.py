from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from shapely.geometry import Point

from pearl_pipelines.ml.metrics import compute_metrics
from pearl_pipelines.ml.models import LandcoverModel
from pearl_pipelines.ml.retrain import evolve_schema
from pearl_pipelines.ml.versions import ModelVersion, label_set_digest
from tests.ml.conftest import labels_frame, pixel_box, tiny_model


def child(model: LandcoverModel) -> ModelVersion:
    parent = ModelVersion.from_model(model)
    schema = evolve_schema(model.spec.schema, add={"solar_panel": "#ffaa00"})
    rng = np.random.default_rng(0)
    return ModelVersion(
        id="v-test",
        parent_id=parent.id,
        base_model_id=parent.base_model_id,
        schema=schema,
        weight=rng.normal(size=(5, model.backbone.out_channels)),
        bias=rng.normal(size=5),
        strategy="logistic_regression",
        strategy_params={"C": 1.0},
        label_set_digest="ls-abc",
        metrics=compute_metrics(np.array([0, 1, 4]), np.array([0, 1, 1]), schema.names, method="grouped_cv:5"),
        info={"seed": 0, "new_classes": ["solar_panel"]},
    )


def test_save_load_roundtrip(fcn: LandcoverModel, tmp_path: Path) -> None:
    version = child(fcn)
    labels = labels_frame([Point(500_130, 4_400_450), pixel_box(0, 0, 5, 5)], ["water", "solar_panel"])
    version.save(tmp_path / "ckpt", labels=labels)
    loaded = ModelVersion.load(tmp_path / "ckpt")
    for field in ("id", "parent_id", "base_model_id", "schema", "strategy", "strategy_params", "label_set_digest"):
        assert getattr(loaded, field) == getattr(version, field)
    assert loaded.metrics == version.metrics and loaded.info == version.info and loaded.created == version.created
    np.testing.assert_array_equal(loaded.weight, version.weight)
    np.testing.assert_array_equal(loaded.bias, version.bias)
    saved_labels = ModelVersion.load_labels(tmp_path / "ckpt")
    assert saved_labels is not None and label_set_digest(saved_labels) == label_set_digest(labels)


def test_to_model_carries_the_head_and_checks_the_backbone(fcn: LandcoverModel) -> None:
    version = child(fcn)
    model = version.to_model(fcn)
    assert model.spec.schema.names[-1] == "solar_panel" and len(fcn.spec.schema) == 4  # base untouched
    x = torch.randint(0, 255, (1, 4, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        expected = torch.einsum("kc,bchw->bkhw", torch.from_numpy(version.weight), fcn.embed(x))
        np.testing.assert_allclose(model(x), expected + torch.from_numpy(version.bias)[:, None, None], atol=1e-5)
    with pytest.raises(ValueError, match="was trained on backbone"):
        version.to_model(tiny_model("fcn", seed=5))


def test_missing_checkpoint_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no model version checkpoint"):
        ModelVersion.load(tmp_path)


def test_label_set_digest_ignores_order_but_not_content() -> None:
    labels = labels_frame([Point(1, 2), pixel_box(0, 0, 3, 3), Point(5, 5)], ["water", "field", "built"])
    shuffled = labels.iloc[[2, 0, 1]]
    assert label_set_digest(labels) == label_set_digest(shuffled)
    changed = labels.assign(class_name=["water", "field", "water"])
    assert label_set_digest(changed) != label_set_digest(labels)
    moved = labels.set_geometry([Point(1, 2.5), *labels.geometry.iloc[1:]])
    assert label_set_digest(moved) != label_set_digest(labels)
