"""Training data for the starter models: labelled rasters read from catalog items, random augmented patches.

The training regions are small (~12 km^2 at 1 m: ~60 MB of uint8 imagery + labels), so every item is read
once into memory and patches are numpy slices of it; no data loader processes are needed on a 2-core box.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pystac
import rasterio
import torch
from tqdm import tqdm

from pearl_pipelines.classes import NODATA_CLASS
from pearl_pipelines.geo.catalog import load_collection_items
from pearl_pipelines.geo.regions import LABEL_SCHEMAS, label_asset_key
from pearl_pipelines.geo.stac import IMAGE_ASSET
from pearl_pipelines.ml.augment import DomainRandomisation


@dataclass(frozen=True)
class LabelledRaster:
    """One item in memory: RGBN uint8 image (4, H, W) and class-index labels (H, W), 255 = nodata."""

    name: str
    image: np.ndarray
    labels: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.labels.shape  # type: ignore[return-value]


def read_item(item: pystac.Item, schema_id: str) -> LabelledRaster:
    """Read an item's image and its reference labels for `schema_id`; masked image pixels become nodata labels."""
    if schema_id not in LABEL_SCHEMAS:
        raise KeyError(f"no reference labels for schema {schema_id!r}; items carry: {', '.join(LABEL_SCHEMAS)}")
    key = label_asset_key(schema_id)
    if key not in item.assets:
        raise KeyError(f"item {item.id} has no {key!r} asset; its assets: {', '.join(item.assets)}")
    with rasterio.open(item.assets[IMAGE_ASSET].href) as src:
        image = src.read()
        valid = src.dataset_mask() > 0
    with rasterio.open(item.assets[key].href) as src:
        labels = src.read(1)
    if labels.shape != image.shape[1:]:
        raise ValueError(f"item {item.id}: labels {labels.shape} and image {image.shape[1:]} differ in size")
    labels = np.where(valid, labels, NODATA_CLASS).astype(np.uint8)
    return LabelledRaster(item.id, image.astype(np.uint8, copy=False), labels)


def load_labelled_rasters(
    catalog_dir: Path, collections: Iterable[str], schema_id: str, *, show_progress: bool = False
) -> list[LabelledRaster]:
    """All items of the given local collections (regions), in a stable order."""
    items = [item for c in collections for item in sorted(load_collection_items(catalog_dir, c), key=lambda i: i.id)]
    return [
        read_item(item, schema_id)
        for item in tqdm(items, desc=f"reading {schema_id} items", unit="item", disable=not show_progress)
    ]


def cut_rasters(rasters: Sequence[LabelledRaster], size: int) -> list[LabelledRaster]:
    """Cut every raster into blocks of at most `size` x `size` (views, no copies), e.g. for a validation split."""
    blocks = []
    for r in rasters:
        height, width = r.shape
        for row in range(0, height, size):
            for col in range(0, width, size):
                window = np.s_[row : row + size, col : col + size]
                blocks.append(
                    LabelledRaster(f"{r.name}[{row}:{col}]", r.image[(slice(None), *window)], r.labels[window])
                )
    return blocks


def split_rasters(
    rasters: Sequence[LabelledRaster], val_fraction: float, seed: int = 0
) -> tuple[list[LabelledRaster], list[LabelledRaster]]:
    """Train/validation split of whole rasters (so validation pixels never sit inside a training patch).

    Cut items into blocks first (`cut_rasters`) for a validation set that samples every region.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = round(len(rasters) * val_fraction)
    if val_fraction > 0 and len(rasters) > 1:
        n_val = max(n_val, 1)
    order = np.random.default_rng(seed).permutation(len(rasters))
    val_idx = set(order[:n_val].tolist())
    return [r for i, r in enumerate(rasters) if i not in val_idx], [r for i, r in enumerate(rasters) if i in val_idx]


def band_stats(rasters: Sequence[LabelledRaster]) -> tuple[list[float], list[float]]:
    """Per-band mean and std of the image scaled to 0..1, over labelled pixels (what ModelSpec stores)."""
    n_bands = rasters[0].image.shape[0]
    total = np.zeros(n_bands)
    total_sq = np.zeros(n_bands)
    count = 0
    for r in rasters:
        valid = r.labels != NODATA_CLASS
        pixels = r.image[:, valid].astype(np.float64) / 255.0
        total += pixels.sum(axis=1)
        total_sq += (pixels**2).sum(axis=1)
        count += pixels.shape[1]
    if count == 0:
        raise ValueError("no labelled pixels to compute band statistics from")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return mean.tolist(), std.tolist()


def class_counts(rasters: Sequence[LabelledRaster], n_classes: int) -> np.ndarray:
    counts = np.zeros(n_classes, dtype=np.int64)
    for r in rasters:
        counts += np.bincount(r.labels.ravel(), minlength=NODATA_CLASS + 1)[:n_classes]
    return counts


class PatchSampler:
    """Random square patches with flips and 90-degree rotations, drawn from a seeded generator.

    A patch is either placed uniformly (items picked in proportion to their area) or, with probability
    `class_balance`, centred on a random pixel of a class drawn uniformly from the classes present: rare
    classes (structures, ~1% of pixels) then appear in most batches instead of a few. Patch sides are
    clamped to the smallest item (tests build tiny regions).
    """

    def __init__(
        self,
        rasters: Sequence[LabelledRaster],
        patch_size: int,
        *,
        seed: int = 0,
        augment: bool = True,
        class_balance: float = 0.0,
        anchors_per_class: int = 100_000,
        domain: DomainRandomisation | None = None,
    ) -> None:
        if not rasters:
            raise ValueError("no labelled rasters to sample patches from")
        self.rasters = list(rasters)
        self.patch_size = min(patch_size, *(min(r.shape) for r in self.rasters))
        self.augment = augment
        self.domain = domain
        self.class_balance = class_balance
        self.rng = np.random.default_rng(seed)
        areas = np.array([r.shape[0] * r.shape[1] for r in self.rasters], dtype=np.float64)
        self.weights = areas / areas.sum()
        self.anchors = self._class_anchors(anchors_per_class) if class_balance > 0 else []

    def _class_anchors(self, per_class: int) -> list[np.ndarray]:
        """Per present class: (n, 3) [raster, row, col] of up to `per_class` random pixels of that class."""
        found: dict[int, list[np.ndarray]] = {}
        for i, r in enumerate(self.rasters):
            rows, cols = np.nonzero(r.labels != NODATA_CLASS)
            classes = r.labels[rows, cols]
            for cls in np.unique(classes):
                keep = classes == cls
                found.setdefault(int(cls), []).append(np.stack([np.full(keep.sum(), i), rows[keep], cols[keep]], 1))
        anchors = []
        for cls in sorted(found):
            pixels = np.concatenate(found[cls])
            if len(pixels) > per_class:
                pixels = pixels[self.rng.choice(len(pixels), per_class, replace=False)]
            anchors.append(pixels)
        return anchors

    def _origin(self) -> tuple[LabelledRaster, int, int]:
        p = self.patch_size
        if self.anchors and self.rng.random() < self.class_balance:
            pixels = self.anchors[int(self.rng.integers(0, len(self.anchors)))]
            i, row, col = pixels[int(self.rng.integers(0, len(pixels)))]
            r = self.rasters[int(i)]
            # Centre on the pixel, jittered so it is not always in the middle; clamp inside the item.
            row = int(np.clip(row - p // 2 + self.rng.integers(-p // 4, p // 4 + 1), 0, r.shape[0] - p))
            col = int(np.clip(col - p // 2 + self.rng.integers(-p // 4, p // 4 + 1), 0, r.shape[1] - p))
            return r, row, col
        r = self.rasters[self.rng.choice(len(self.rasters), p=self.weights)]
        return r, int(self.rng.integers(0, r.shape[0] - p + 1)), int(self.rng.integers(0, r.shape[1] - p + 1))

    def patch(self) -> tuple[np.ndarray, np.ndarray]:
        r, row, col = self._origin()
        p = self.patch_size
        image = r.image[:, row : row + p, col : col + p]
        labels = r.labels[row : row + p, col : col + p]
        if self.augment:
            k = int(self.rng.integers(0, 4))
            image, labels = np.rot90(image, k, axes=(1, 2)), np.rot90(labels, k)
            if self.rng.random() < 0.5:
                image, labels = image[:, :, ::-1], labels[:, ::-1]
        if self.domain is not None:
            image, labels = self.domain(np.ascontiguousarray(image), np.ascontiguousarray(labels), self.rng)
        return image, labels

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(size, bands, p, p) uint8 images and (size, p, p) int64 labels (255 = ignore)."""
        pairs = [self.patch() for _ in range(size)]
        images = torch.from_numpy(np.stack([np.ascontiguousarray(i) for i, _ in pairs]))
        labels = torch.from_numpy(np.stack([np.ascontiguousarray(lb) for _, lb in pairs]).astype(np.int64))
        return images, labels
