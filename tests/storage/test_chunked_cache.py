"""Embedding caches as chunked objects (pearl_pipelines/ml/chunked_cache.py) in a real S3 server: a window read equals
the local memmap's window and fetches exactly the chunks it overlaps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pearl_pipelines.layout import Layout
from pearl_pipelines.ml.chunked_cache import ChunkedCache, chunk_key, upload_cache
from pearl_pipelines.ml.embeddings import EmbeddingCache
from pearl_pipelines.storage import ObjectStore, S3Store
from tests.s3_local import CountingProxy, S3Server
from tests.storage.caches import random_cache

HEIGHT, WIDTH, CHANNELS, CHUNK = 600, 700, 12, 256


@pytest.fixture(scope="module")
def local_cache(tmp_path_factory: pytest.TempPathFactory) -> EmbeddingCache:
    return random_cache(tmp_path_factory.mktemp("home"), 7, (HEIGHT, WIDTH, CHANNELS), seed=3)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_window_read_equals_the_memmap_and_fetches_only_its_chunks(
    where: str, local_cache: EmbeddingCache, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    key = Layout.aoi_embeddings("starter-v1", 7)
    with CountingProxy(s3_server.port) as proxy:
        store = (
            ObjectStore.open(None, tmp_path)
            if where == "local"
            else S3Store("pearl", tmp_path.name, endpoint_url=proxy.endpoint)
        )
        upload_cache(local_cache.directory, store, key, chunk=CHUNK)
        proxy.requests.clear()
        chunked = ChunkedCache.open(store, key)
        assert chunked.shape == (HEIGHT, WIDTH) and chunked.channels == CHANNELS
        assert chunked.meta["backbone_digest"] == "bb-3" and chunked.meta["offset"] == [0.5] * CHANNELS
        proxy.requests.clear()

        rows, cols = (100, 400), (250, 530)  # chunk rows 0-1, chunk cols 0-2: 6 of the 3 x 3 chunks
        array, valid = chunked.read_window(rows, cols)
        np.testing.assert_array_equal(array, local_cache.array[100:400, 250:530])
        np.testing.assert_array_equal(valid, local_cache.valid[100:400, 250:530])
        assert sorted(chunked.chunks_of(rows, cols)) == [(i, j) for i in (0, 1) for j in (0, 1, 2)]
        if where == "s3":
            fetched = sorted(
                path.split("?")[0].rsplit("/", 1)[-1] for method, path, _, _ in proxy.requests if method == "GET"
            )
            assert fetched == sorted(chunk_key(key, i, j).rsplit("/", 1)[-1] for i in (0, 1) for j in (0, 1, 2))

        # The edge chunks are smaller than CHUNK; a one-pixel window fetches one chunk.
        proxy.requests.clear()
        array, valid = chunked.read_window((599, 600), (699, 700))
        np.testing.assert_array_equal(array, local_cache.array[599:600, 699:700])
        if where == "s3":
            assert [p for m, p, _, _ in proxy.requests if m == "GET"] == [
                f"/pearl/{tmp_path.name}/{chunk_key(key, 2, 2)}"
            ]
    whole, whole_valid = chunked.read_window((0, HEIGHT), (0, WIDTH))
    np.testing.assert_array_equal(whole, local_cache.array)
    np.testing.assert_array_equal(whole_valid, local_cache.valid)
    with pytest.raises(ValueError, match="not inside"):
        chunked.read_window((0, HEIGHT + 1), (0, 10))
