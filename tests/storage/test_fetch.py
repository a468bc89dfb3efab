"""What an app process with a disk of its own fetches from the object store (a real S3 server, and a local folder):
a model version's folder (`publish_dir` / `fetch_dir`) and an AOI embedding cache (`download_cache`), each equal to
what was written, moved into place whole; keys outside the store refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pearl_pipelines.layout import EMBEDDINGS_META, Layout, cache_complete
from pearl_pipelines.ml import loop
from pearl_pipelines.ml.chunked_cache import CHUNKS_INDEX, chunk_key, download_cache, upload_cache
from pearl_pipelines.ml.embeddings import EmbeddingCache
from pearl_pipelines.storage import ObjectStore, StorageError, fetch_dir, publish_dir
from tests.s3_local import S3Server
from tests.storage.caches import random_cache

HEIGHT, WIDTH, CHANNELS, CHUNK = 300, 410, 9, 128


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    if request.param == "local":
        return ObjectStore.open(None, tmp_path / "bucket")
    server: S3Server = request.getfixturevalue("s3_server")
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    return ObjectStore.open(server.url(f"fetch/{tmp_path.name}"), tmp_path)


def _version_folder(home: Path) -> Path:
    directory = Layout.at(home).project(3).version_dir(2)
    (directory / "nested").mkdir(parents=True)
    (directory / "head.npz").write_bytes(bytes(range(256)) * 40)
    (directory / "labels.parquet").write_bytes(b"PAR1" + b"\0" * 999)
    (directory / "nested" / "more.json").write_text('{"a": 1}')
    (directory / "version.json").write_text('{"id": "v2"}')
    (directory / "version.json.tmp").write_text("half written")  # written aside: never uploaded
    return directory


def test_publish_then_fetch_a_version_folder(store: ObjectStore, tmp_path: Path) -> None:
    writer, reader = Layout.at(tmp_path / "pod-a"), Layout.at(tmp_path / "pod-b")
    source = _version_folder(writer.root)
    key = writer.key(source)
    assert publish_dir(store, source, writer, last=("version.json",)) == 4
    assert sorted(store.list(key)) == sorted(
        f"{key}/{name}" for name in ("head.npz", "labels.parquet", "nested/more.json", "version.json")
    )

    target = reader.path(key)
    assert fetch_dir(store, key, target, marker="version.json")
    for name in ("head.npz", "labels.parquet", "nested/more.json", "version.json"):
        assert (target / name).read_bytes() == (source / name).read_bytes()
    assert not (target / "version.json.tmp").exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["v2"]  # nothing left aside
    assert fetch_dir(store, key, target, marker="version.json")  # there already: kept

    # Absent, or without its marker (not complete in the store): nothing fetched, nothing made.
    missing = reader.project(3).version_dir(5)
    assert not fetch_dir(store, reader.key(missing), missing, marker="version.json")
    store.delete(f"{key}/version.json")
    elsewhere = tmp_path / "pod-c" / "v2"
    assert not fetch_dir(store, key, elsewhere, marker="version.json")
    assert not elsewhere.exists()


def test_keys_outside_the_store_are_refused(store: ObjectStore, tmp_path: Path) -> None:
    layout = Layout.at(tmp_path / "pod-a")
    for key in ("../outside", "/abs/path", "review/../../x", "a\\b"):
        with pytest.raises(StorageError):
            fetch_dir(store, key, tmp_path / "x")
        with pytest.raises(StorageError):
            download_cache(store, key, tmp_path / "y")
    with pytest.raises(ValueError, match="is not under"):
        publish_dir(store, tmp_path / "not-under-the-home", layout)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def _cache(home: Path) -> EmbeddingCache:
    return random_cache(home, 4, (HEIGHT, WIDTH, CHANNELS), seed=5)


def test_download_cache_round_trip(store: ObjectStore, tmp_path: Path) -> None:
    original = _cache(tmp_path / "pod-a")
    key = Layout.aoi_embeddings("starter-v1", 4)
    upload_cache(original.directory, store, key, chunk=CHUNK)

    target = tmp_path / "pod-b" / key
    assert not cache_complete(target)
    fetched = download_cache(store, key, target)
    assert fetched > HEIGHT * WIDTH * CHANNELS * 2  # every chunk (float16 + valid + npz headers)
    assert cache_complete(target)
    copy = loop.open_cache(target)  # the format ml/embeddings.py writes: opened as any local cache
    assert isinstance(copy.array, np.memmap)
    np.testing.assert_array_equal(copy.array, original.array)
    np.testing.assert_array_equal(copy.valid, original.valid)
    assert copy.array.dtype == np.float16 and copy.valid.dtype == np.uint8
    assert copy.meta == original.meta
    assert (target / EMBEDDINGS_META).read_bytes() == (original.directory / EMBEDDINGS_META).read_bytes()
    assert sorted(p.name for p in target.parent.iterdir()) == ["aoi-4"]  # nothing left aside

    # A stale, incomplete copy there is replaced whole.
    (target / EMBEDDINGS_META).unlink()
    download_cache(store, key, target)
    np.testing.assert_array_equal(loop.open_cache(target).array, original.array)

    # The store without the metadata (written last): not a complete cache, nothing written here.
    store.delete(f"{key}/{EMBEDDINGS_META}")
    assert store.exists(f"{key}/{CHUNKS_INDEX}") and store.exists(chunk_key(key, 0, 0))
    other = tmp_path / "pod-c" / key
    with pytest.raises(FileNotFoundError, match="no complete chunked embedding cache"):
        download_cache(store, key, other)
    assert not other.parent.exists() or not any(other.parent.iterdir())


def test_a_download_in_progress_delays_only_its_own_folder(store: ObjectStore, tmp_path: Path) -> None:
    """An app process fetches a model version while another thread of it is still downloading a big AOI cache: only a
    second download of that same cache waits (review_app/workspace.py `StateStore.fetching`)."""
    import threading

    from pearl_pipelines.labels.store import LabelStore
    from review_app.workspace import StateStore

    if not store.remote:
        pytest.skip("a local store is every process's own disk: nothing is fetched")
    writer = Layout.at(tmp_path / "pod-a")
    source = _version_folder(writer.root)
    publish_dir(store, source, writer, last=("version.json",))
    states = StateStore(tmp_path / "pod-b", LabelStore(f"sqlite:///{tmp_path / 'labels.db'}"))
    states.objects = store
    cache_dir = states.paths(3).embeddings_dir(7)
    version_dir = states.paths(3).version_dir(2)
    with states.fetching(cache_dir):  # the cache's download is running
        fetched = threading.Thread(target=states.fetch_folder, args=(version_dir,), kwargs={"marker": "version.json"})
        fetched.start()
        fetched.join(timeout=30)
        assert not fetched.is_alive()  # the version came without waiting for the cache
        second = threading.Thread(target=states.fetch_folder, args=(cache_dir,))
        second.start()
        second.join(timeout=0.5)
        assert second.is_alive()  # the same cache: waits for the download in progress
    second.join(timeout=30)
    assert (version_dir / "version.json").read_bytes() == (source / "version.json").read_bytes()
