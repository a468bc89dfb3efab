"""An embedding cache (ml/embeddings.py) as chunked objects in an object store (pearl_pipelines/storage.py).

The local cache is one (H, W, C) float16 memmap: fine on a disk, useless in a bucket (a window of it is H strided
runs). Here the cache is cut into CHUNK x CHUNK windows, one object each, so a reader fetches only the chunks a
window overlaps, in parallel, and nothing else:

  <key>/chunks.json            shape, channels, chunk size
  <key>/chunks/r<i>-c<j>.npz    one window: `embeddings` (h, w, C) float16 and `valid` (h, w) uint8, uncompressed
  <key>/embeddings.json         the cache's EmbeddingMeta, written last: the chunked cache is complete

`<key>` is the cache's layout key (Layout.aoi_embeddings). Measured on a real 1 km^2 cache (1000 x 1000 x 228, 456 MB)
and SeaweedFS on loopback, 2 cores: 128 px chunks (7.5 MB objects) uploaded at 60 MB/s (7.6 s) and read a 256 x 256
window in 62-121 ms, the whole cache in 1.0 s; 256 px chunks: 42 MB/s, 70-255 ms, 2.6 s; 64 px: 28 MB/s upload.
The local memmap: 1.0 s to write, 4-8 ms for a 256 x 256 window from the page cache. Uncompressed: zlib keeps 92% of
a chunk's bytes and takes 1.5 s per 30 MB.

`download_cache` turns the chunks back into a local memmap cache (an app process with its own disk, PEARL_STORAGE_URL
set, needs a cache another process embedded: review_app.workspace.ProjectWorkspace.ensure_local_cache). Measured on a
real review-app cache (1013 x 1017 x 228, 471 MB), same setup: 2.0-2.6 s (180-230 MB/s), byte-identical arrays.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pearl_pipelines.layout import EMBEDDINGS_META
from pearl_pipelines.ml import npy
from pearl_pipelines.storage import ObjectStore, check_key

CHUNK = 128  # pixels a side of one chunk object (see above)
CHUNKS_INDEX = "chunks.json"
WORKERS = 8  # concurrent requests of one read or upload (I/O bound: the GIL is released while waiting)


def chunk_key(key: str, i: int, j: int) -> str:
    return f"{key}/chunks/r{int(i)}-c{int(j)}.npz"


def _encode(embeddings: np.ndarray, valid: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, embeddings=np.ascontiguousarray(embeddings), valid=np.ascontiguousarray(valid))
    return buffer.getvalue()


def _decode(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    arrays = npy.load_all(io.BytesIO(data))
    return arrays["embeddings"], arrays["valid"]


def upload_cache(directory: Path, store: ObjectStore, key: str, *, chunk: int = CHUNK, workers: int = WORKERS) -> int:
    """Copy the complete local cache in `directory` to `key` of the store as chunks; the metadata goes last.
    Returns the bytes uploaded."""
    from pearl_pipelines.ml.embeddings import ARRAY_FILE, VALID_FILE

    directory = Path(directory)
    meta_text = (directory / EMBEDDINGS_META).read_text()  # FileNotFoundError: not a complete cache
    array = npy.load(directory / ARRAY_FILE, mmap_mode="r")
    valid = npy.load(directory / VALID_FILE, mmap_mode="r")
    height, width, channels = array.shape
    index = {"height": height, "width": width, "channels": channels, "chunk": chunk, "dtype": str(array.dtype)}
    store.put_bytes(json.dumps(index).encode(), f"{key}/{CHUNKS_INDEX}")

    def put(ij: tuple[int, int]) -> int:
        i, j = ij
        rows, cols = slice(i * chunk, (i + 1) * chunk), slice(j * chunk, (j + 1) * chunk)
        data = _encode(array[rows, cols], valid[rows, cols])
        store.put_bytes(data, chunk_key(key, i, j))
        return len(data)

    grid = [(i, j) for i in range(-(-height // chunk)) for j in range(-(-width // chunk))]
    with ThreadPoolExecutor(workers) as pool:
        sent = sum(pool.map(put, grid))
    store.put_bytes(meta_text.encode(), f"{key}/{EMBEDDINGS_META}")
    return sent


def download_cache(store: ObjectStore, key: str, directory: Path, *, workers: int = WORKERS) -> int:
    """The chunked cache at `key` of the store as a local cache in `directory`, in ml/embeddings.py's format (the
    .npy memmaps, then the metadata, byte for byte as uploaded): `cache_complete` and `loop.open_cache` read it as
    any other. Written aside (named as EmbeddingCache.create names its copies, so a crashed download is swept) and
    moved into place whole. FileNotFoundError when the store has no complete cache there. Returns the bytes fetched.
    """
    from pearl_pipelines.ml.embeddings import ARRAY_FILE, VALID_FILE

    key = check_key(key)
    try:
        meta = store.get_bytes(f"{key}/{EMBEDDINGS_META}")  # written last by upload_cache: the cache is complete
    except FileNotFoundError:
        raise FileNotFoundError(f"no complete chunked embedding cache at {key} (missing {EMBEDDINGS_META})") from None
    index = json.loads(store.get_bytes(f"{key}/{CHUNKS_INDEX}"))
    height, width, channels, chunk = index["height"], index["width"], index["channels"], index["chunk"]
    target = Path(directory)
    part = target.with_name(f".{target.name}.part-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    part.mkdir(parents=True)
    try:
        dtype = np.dtype(index.get("dtype", "float16"))
        array = np.lib.format.open_memmap(part / ARRAY_FILE, "w+", dtype, (height, width, channels))
        valid = np.lib.format.open_memmap(part / VALID_FILE, "w+", np.uint8, (height, width))

        def get(ij: tuple[int, int]) -> int:
            i, j = ij
            data = store.get_bytes(chunk_key(key, i, j))
            block, block_valid = _decode(data)
            top, left = i * chunk, j * chunk
            array[top : top + block.shape[0], left : left + block.shape[1]] = block
            valid[top : top + block.shape[0], left : left + block.shape[1]] = block_valid
            return len(data)

        grid = [(i, j) for i in range(-(-height // chunk)) for j in range(-(-width // chunk))]
        with ThreadPoolExecutor(workers) as pool:
            got = sum(pool.map(get, grid))
        array.flush()
        valid.flush()
        (part / EMBEDDINGS_META).write_bytes(meta)
        _move_into_place(part, target)
    finally:
        shutil.rmtree(part, ignore_errors=True)  # gone already once moved
    return got


def _move_into_place(part: Path, target: Path) -> None:
    """Replace `target` (an incomplete or stale cache, or nothing) with the complete folder `part`."""
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    if target.exists():
        target.rename(old)
    part.rename(target)
    shutil.rmtree(old, ignore_errors=True)


@dataclass
class ChunkedCache:
    """A complete chunked cache in a store: `read_window` fetches the chunks a window overlaps and nothing else."""

    store: ObjectStore
    key: str
    height: int
    width: int
    channels: int
    chunk: int
    meta: dict[str, Any]  # the EmbeddingMeta fields (ml/embeddings.py) as JSON
    workers: int = WORKERS

    @classmethod
    def open(cls, store: ObjectStore, key: str) -> ChunkedCache:
        try:
            meta = json.loads(store.get_bytes(f"{key}/{EMBEDDINGS_META}"))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no complete chunked embedding cache at {key} (missing {EMBEDDINGS_META})"
            ) from None
        index = json.loads(store.get_bytes(f"{key}/{CHUNKS_INDEX}"))
        return cls(store, key, index["height"], index["width"], index["channels"], index["chunk"], meta)

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def chunks_of(self, rows: tuple[int, int], cols: tuple[int, int]) -> Iterator[tuple[int, int]]:
        """(i, j) of the chunks that rows [r0, r1) x cols [c0, c1) overlap."""
        (r0, r1), (c0, c1) = rows, cols
        if not (0 <= r0 < r1 <= self.height and 0 <= c0 < c1 <= self.width):
            raise ValueError(f"window rows {rows} cols {cols} is not inside the {self.height}x{self.width} cache")
        for i in range(r0 // self.chunk, (r1 - 1) // self.chunk + 1):
            for j in range(c0 // self.chunk, (c1 - 1) // self.chunk + 1):
                yield i, j

    def read_window(self, rows: tuple[int, int], cols: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings (h, w, C) float16, valid (h, w) uint8) of rows [r0, r1) x cols [c0, c1), fetched chunk by
        chunk (in parallel): exactly the chunks the window overlaps."""
        (r0, r1), (c0, c1) = rows, cols
        wanted = list(self.chunks_of(rows, cols))
        out = np.empty((r1 - r0, c1 - c0, self.channels), np.float16)
        valid = np.empty((r1 - r0, c1 - c0), np.uint8)

        def fetch(ij: tuple[int, int]) -> None:
            i, j = ij
            block, block_valid = _decode(self.store.get_bytes(chunk_key(self.key, i, j)))
            top, left = i * self.chunk, j * self.chunk
            a0, a1 = max(r0, top), min(r1, top + block.shape[0])
            b0, b1 = max(c0, left), min(c1, left + block.shape[1])
            out[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] = block[a0 - top : a1 - top, b0 - left : b1 - left]
            valid[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] = block_valid[a0 - top : a1 - top, b0 - left : b1 - left]

        if len(wanted) == 1:
            fetch(wanted[0])
        else:
            with ThreadPoolExecutor(min(self.workers, len(wanted))) as pool:
                list(pool.map(fetch, wanted))
        return out, valid
