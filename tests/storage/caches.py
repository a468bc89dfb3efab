"""A random embedding cache on disk, in the format ml/embeddings.py writes: what the store tests upload and fetch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from affine import Affine

from pearl_pipelines.layout import Layout
from pearl_pipelines.ml.embeddings import EmbeddingCache


def random_cache(home: Path, aoi_id: int, shape: tuple[int, int, int], *, seed: int) -> EmbeddingCache:
    """A complete cache of `shape` (height, width, channels) for AOI `aoi_id` under `home`, filled at random."""
    height, width, channels = shape
    directory = home / Layout.aoi_embeddings("starter-v1", aoi_id)
    cache = EmbeddingCache.create(
        directory,
        crs="EPSG:32618",
        transform=Affine(1.0, 0, 500_000, 0, -1.0, 4_400_000),
        height=height,
        width=width,
        channels=channels,
        backbone_digest=f"bb-{seed}",
    )
    rng = np.random.default_rng(seed)
    cache.array[:] = rng.normal(size=shape).astype(np.float16)
    cache.valid[:] = rng.integers(0, 2, size=(height, width), dtype=np.uint8)
    cache.meta.offset = [0.5] * channels
    cache.flush()
    return EmbeddingCache.open(directory)
