"""numpy reads from many threads at once (pearl_pipelines/ml/npy.py). On CPython 3.11 two threads parsing array
headers together fail now and then with "SystemError: AST constructor recursion depth mismatch"
(python/cpython#106905): a clean-clone CI run lost a chunked cache download to it. Finalizers run by the garbage
collector in another thread make it frequent: this harness got 10 such errors in 40,000 plain `np.load` reads of a
cache chunk with 8 threads, and none through the module's lock."""

from __future__ import annotations

import gc
import io
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from pearl_pipelines.ml import npy
from pearl_pipelines.ml.chunked_cache import _decode, _encode

READS = 20_000


class _Finalized:
    def __del__(self) -> None:  # Python code the collector runs in whichever thread triggers it
        pass


@pytest.fixture
def collector_pressure() -> Iterator[None]:
    """Frequent collections of cyclic garbage with finalizers, from a thread of their own."""
    thresholds = gc.get_threshold()
    gc.set_threshold(5, 1, 1)
    stop = threading.Event()

    def litter() -> None:
        while not stop.is_set():
            junk = _Finalized()
            junk.cycle = junk  # type: ignore[attr-defined]
            time.sleep(0)  # let the readers run

    thread = threading.Thread(target=litter, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join()
    gc.set_threshold(*thresholds)


def _errors(read: Callable[[int], object], reads: int = READS) -> list[BaseException]:
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(read, i) for i in range(reads)]
    return [e for f in futures if (e := f.exception()) is not None]


def test_cache_chunks_decode_from_many_threads(collector_pressure: None) -> None:
    block = np.arange(44 * 128 * 9, dtype=np.float16).reshape(44, 128, 9)
    valid = (np.arange(44 * 128).reshape(44, 128) % 3 == 0).astype(np.uint8)
    data = _encode(block, valid)

    def read(_: int) -> tuple[np.ndarray, np.ndarray]:
        embeddings, mask = _decode(data)
        assert embeddings.shape == block.shape and mask.shape == valid.shape
        return embeddings, mask

    assert _errors(read) == []
    embeddings, mask = _decode(data)
    np.testing.assert_array_equal(embeddings, block)
    np.testing.assert_array_equal(mask, valid)


def test_memory_mapped_arrays_open_from_many_threads(tmp_path: Path, collector_pressure: None) -> None:
    path = tmp_path / "array.npy"
    np.save(path, np.arange(60, dtype=np.float16).reshape(3, 4, 5))
    arrays = [npy.load(path, mmap_mode="r") for _ in range(2)]
    assert _errors(lambda _: npy.load(path, mmap_mode="r").shape, READS // 4) == []
    assert all(a.shape == (3, 4, 5) and float(a[2, 3, 4]) == 59.0 for a in arrays)
    archive = io.BytesIO()
    np.savez(archive, weight=np.eye(2), bias=np.ones(2))
    assert {k: v.tolist() for k, v in npy.load_all(io.BytesIO(archive.getvalue())).items()} == {
        "weight": [[1.0, 0.0], [0.0, 1.0]],
        "bias": [1.0, 1.0],
    }
