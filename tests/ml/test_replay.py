from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pearl_pipelines.classes import NODATA_CLASS
from pearl_pipelines.ml.embeddings import backbone_digest
from pearl_pipelines.ml.models import LandcoverModel
from pearl_pipelines.ml.replay import ReplaySet, build_replay_set
from tests.ml.conftest import blob_image


def test_replay_set_is_class_balanced_and_holds_the_backbone_embeddings(fcn: LandcoverModel, tmp_path: Path) -> None:
    images = [blob_image(96, 128, seed=1), blob_image(64, 80, seed=2)]
    labels = [np.full((96, 128), 1, np.uint8), np.full((64, 80), NODATA_CLASS, np.uint8)]
    labels[0][:48] = 0
    rare = [(10, 20), (30, 40), (40, 70)]
    labels[1][tuple(np.array(rare).T)] = 3  # only three pixels of class 3, all in the second image
    replay = build_replay_set(fcn, images, labels, per_class=25, seed=0, device="cpu")
    assert np.bincount(replay.labels).tolist() == [25, 25, 0, 3]
    assert replay.embeddings.dtype == np.float16 and replay.embeddings.shape == (53, fcn.backbone.out_channels)
    assert replay.class_names == fcn.spec.schema.names and replay.backbone_digest == backbone_digest(fcn)
    with torch.inference_mode():
        emb = fcn.embed(torch.from_numpy(images[1])[None])[0].permute(1, 2, 0).numpy()
    expected = np.stack([emb[r, c] for r, c in rare])
    np.testing.assert_allclose(replay.embeddings[replay.labels == 3].astype(np.float32), expected, rtol=2e-3, atol=2e-3)
    again = build_replay_set(fcn, images, labels, per_class=25, seed=0, device="cpu")
    np.testing.assert_array_equal(again.embeddings, replay.embeddings)

    loaded = ReplaySet.load(replay.save(tmp_path / "replay.npz"))
    np.testing.assert_array_equal(loaded.embeddings, replay.embeddings)
    np.testing.assert_array_equal(loaded.labels, replay.labels)
    assert loaded.class_names == replay.class_names and loaded.backbone_digest == replay.backbone_digest


def test_replay_from_a_few_images_keeps_every_class(fcn: LandcoverModel) -> None:
    """`max_images` embeds only a random few images, and still reaches a class only another image has."""
    rng = np.random.default_rng(0)
    images = [blob_image(64, 64, seed=s) for s in range(5)]
    labels = [rng.integers(0, 2, (64, 64)).astype(np.uint8) for _ in range(5)]
    labels[3][:4, :4] = 3  # class 3 exists in one image only
    replay = build_replay_set(fcn, images, labels, per_class=10, seed=0, device="cpu", max_images=2)
    assert set(np.unique(replay.labels).tolist()) == {0, 1, 3}
    assert np.bincount(replay.labels)[3] == 10
