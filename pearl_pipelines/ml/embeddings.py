"""Per-area embedding cache: backbone outputs on disk, so a retrained head re-predicts without the backbone.

Layout of a cache directory:
  embeddings.npy   float16 (H, W, C) memmap (pixel-major, so one pixel's embedding is contiguous)
  valid.npy        uint8 (H, W): 1 inside the AOI, 0 outside (written as nodata on re-prediction)
  embeddings.json  CRS (WKT), transform, shape, per-channel offset, digest of the backbone that made it

`EmbeddingCache.window` is a view of part of a cache (memmap slices, its own transform), so anything that takes
a cache (re-prediction, sampling) works on a window of it too: a tile's part of an AOI cache, say.

Stored values are embedding - offset (the first block's per-channel mean): float16 keeps ~3 significant
digits of what varies between pixels rather than of a large constant part, which cuts the classes a
re-prediction flips against the float32 map by ~20x. The offset folds into the head's bias for free.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import shutil
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from affine import Affine
from pydantic import BaseModel
from rasterio import windows
from rasterio.crs import CRS
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from pearl_pipelines.classes import ClassSchema
from pearl_pipelines.layout import EMBEDDINGS_META as META_FILE
from pearl_pipelines.ml import npy
from pearl_pipelines.ml.heads import head_kind, head_logits, input_channels
from pearl_pipelines.ml.models import LandcoverModel
from pearl_pipelines.ml.outputs import ClassRasterWriter, PredictionResult, classify_block
from pearl_pipelines.ml.threads import single_threaded

ARRAY_FILE = "embeddings.npy"
VALID_FILE = "valid.npy"


class EmbeddingMeta(BaseModel):
    crs_wkt: str
    transform: list[float]  # affine a, b, c, d, e, f
    height: int
    width: int
    channels: int
    dtype: str = "float16"
    offset: list[float] | None = None  # added back to the stored values; set by the first block written
    backbone_digest: str
    model_id: str | None = None
    # Which channels hold which feature group (ml/features.py), e.g. {"backbone": (0, 64), ...}.
    channel_groups: dict[str, tuple[int, int]] | None = None
    created: dt.datetime


def backbone_digest(model: LandcoverModel) -> str:
    """Stable id of everything that shapes the embeddings: architecture, normalisation and backbone weights."""
    h = hashlib.sha256()
    # The head's shape is not the backbone's, and a model without extra feature groups keeps the digest it had
    # before they existed (its caches and replay sets stay valid).
    spec = model.spec.model_dump(mode="json", exclude={"schema_", "head_hidden"})
    if not spec["features"]:
        del spec["features"]
    h.update(json.dumps(spec, sort_keys=True).encode())
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    for part in model.digest_parts():
        h.update(part)
    return "bb-" + h.hexdigest()[:20]


class EmbeddingCache:
    """An open cache: `array` (H, W, C) float16 and `valid` (H, W) uint8 memmaps plus their metadata."""

    def __init__(
        self, directory: Path, meta: EmbeddingMeta, array: np.ndarray, valid: np.ndarray, *, view: bool = False
    ) -> None:
        self.directory, self.meta, self.array, self.valid = Path(directory), meta, array, valid
        self.view = view  # a window of the cache in `directory`: never flushed over it
        self.target: Path | None = None  # a new cache is written aside and moved here by `flush`

    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        crs: Any,
        transform: Affine,
        height: int,
        width: int,
        channels: int,
        backbone_digest: str,
        model_id: str | None = None,
        channel_groups: dict[str, tuple[int, int]] | None = None,
    ) -> EmbeddingCache:
        target = Path(directory)
        # Written aside and moved into place when complete: two writers of one AOI (the review app and the Dagster
        # loop share caches) never write into each other's files, and a reader never sees half a cache.
        _sweep_abandoned(target)
        directory = target.with_name(f".{target.name}.part-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        directory.mkdir(parents=True)
        meta = EmbeddingMeta(
            crs_wkt=CRS.from_user_input(crs).to_wkt(),
            transform=list(transform)[:6],
            height=height,
            width=width,
            channels=channels,
            backbone_digest=backbone_digest,
            model_id=model_id,
            channel_groups=channel_groups,
            created=dt.datetime.now(dt.UTC),
        )
        array = np.lib.format.open_memmap(directory / ARRAY_FILE, "w+", np.float16, (height, width, channels))
        valid = np.lib.format.open_memmap(directory / VALID_FILE, "w+", np.uint8, (height, width))
        cache = cls(directory, meta, array, valid)
        cache.target = target
        return cache

    @classmethod
    def open(cls, directory: Path) -> EmbeddingCache:
        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"no complete embedding cache in {directory} (missing {META_FILE})")
        meta = EmbeddingMeta.model_validate_json(meta_path.read_text())
        array = npy.load(directory / ARRAY_FILE, mmap_mode="r")
        valid = npy.load(directory / VALID_FILE, mmap_mode="r")
        return cls(directory, meta, array, valid)

    @property
    def crs(self) -> CRS:
        return CRS.from_wkt(self.meta.crs_wkt)

    @property
    def transform(self) -> Affine:
        return Affine(*self.meta.transform)

    @property
    def shape(self) -> tuple[int, int]:
        return self.meta.height, self.meta.width

    @property
    def offset(self) -> np.ndarray:
        return np.asarray(self.meta.offset or np.zeros(self.meta.channels), dtype=np.float32)

    def xy(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """(N, 2) map coordinates (the cache's CRS) of pixel centres: where a spatial head places a pixel."""
        return pixel_centres(self.transform, rows, cols)

    def window(self, window: Window) -> EmbeddingCache:
        """A read-only view of `window` of this cache (memmap slices, no copy) with the window's transform."""
        (r0, r1), (c0, c1) = ((round(a), round(b)) for a, b in window.toranges())
        height, width = self.shape
        if not (0 <= r0 < r1 <= height and 0 <= c0 < c1 <= width):
            raise ValueError(f"window {window} is not inside the {height}x{width} cache")
        meta = self.meta.model_copy(
            update={
                "transform": list(self.transform @ Affine.translation(c0, r0))[:6],
                "height": r1 - r0,
                "width": c1 - c0,
            }
        )
        return EmbeddingCache(self.directory, meta, self.array[r0:r1, c0:c1], self.valid[r0:r1, c0:c1], view=True)

    def lonlat_window(self, area: BaseGeometry | Mapping[str, Any] | Sequence[float]) -> Window | None:
        """The window of cache pixels under a lon/lat geometry's (or `(west, south, east, north)`) bounds, cropped
        to the cache; None when they miss it. Every pixel the bounds touch is in (offsets floored, ends ceiled)."""
        if isinstance(area, BaseGeometry | Mapping):
            area = (area if isinstance(area, BaseGeometry) else shape(area)).bounds
        west, south, east, north = transform_bounds("EPSG:4326", self.crs, *area, densify_pts=21)
        exact = windows.from_bounds(west, south, east, north, transform=self.transform)
        (r0, r1), (c0, c1) = exact.toranges()
        height, width = self.shape
        r0, c0 = max(math.floor(r0), 0), max(math.floor(c0), 0)
        r1, c1 = min(math.ceil(r1), height), min(math.ceil(c1), width)
        return Window(c0, r0, c1 - c0, r1 - r0) if r1 > r0 and c1 > c0 else None

    def write_block(self, row: int, col: int, block: torch.Tensor, valid: np.ndarray | None = None) -> None:
        """Store an (h, w, C) float block at (row, col); `valid` (h, w) bool, default all valid."""
        h, w = block.shape[:2]
        if self.meta.offset is None:
            self.meta.offset = block.reshape(-1, block.shape[-1]).mean(dim=0).tolist()
        offset = torch.from_numpy(self.offset)
        self.array[row : row + h, col : col + w] = (block - offset).to(torch.float16).numpy()
        self.valid[row : row + h, col : col + w] = 1 if valid is None else valid

    def flush(self) -> None:
        """Write the memmaps, then the metadata that marks the cache complete."""
        if self.view:
            raise ValueError(f"a window of the cache in {self.directory} is read-only")
        for array in (self.array, self.valid):
            if isinstance(array, np.memmap):
                array.flush()
        (self.directory / META_FILE).write_text(self.meta.model_dump_json(indent=2))
        if self.target is not None:
            self._move_into_place(self.target)

    def _move_into_place(self, target: Path) -> None:
        """Replace `target` with this complete cache: the old one is renamed away first, so `target` is never
        half-written; readers holding the old arrays open keep reading them."""
        target.parent.mkdir(parents=True, exist_ok=True)
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        for attempt in range(5):  # another writer may be moving its own copy in at the same moment
            try:
                if target.exists():
                    target.rename(old)
                self.directory.rename(target)
                break
            except OSError:
                if attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))
        self.directory, self.target = target, None
        shutil.rmtree(old, ignore_errors=True)


def _sweep_abandoned(target: Path) -> None:
    """Remove what crashed writers of `target` left beside it: copies being written by a process of this host
    that is gone, and replaced caches a move did not get to delete. A copy from another host (pods sharing a
    volume) is left alone: its writer may be alive."""
    host = socket.gethostname()
    for leftover in target.parent.glob(f".{target.name}.*") if target.parent.is_dir() else ():
        kind, _, owner = leftover.name[len(target.name) + 2 :].partition("-")
        writer_host, _, pid = owner.rpartition("-")[0].rpartition("-")
        mine = kind == "part" and writer_host == host and pid.isdigit()
        if kind == "old" or (mine and not _process_alive(int(pid))):
            shutil.rmtree(leftover, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def pixel_centres(transform: Affine, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(N, 2) map coordinates of the centres of pixels (rows, cols): transform * (col + 0.5, row + 0.5)."""
    t = transform
    c, r = np.asarray(cols, np.float64) + 0.5, np.asarray(rows, np.float64) + 0.5
    return np.stack([t.a * c + t.b * r + t.c, t.d * c + t.e * r + t.f], axis=-1).reshape(-1, 2)


def sample_embeddings(cache: EmbeddingCache, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(n, C) float32 embeddings at pixel (rows[i], cols[i]) of the cache."""
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    height, width = cache.shape
    if rows.size and (rows.min() < 0 or cols.min() < 0 or rows.max() >= height or cols.max() >= width):
        raise IndexError(f"sample pixels fall outside the {height}x{width} embedding cache")
    return np.asarray(cache.array[rows, cols], dtype=np.float32) + cache.offset


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():  # read-only memmap: we only ever read through this tensor
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


SUB_CHUNK_PIXELS = 4096  # apply_head: pixels per float32 copy + matmul (4096 x 228 x 4 B = 3.7 MB)


def apply_head(
    cache: EmbeddingCache,
    weight: np.ndarray,
    bias: np.ndarray,
    schema: ClassSchema,
    out_dir: Path,
    *,
    chunk_pixels: int = 65536,
    sub_chunk_pixels: int = SUB_CHUNK_PIXELS,
    workers: int | None = None,
    extra: Mapping[str, np.ndarray] | None = None,
) -> PredictionResult:
    """Re-predict a cached area with a (K, C) head: a chunked matmul, written as classes + confidence COGs.

    `extra`: the arrays of a non-linear head (ml/heads.py), whose `weight` is then its output layer.

    `workers` threads (default: up to 4 cores) each classify whole bands of `chunk_pixels` on one core: parallel
    without per-operation thread barriers, and written to the COGs a band at a time. Within a band, the float16 ->
    float32 copy and the matmul go `sub_chunk_pixels` at a time (whole rows): a copy that fits the core's L2 cache
    is still there for the matmul (a 1 km^2 cache of 228 channels, 2 AVX2 threads: 176 ms with 32768-pixel copies of
    30 MB, 128 ms with these).
    """
    height, width = cache.shape
    channels = cache.meta.channels
    extra = dict(extra or {})
    if input_channels(weight, extra) != channels or weight.shape[0] != len(schema) or bias.shape != (len(schema),):
        raise ValueError(
            f"head of shape {weight.shape} + {bias.shape} does not fit {len(schema)} classes x {channels} channels"
        )
    weight_t = np.ascontiguousarray(np.asarray(weight, dtype=np.float32).T)
    if not extra:
        bias32 = (np.asarray(bias, dtype=np.float32) + cache.offset @ weight_t)[:, None]  # W (x + offset) + b
    rows = max(1, chunk_pixels // width)
    sub_rows = max(1, min(rows, sub_chunk_pixels // width))
    local = threading.local()  # per-worker buffers: fresh multi-MB allocations page-fault, reuse does not

    def classify_part(row: int, n: int, x: torch.Tensor, logits: np.ndarray) -> None:
        """Logits (K, n * width) of `n` rows from `row`, through the float32 buffer `x` (n * width, C)."""
        for i in range(n):  # row by row: a window's rows are contiguous, the window is not
            x[i * width : (i + 1) * width].copy_(_as_tensor(cache.array[row + i]))  # float16 -> float32
        if extra:  # a non-linear head: slower, but on the same chunks and threads
            rr, cc = np.mgrid[row : row + n, 0:width]
            xy = cache.xy(rr.ravel(), cc.ravel()) if head_kind(extra) == "spatial" else None
            logits[:] = head_logits(weight, bias, extra, x.numpy() + cache.offset, xy).T
        else:
            np.add((x.numpy() @ weight_t).T, bias32, out=logits)  # BLAS's (N, C) x (C, K) beats torch; (K, N) after

    def classify_rows(row: int) -> tuple[int, np.ndarray, np.ndarray]:
        if not hasattr(local, "x"):
            local.x = torch.empty(sub_rows * width, channels)
            local.logits = np.empty((len(schema), rows * width), dtype=np.float32)
        h = min(rows, height - row)
        logits = local.logits[:, : h * width]
        for part in range(0, h, sub_rows):
            n = min(sub_rows, h - part)
            classify_part(row + part, n, local.x[: n * width], logits[:, part * width : (part + n) * width])
        valid = cache.valid[row : row + h].astype(bool)
        return row, *classify_block(torch.from_numpy(logits).reshape(-1, h, width), valid)

    with (
        single_threaded(),
        ThreadPoolExecutor(workers or min(4, os.cpu_count() or 1)) as pool,
        ClassRasterWriter(
            out_dir, height=height, width=width, crs=cache.crs, transform=cache.transform, schema=schema
        ) as writer,
    ):
        for row, classes, confidence in pool.map(classify_rows, range(0, height, rows)):
            writer.write(row, 0, classes, confidence)
        classes_path, confidence_path = writer.close()
    return PredictionResult(
        classes_path=classes_path,
        confidence_path=confidence_path,
        height=height,
        width=width,
        crs=cache.crs,
        transform=cache.transform,
        embeddings_dir=cache.directory,
    )
