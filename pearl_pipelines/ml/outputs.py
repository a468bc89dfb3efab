"""Prediction outputs: class and confidence COGs written block by block, whatever the area size.

Two single-band COGs rather than one two-band file: a GTiff colour table turns the second band of a
paletted image into alpha, and one nodata value cannot serve both bands (255 = no class, 0 = no
confidence, since a max softmax probability is never below 1/K).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from pearl_pipelines.classes import NODATA_CLASS, ClassSchema
from pearl_pipelines.geo.cog import cog_from_dataset

CLASSES_FILE = "classes.tif"
CONFIDENCE_FILE = "confidence.tif"
CONFIDENCE_NODATA = 0
_cog_pool: tuple[int, ThreadPoolExecutor] | None = None


# Prediction layers are rewritten at every retrain (the live loop waits for them): the fastest DEFLATE level, which
# writes a 1 km^2 class map in about a third of the time of GDAL's default level for ~20% more bytes.
DEFLATE_LEVEL = 1


def cog_pool() -> ThreadPoolExecutor:
    """Two long-lived threads that translate the class and confidence files at once. Long-lived because a
    fresh thread's first GDAL call sets up its own environment (slower than the copy itself); per process,
    because a forked child inherits the executor but not its threads."""
    global _cog_pool
    if _cog_pool is None or _cog_pool[0] != os.getpid():
        _cog_pool = (os.getpid(), ThreadPoolExecutor(2, thread_name_prefix="cog"))
    return _cog_pool[1]


@dataclass(frozen=True)
class PredictionResult:
    """Where a prediction was written and on which pixel grid."""

    classes_path: Path
    confidence_path: Path
    height: int
    width: int
    crs: CRS
    transform: Affine
    windows: int = 0
    seconds: float = 0.0
    embeddings_dir: Path | None = None
    runtime: str = "torch"  # what computed the feature groups (ml/runtime.py)


def classify_logits(logits: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(K, N) float logits -> (classes uint8, confidence uint8 = round(max softmax * 255)); overwrites `logits`.

    Class-major layout: every step is a vectorised pass over N pixels (a (N, K) layout with K of 4..10
    makes torch reduce over a tiny inner axis, several times slower).
    """
    top, classes = logits.max(dim=0)
    # max softmax = 1 / sum(exp(l - max)): one exp pass, no normalised probability array.
    total = logits.sub_(top).exp_().sum(dim=0)
    confidence = total.reciprocal_().mul_(255.0).add_(0.5).to(torch.uint8)
    return classes.to(torch.uint8).numpy(), confidence.numpy()


def classify_block(logits: torch.Tensor, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(K, h, w) logits (overwritten) -> (h, w) classes and confidence, nodata where `valid` is False."""
    k, h, w = logits.shape
    classes, confidence = classify_logits(logits.reshape(k, h * w))
    classes, confidence = classes.reshape(h, w), confidence.reshape(h, w)
    if valid is not None:
        classes[~valid] = NODATA_CLASS
        confidence[~valid] = CONFIDENCE_NODATA
    return classes, confidence


class ClassRasterWriter:
    """Streams blocks into tiled temporary GTiffs in `out_dir`, then turns them into COGs on `close()`."""

    def __init__(
        self,
        out_dir: Path,
        *,
        height: int,
        width: int,
        crs: Any,
        transform: Affine,
        schema: ClassSchema,
        tags: dict[str, str] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.height, self.width, self.crs, self.transform = height, width, CRS.from_user_input(crs), transform
        self._tmp = Path(tempfile.mkdtemp(prefix=".predict-", dir=self.out_dir))
        profile = {
            "driver": "GTiff",
            "height": height,
            "width": width,
            "count": 1,
            "dtype": "uint8",
            "crs": self.crs,
            "transform": transform,
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
        }
        tags = {"schema": schema.id, "classes": ",".join(schema.names), **(tags or {})}
        self._classes = rasterio.open(self._tmp / CLASSES_FILE, "w", nodata=NODATA_CLASS, **profile)
        self._confidence = rasterio.open(self._tmp / CONFIDENCE_FILE, "w", nodata=CONFIDENCE_NODATA, **profile)
        self._classes.update_tags(**tags)
        self._classes.write_colormap(1, schema.colormap())
        self._classes.set_band_description(1, "class")
        self._confidence.set_band_description(1, "confidence")

    def write(self, row: int, col: int, classes: np.ndarray, confidence: np.ndarray) -> None:
        window = Window(col, row, classes.shape[1], classes.shape[0])
        self._classes.write(classes, 1, window=window)
        self._confidence.write(confidence, 1, window=window)

    def write_logits(self, row: int, col: int, logits: torch.Tensor, valid: np.ndarray | None = None) -> None:
        """(K, h, w) logits (overwritten) -> classes + confidence; pixels where `valid` is False are nodata."""
        self.write(row, col, *classify_block(logits, valid))

    def close(self) -> tuple[Path, Path]:
        """Finish: translate both temporaries to COGs in `out_dir` (atomic renames) and clean up."""

        def translate(dataset: Any) -> Path:
            dataset.close()
            with rasterio.Env(GDAL_NUM_THREADS=1), rasterio.open(dataset.name) as src:
                return cog_from_dataset(src, self.out_dir / Path(dataset.name).name, deflate_level=DEFLATE_LEVEL)

        try:
            jobs = [cog_pool().submit(translate, dataset) for dataset in (self._classes, self._confidence)]
            wait(jobs)  # both finished before the temporaries go, even when one failed
            classes, confidence = (job.result() for job in jobs)
        finally:
            self.abort()
        return classes, confidence

    def abort(self) -> None:
        self._classes.close()
        self._confidence.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> ClassRasterWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None:
            self.abort()
