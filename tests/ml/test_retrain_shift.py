"""End to end: a starter model meets a domain-shifted scene; a retrain on a few labels there recovers F1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from shapely.geometry import Point

from pearl_pipelines.classes import load_schema
from pearl_pipelines.ml.data import LabelledRaster, band_stats
from pearl_pipelines.ml.embeddings import EmbeddingCache, apply_head
from pearl_pipelines.ml.inference import predict
from pearl_pipelines.ml.metrics import evaluate_against_reference
from pearl_pipelines.ml.models import LandcoverModel, ModelSpec
from pearl_pipelines.ml.replay import build_replay_set
from pearl_pipelines.ml.retrain import retrain
from pearl_pipelines.ml.train import TrainConfig, train_model
from pearl_pipelines.ml.versions import ModelVersion
from pearl_pipelines.synthetic.scene import SHIFTED, generate_scene
from tests.ml.conftest import labels_frame, pixel_xy, write_image

SIZE = 512
LABELLED_COLS = 240  # labels come from the left part; F1 is measured right of column 272 (no shared windows)
EVAL_FROM = 272
SEED = 0


@pytest.mark.slow
def test_retrain_on_shifted_scene_improves_macro_f1(tmp_path: Path) -> None:
    schema = load_schema("chesapeake4")
    to_schema = schema.remap_from(load_schema("chesapeake9"))
    train = generate_scene(SIZE, SIZE, seed=11)
    raster = LabelledRaster("train", train.image, to_schema[train.labels])
    mean, std = band_stats([raster])
    torch.manual_seed(SEED)  # the initial weights, not only the training run, must not depend on earlier tests
    model = LandcoverModel(ModelSpec(arch="fcn", schema=schema, embed_dim=16, mean=mean, std=std))
    config = TrainConfig(epochs=3, steps_per_epoch=50, batch_size=8, patch_size=64, lr=1e-2, seed=SEED, threads=1)
    train_model(model, [raster], config, show_progress=False)
    replay = build_replay_set(model, [raster.image], [raster.labels], per_class=300, device="cpu")

    shifted = generate_scene(SIZE, SIZE, seed=12, shift=SHIFTED)
    reference = to_schema[shifted.labels]
    image_path = write_image(tmp_path / "shifted.tif", shifted.image)
    before = predict(model, image_path, tmp_path / "before", device="cpu", embeddings_dir=tmp_path / "emb")

    rng = np.random.default_rng(0)
    rows, cols, names = [], [], []
    for index, name in enumerate(schema.names):  # 40 points per class, as a mapper would click
        r, c = np.nonzero(reference[:, :LABELLED_COLS] == index)
        pick = rng.choice(len(r), min(40, len(r)), replace=False)
        rows += r[pick].tolist()
        cols += c[pick].tolist()
        names += [name] * len(pick)
    xs, ys = pixel_xy(np.array(rows), np.array(cols))
    labels = labels_frame([Point(x, y) for x, y in zip(xs, ys, strict=True)], names)

    cache = EmbeddingCache.open(tmp_path / "emb")
    version = retrain(ModelVersion.from_model(model), cache, labels, replay=replay)
    after = apply_head(cache, version.weight, version.bias, version.schema, tmp_path / "after")

    def held_out_f1(path: Path) -> float:
        with rasterio.open(path) as src:
            predicted = src.read(1)
        return evaluate_against_reference(predicted[:, EVAL_FROM:], reference[:, EVAL_FROM:], schema.names).macro_f1

    f1_before, f1_after = held_out_f1(before.classes_path), held_out_f1(after.classes_path)
    assert f1_after >= f1_before + 0.1, (f1_before, f1_after)
    assert version.metrics is not None and version.metrics.n_samples == len(labels)
