"""The starters' zero-shot head: fitted so that a starter's first map is right on real imagery, not only on
the synthetic scenes it was trained on.

A head on the synthetic-trained backbone features scores macro F1 0.86-0.99 on the synthetic holdout and
30-37 % accuracy on real aerial imagery (bench/real_imagery.py, Rotterdam): those features learned the
generator's look. The zero-shot head instead sees only the feature groups that come from outside the
synthetic domain: the spectra with their 5x5 texture, and frozen ImageNet EfficientNet-Lite0 features. It is a
standardised, class-balanced L2 logistic regression fitted on pixels of synthetic training patches that went
through domain randomisation (`ml.augment`: band gains, offsets, gamma, haze, season, resolution, blur,
noise, band swaps), so no single sensor's colours can carry it. Half of the patches are centred on a random
class, as in training, so rare classes are seen.

The learned features stay in the embedding: every retrain can still use them (on `shifted` they help).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import BaseModel, Field

from pearl_pipelines.ml.augment import DomainRandomisation
from pearl_pipelines.ml.data import LabelledRaster
from pearl_pipelines.ml.models import LandcoverModel
from pearl_pipelines.ml.strategies import LogisticRegressionHead

# Feature groups a zero-shot head may use: those whose features do not come from the synthetic scenes.
TRANSFERABLE_GROUPS = ("spectral_texture", "imagenet_lite0")


class ZeroShotRecipe(BaseModel):
    """How a starter's zero-shot head is fitted (`patches` = 0: keep the head trained with the backbone)."""

    patches: int = Field(default=600, ge=0)
    patch_size: int = Field(default=128, ge=16)
    pixels_per_patch: int = Field(default=60, ge=1)
    randomisation_p: float = Field(default=0.8, ge=0.0, le=1.0)  # share of patches domain-randomised
    C: float = 0.1  # inverse L2 strength: strong, so no single channel decides alone


@dataclass(frozen=True)
class ZeroShotFit:
    groups: list[str]
    samples: int
    sample_seconds: float  # domain randomisation + features
    fit_seconds: float  # the logistic regression

    @property
    def seconds(self) -> float:
        return self.sample_seconds + self.fit_seconds


def _patch(
    raster: LabelledRaster, size: int, n_classes: int, centred: bool, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    height, width = raster.shape
    size = min(size, height, width)
    top, left = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
    if centred:  # on a random pixel of a random class (a coarse grid is enough to find one)
        rows, cols = np.nonzero(raster.labels[::4, ::4] == rng.integers(n_classes))
        if len(rows):
            i = rng.integers(len(rows))
            top = int(np.clip(rows[i] * 4 - size // 2, 0, height - size))
            left = int(np.clip(cols[i] * 4 - size // 2, 0, width - size))
    return raster.image[:, top : top + size, left : left + size], raster.labels[top : top + size, left : left + size]


def transfer_features(model: LandcoverModel, groups: Sequence[str], image: np.ndarray) -> np.ndarray:
    """(C, H, W) features of `groups` for one (bands, H, W) uint8 image, padded to the model's multiple."""
    height, width = image.shape[1:]
    pad_h, pad_w = -height % model.multiple, -width % model.multiple
    x = torch.from_numpy(image.astype(np.float32) / 255.0)[None]
    if pad_h or pad_w:
        x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
    extras = dict(zip(model.spec.features, model.extras, strict=True))
    with torch.no_grad():
        out = torch.cat([extras[name](x) for name in groups], dim=1)
    return out[0, :, :height, :width].numpy()


def randomised_patches(
    rasters: Sequence[LabelledRaster], recipe: ZeroShotRecipe, n_classes: int, *, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """`recipe.patches` (image, labels) patches of the rasters, domain-randomised; every other one class-centred."""
    rng = np.random.default_rng(seed)
    randomise = DomainRandomisation(p=recipe.randomisation_p)
    patches = []
    for i in range(recipe.patches):
        raster = rasters[int(rng.integers(len(rasters)))]
        patches.append(randomise(*_patch(raster, recipe.patch_size, n_classes, i % 2 == 1, rng), rng))
    return patches


def fit_zero_shot_head(
    model: LandcoverModel, rasters: Sequence[LabelledRaster], recipe: ZeroShotRecipe, *, seed: int = 0
) -> ZeroShotFit | None:
    """Replace `model`'s head by one fitted on the transferable groups (zero weight on the others).

    None (head unchanged) when the recipe asks for no patches or the model carries no transferable group.
    """
    groups = [g for g in model.spec.features if g in TRANSFERABLE_GROUPS]
    if not recipe.patches or not groups:
        return None
    started = time.perf_counter()
    n_classes = len(model.spec.schema)
    rng = np.random.default_rng(seed + 1)
    xs, ys = [], []
    for image, labels in randomised_patches(rasters, recipe, n_classes, seed=seed):
        rows = rng.integers(0, labels.shape[0], recipe.pixels_per_patch)
        cols = rng.integers(0, labels.shape[1], recipe.pixels_per_patch)
        keep = labels[rows, cols] < n_classes
        rows, cols = rows[keep], cols[keep]
        xs.append(transfer_features(model, groups, image)[:, rows, cols].T)
        ys.append(labels[rows, cols].astype(np.int64))
    x, y = np.concatenate(xs), np.concatenate(ys)
    counts = np.bincount(y, minlength=n_classes)
    balanced = (len(y) / (np.count_nonzero(counts) * np.maximum(counts, 1)))[y]
    sampled = time.perf_counter()
    # One standardisation over all channels (no group balancing): what was measured on real imagery.
    head = LogisticRegressionHead(C=recipe.C, max_iter=3000, tol=1e-4)
    weight, bias, _ = head.fit(x, y, n_classes, sample_weight=balanced.astype(np.float32), seed=seed)
    full = np.zeros((n_classes, model.embed_dim), np.float32)
    start = 0
    for name in groups:
        lo, hi = model.channel_groups[name]
        full[:, lo:hi] = weight[:, start : start + hi - lo]
        start += hi - lo
    model.replace_head(model.spec.schema, torch.from_numpy(full), torch.from_numpy(bias))
    return ZeroShotFit(groups, len(y), sampled - started, time.perf_counter() - sampled)
