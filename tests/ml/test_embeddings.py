from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from shapely.geometry import Point

from pearl_pipelines.classes import NODATA_CLASS
from pearl_pipelines.geo.cog import validate_cog
from pearl_pipelines.ml.embeddings import EmbeddingCache, apply_head, backbone_digest, sample_embeddings
from pearl_pipelines.ml.inference import predict
from pearl_pipelines.ml.models import LandcoverModel
from tests.ml.conftest import ORIGIN, tiny_model


@pytest.fixture(scope="module")
def cached(fcn: LandcoverModel, image_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """A circular AOI predicted twice: fused (no cache) and with embeddings cached."""
    root = tmp_path_factory.mktemp("cached")
    aoi = Point(ORIGIN[0] + 190, ORIGIN[1] - 150).buffer(120)
    fused = predict(fcn, image_path, root / "fused", aoi=aoi, device="cpu")
    with_cache = predict(fcn, image_path, root / "cached", aoi=aoi, device="cpu", embeddings_dir=root / "emb")
    return fused, with_cache, EmbeddingCache.open(root / "emb")


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_cache_describes_its_grid(cached, fcn: LandcoverModel) -> None:
    fused, _, cache = cached
    assert cache.shape == (fused.height, fused.width)
    assert cache.transform == fused.transform and cache.crs == fused.crs
    assert (
        cache.array.dtype == np.float16
        and len(cache.offset) == fcn.backbone.out_channels
        and cache.array.shape[2] == fcn.backbone.out_channels
    )
    assert cache.meta.backbone_digest == backbone_digest(fcn)
    np.testing.assert_array_equal(cache.valid == 1, read(fused.classes_path) != NODATA_CLASS)


def test_head_on_cached_embeddings_equals_the_full_forward(cached, fcn: LandcoverModel, tmp_path: Path) -> None:
    fused, with_cache, cache = cached
    weight = fcn.head.weight.detach().reshape(len(fcn.spec.schema), -1).numpy()
    result = apply_head(cache, weight, fcn.head.bias.detach().numpy(), fcn.spec.schema, tmp_path)
    assert validate_cog(result.classes_path)[0]
    full, from_cache = read(fused.classes_path), read(result.classes_path)
    np.testing.assert_array_equal(read(with_cache.classes_path), full)  # caching does not change the map
    # float16 storage may only flip pixels whose top two classes tie to within rounding
    valid = full != NODATA_CLASS
    np.testing.assert_array_equal(from_cache[~valid], NODATA_CLASS)
    assert (from_cache[valid] == full[valid]).mean() > 0.9995
    confidence = np.abs(read(result.confidence_path).astype(int) - read(fused.confidence_path))
    assert confidence.max() <= 2


def test_sample_embeddings_reads_the_pixels(cached) -> None:
    _, _, cache = cached
    rows, cols = np.array([0, 10, 200]), np.array([5, 100, 30])
    np.testing.assert_array_equal(sample_embeddings(cache, rows, cols), cache.array[rows, cols] + cache.offset)
    with pytest.raises(IndexError, match="outside"):
        sample_embeddings(cache, np.array([cache.shape[0]]), np.array([0]))


def test_cached_embeddings_match_the_backbone(cached, fcn: LandcoverModel, image_array: np.ndarray) -> None:
    fused, _, cache = cached
    r0 = round((fused.transform.f - ORIGIN[1]) / -1)
    c0 = round(fused.transform.c - ORIGIN[0])
    with torch.inference_mode():
        emb = fcn.embed(torch.from_numpy(image_array)[None])[0].permute(1, 2, 0).numpy()
    ref = emb[r0 + 20 : r0 + 60, c0 + 100 : c0 + 140]
    stored = cache.array[20:60, 100:140].astype(np.float32) + cache.offset
    np.testing.assert_allclose(stored, ref, rtol=1e-3, atol=2e-3)  # float16 of (value - channel offset)


def test_incomplete_cache_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no complete embedding cache"):
        EmbeddingCache.open(tmp_path)


def test_head_shape_is_checked(cached, tmp_path: Path) -> None:
    _, _, cache = cached
    model = tiny_model("fcn", "chesapeake9")
    with pytest.raises(ValueError, match="does not fit"):
        apply_head(cache, np.zeros((9, 3), np.float32), np.zeros(9, np.float32), model.spec.schema, tmp_path)


def test_a_cache_appears_complete_or_not_at_all_and_writers_do_not_mix(tmp_path: Path) -> None:
    """The review app and the Dagster loop share AOI caches: two writers of one AOI, and a reader meanwhile."""

    target = tmp_path / "embeddings" / "aoi-1"

    def start(value: float) -> EmbeddingCache:
        cache = _new_cache(target, (4, 5, 3))
        cache.write_block(0, 0, torch.full((4, 5, 3), value))
        return cache

    first, second = start(1.0), start(2.0)
    assert not target.exists()  # nothing half-written where readers look
    first.flush()
    reader = EmbeddingCache.open(target)
    second.flush()  # the second writer replaces the first copy whole; the reader's arrays stay valid

    def value(cache: EmbeddingCache) -> float:
        return float(cache.array[0, 0, 0]) + float(cache.offset[0])  # stored values are embedding - offset

    assert value(reader) == 1.0
    assert value(EmbeddingCache.open(target)) == 2.0
    assert sorted(p.name for p in target.parent.iterdir()) == ["aoi-1"]  # no staging or old copies left


def test_a_new_writer_sweeps_what_crashed_writers_left(tmp_path: Path) -> None:
    """Copies of a writer process that is gone (on this host) and replaced caches a move did not delete are
    removed when the AOI's cache is next written; a live writer's copy and another host's are kept."""
    import socket
    import subprocess
    import sys

    target = tmp_path / "embeddings" / "aoi-1"
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True, text=True
    )
    dead, host = int(finished.stdout), socket.gethostname()
    left = {
        f".aoi-1.part-{host}-{dead}-0badc0de": False,
        ".aoi-1.old-0badc0de": False,
        f".aoi-1.part-{host}-{os.getpid()}-0badc0de": True,  # this test's process: alive
        f".aoi-1.part-other-host-{dead}-0badc0de": True,  # a pod sharing the volume: its writer may be alive
        ".aoi-10.old-0badc0de": True,  # another AOI's
    }
    for name in left:
        (target.parent / name).mkdir(parents=True)
        (target.parent / name / "array.npy").write_bytes(b"partial")
    cache = _new_cache(target, (2, 2, 1))
    assert {name: (target.parent / name).exists() for name in left} == left
    cache.flush()
    assert target.exists()


def _new_cache(target: Path, shape: tuple[int, int, int]) -> EmbeddingCache:
    from affine import Affine

    height, width, channels = shape
    return EmbeddingCache.create(
        target,
        crs="EPSG:32618",
        transform=Affine(1, 0, 0, 0, -1, 0),
        height=height,
        width=width,
        channels=channels,
        backbone_digest="bb-test",
    )
