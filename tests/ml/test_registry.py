"""The starter pipeline end to end on a real MLflow tracking server, and the registry helpers.

The server is the session's `mlflow_uri` fixture (tests/ml/conftest.py); regions are built at 0.25
scale and the model is tiny, so the whole pipeline runs in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from pearl_pipelines.geo.regions import load_regions
from pearl_pipelines.ml.data import load_labelled_rasters
from pearl_pipelines.ml.models import load_model
from pearl_pipelines.ml.registry import MODEL_FILE, ModelRegistry
from pearl_pipelines.ml.replay import ReplaySet
from pearl_pipelines.ml.shipped import file_digest
from pearl_pipelines.ml.starter import (
    CHAMPION_ALIAS,
    EXPERIMENT,
    REPLAY_FILE,
    STARTER_ALIAS,
    StarterRecipe,
    StarterResult,
    ship_starter,
    train_starter,
)
from pearl_pipelines.ml.tracking import CONFUSION_ARTIFACT, TAG_SCHEMA
from pearl_pipelines.ml.train import TrainConfig, predict_array, training_precision
from pearl_pipelines.ml.zero_shot import ZeroShotRecipe
from pearl_pipelines.settings import Settings
from pearl_pipelines.synthetic.regions import build_region

TINY = StarterRecipe(
    arch="fcn",
    embed_dim=16,
    train=TrainConfig(epochs=2, steps_per_epoch=4, batch_size=4, patch_size=64, lr=1e-2, threads=2),
    replay_per_class=20,
    zero_shot=ZeroShotRecipe(patches=16, patch_size=64),
)


@pytest.fixture(scope="module")
def tiny_home(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A PEARL_HOME whose catalog holds train-a and holdout at 0.25 scale."""
    settings = Settings(home=tmp_path_factory.mktemp("starter_home"))
    regions = load_regions(settings.assets_dir)
    for name in ("train-a", "holdout"):
        build_region(regions[name], settings.catalog_dir, scale=0.25)
    return settings


def tiny_starter(settings: Settings, mlflow_uri: str, name: str, weights: Path | None = None) -> StarterResult:
    """The 4-class starter trained with the TINY recipe on train-a (or, with `weights`, registered from them)."""
    return train_starter(
        "chesapeake4",
        settings=settings,
        recipe=TINY,  # with `weights`, only its zero-shot step applies
        tracking_uri=mlflow_uri,
        train_regions=["train-a"],
        model_name=name,
        show_progress=False,
        weights=weights,
    )


def test_starter_is_trained_logged_registered_and_loads_back(tiny_home: Settings, mlflow_uri: str) -> None:
    name = "pearl-starter-test4"
    result = tiny_starter(tiny_home, mlflow_uri, name)
    client = MlflowClient(mlflow_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == EXPERIMENT
    assert run.data.params["arch"] == "fcn" and run.data.params["train.epochs"] == "2"
    assert run.data.params["train_regions"] == "train-a" and run.data.params["holdout_regions"] == "holdout"
    # The precision actually used is recorded, and it is what the (cached) selection gives on this machine.
    assert run.data.params["precision"] == result.precision.precision
    assert run.data.params["precision"] == training_precision(TINY.train).precision
    assert run.data.params["precision_source"] in {"probe", "cache", "unsupported", "setting"}
    assert run.data.tags[TAG_SCHEMA] == "chesapeake4"
    assert run.data.metrics["holdout_macro_f1"] == pytest.approx(result.holdout.macro_f1)
    assert {"holdout_f1_water", "holdout_precision_built", "holdout_recall_field", "train_seconds"} <= set(
        run.data.metrics
    )
    # Registered with the zero-shot head (transferable groups only); the trained head's score is kept beside it.
    assert {"trained_head_holdout_macro_f1", "zero_shot_fit_seconds"} <= set(run.data.metrics)
    losses = client.get_metric_history(result.run_id, "loss")
    assert [m.step for m in losses] == [1, 2]
    top = {a.path for a in client.list_artifacts(result.run_id)}
    assert {CONFUSION_ARTIFACT, "metrics.json", "model"} <= top
    assert {a.path for a in client.list_artifacts(result.run_id, "model")} == {"model/model.pt", "model/replay.npz"}
    metrics = json.loads(Path(client.download_artifacts(result.run_id, "metrics.json")).read_text())
    assert metrics["method"] == "reference_raster" and len(metrics["f1"]) == 4

    # Files under PEARL_HOME/models, the first version holds both aliases.
    assert result.model_path == tiny_home.models_dir / "starter-chesapeake4-fcn" / MODEL_FILE
    replay = ReplaySet.load(result.replay_path)
    assert result.replay_path.name == REPLAY_FILE and len(replay) == 4 * 20
    assert replay.class_names == ["water", "tree_canopy", "field", "built"]
    registry = ModelRegistry(mlflow_uri)
    assert result.model_version == "1" and result.became_champion
    assert registry.get_version(name, STARTER_ALIAS).version == "1"
    assert registry.get_version(name, CHAMPION_ALIAS).version == "1"

    # `models:/name@starter` loads back into a model that predicts exactly like the trained one.
    local = load_model(result.model_path)
    loaded = registry.load_model(name, STARTER_ALIAS)
    holdout = load_labelled_rasters(tiny_home.catalog_dir, ["holdout"], "chesapeake4")[0]
    np.testing.assert_array_equal(predict_array(loaded, holdout.image), predict_array(local, holdout.image))
    assert loaded.spec == local.spec
    weight = loaded.head.weight.detach()[:, :, 0, 0]
    assert not weight[:, slice(*loaded.channel_groups["backbone"])].any()
    assert weight[:, slice(*loaded.channel_groups["spectral_texture"])].abs().sum() > 0

    # A second starter moves `starter`; the champion stays where it was.
    again = tiny_starter(tiny_home, mlflow_uri, name)
    assert again.model_version == "2" and not again.became_champion
    assert registry.get_version(name, STARTER_ALIAS).version == "2"
    assert registry.get_version(name, CHAMPION_ALIAS).version == "1"
    assert again.holdout.macro_f1 == pytest.approx(result.holdout.macro_f1)  # same seed, same model


def test_shipped_weights_register_without_training(tiny_home: Settings, mlflow_uri: str, tmp_path: Path) -> None:
    trained = tiny_starter(tiny_home, mlflow_uri, "pearl-starter-trained4")
    weights = ship_starter(trained, tmp_path)
    assert weights == tmp_path / "starters" / "chesapeake4-fcn.pt"
    shipped = tiny_starter(tiny_home, mlflow_uri, "pearl-starter-shipped4", weights=weights)
    client = MlflowClient(mlflow_uri)
    run = client.get_run(shipped.run_id)
    used = trained.precision.precision
    assert run.data.params["source"] == "shipped" and run.data.params["shipped.precision"] == used
    assert run.data.params["shipped.steps"] == "8" and run.data.params["shipped.mlflow_run_id"] == trained.run_id
    assert run.data.params["shipped_sha256"] == file_digest(weights)
    assert run.data.params["embed_dim"] == "16"  # the recipe logged is the shipped one, not the default
    assert shipped.history == [] and client.get_metric_history(shipped.run_id, "loss") == []
    assert shipped.precision.precision == used and shipped.precision.source == "shipped"
    # float16 weights predict (almost) like the float32 model they came from, and were scored here.
    assert run.data.metrics["holdout_macro_f1"] == pytest.approx(shipped.holdout.macro_f1)
    assert shipped.holdout.macro_f1 == pytest.approx(trained.holdout.macro_f1, abs=0.01)
    assert ModelRegistry(mlflow_uri).get_version("pearl-starter-shipped4", CHAMPION_ALIAS).version == "1"
    assert set(ReplaySet.load(shipped.replay_path).labels.tolist()) == {0, 1, 2, 3}  # rebuilt from train-a


def test_registry_reports_what_is_missing(mlflow_uri: str, tmp_path: Path) -> None:
    registry = ModelRegistry(mlflow_uri)
    assert registry.get_version("pearl-no-such-model", CHAMPION_ALIAS) is None
    with pytest.raises(KeyError, match="models:/pearl-no-such-model@champion does not exist"):
        registry.load_model("pearl-no-such-model", CHAMPION_ALIAS)
    with pytest.raises(KeyError, match="models:/pearl-no-such-model/3"):
        registry.download("pearl-no-such-model", 3, tmp_path)
