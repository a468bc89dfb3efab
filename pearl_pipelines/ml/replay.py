"""Replay set: a small class-balanced sample of the base model's training embeddings.

Retraining the head on user labels alone would forget every class the user did not label; mixing
in these samples keeps them alive. Labels are class indices of the base model's schema, which stay
valid for every descendant schema (schemas only grow, renames keep indices).

A replay set may also carry the starter's zero-shot head (`prior_weight`, `prior_bias`: ml/zero_shot.py), the
map before any click. A logistic retrain is centred on that head (ml/retrain.py), so a few clicks correct
that map instead of replacing it with what ten points alone can say.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pearl_pipelines.classes import NODATA_CLASS
from pearl_pipelines.ml import npy
from pearl_pipelines.ml.embeddings import backbone_digest
from pearl_pipelines.ml.inference import Region, WindowPlan, band_columns, inference_copy, run_windows
from pearl_pipelines.ml.models import LandcoverModel, pick_device
from pearl_pipelines.ml.tiling import ArraySource, default_tiling

REPLAY_FILE = "replay.npz"  # beside a starter's model.pt, locally and in the registry


@dataclass(frozen=True)
class ReplaySet:
    embeddings: np.ndarray  # (N, C) float16
    labels: np.ndarray  # (N,) class index in the base schema
    class_names: list[str]  # the base schema's names, index = label
    backbone_digest: str = ""
    prior_weight: np.ndarray | None = None  # (K, C) float32: the starter's zero-shot head, if it has one
    prior_bias: np.ndarray | None = None  # (K,)

    def __post_init__(self) -> None:
        if len(self.embeddings) != len(self.labels):
            raise ValueError(f"{len(self.embeddings)} embeddings but {len(self.labels)} labels")
        if self.prior_weight is not None and (
            self.prior_bias is None
            or self.prior_weight.shape != (len(self.class_names), self.embeddings.shape[1])
            or self.prior_bias.shape != (len(self.class_names),)
        ):
            raise ValueError("a replay set's prior head must be (classes, channels) weights and (classes,) biases")

    def with_prior(self, weight: np.ndarray, bias: np.ndarray) -> ReplaySet:
        """The same samples carrying a prior head (the starter's zero-shot head)."""
        return dataclasses.replace(
            self, prior_weight=np.asarray(weight, np.float32), prior_bias=np.asarray(bias, np.float32)
        )

    def __len__(self) -> int:
        return len(self.labels)

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {
            "embeddings": self.embeddings.astype(np.float16),
            "labels": self.labels.astype(np.int16),
            "class_names": np.array(self.class_names),
            "backbone_digest": np.array(self.backbone_digest),
        }
        if self.prior_weight is not None and self.prior_bias is not None:
            arrays.update(prior_weight=self.prior_weight, prior_bias=self.prior_bias)
        with path.open("wb") as f:  # a file object, so numpy does not append .npz to the name
            np.savez_compressed(f, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
        return path

    @classmethod
    def load(cls, path: Path) -> ReplaySet:
        data = npy.load_all(path)
        return cls(
            embeddings=data["embeddings"],
            labels=data["labels"].astype(np.int64),
            class_names=data["class_names"].tolist(),
            backbone_digest=str(data["backbone_digest"]),
            prior_weight=data.get("prior_weight"),
            prior_bias=data.get("prior_bias"),
        )


def _pick_pixels(
    labels: Sequence[np.ndarray], per_class: int, rng: np.random.Generator, max_images: int | None = None
) -> list[np.ndarray]:
    """Flat pixel indices per image: up to `per_class` per class, drawn uniformly over `max_images` random images
    (all by default), and over all images for a class those images do not have."""
    picks: list[list[np.ndarray]] = [[] for _ in labels]
    classes = np.unique(np.concatenate([np.unique(lab) for lab in labels]))
    used = set(range(len(labels)))
    if max_images is not None and max_images < len(labels):
        used = set(rng.choice(len(labels), max_images, replace=False).tolist())
    for cls in classes[classes != NODATA_CLASS]:
        where = [np.flatnonzero(lab == cls) if i in used else np.empty(0, np.int64) for i, lab in enumerate(labels)]
        if not sum(len(w) for w in where):
            where = [np.flatnonzero(lab == cls) for lab in labels]
        counts = np.array([len(w) for w in where])
        chosen = np.sort(rng.choice(counts.sum(), size=min(per_class, counts.sum()), replace=False))
        image_of = np.searchsorted(np.cumsum(counts), chosen, side="right")
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        for i in np.unique(image_of):
            picks[i].append(where[i][chosen[image_of == i] - offsets[i]])
    return [np.sort(np.concatenate(p)) if p else np.empty(0, np.int64) for p in picks]


def build_replay_set(
    model: LandcoverModel,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    per_class: int = 500,
    seed: int = 0,
    batch_size: int = 4,
    device: torch.device | str | None = None,
    max_images: int | None = None,
) -> ReplaySet:
    """Embed training images (4, H, W) uint8 with the model's backbone and keep `per_class` pixels per class.

    `labels` are (H, W) class indices of the model's schema (255 = unlabelled). Embeddings come from the
    same windowed engine as inference, so replay samples match what the cache would hold. `max_images` bounds
    how many images are embedded at all (the wide embedding's ImageNet features cost ~7 s per km^2 on 2 cores).
    """
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} label rasters")
    device = torch.device(device) if device is not None else pick_device()
    net = inference_copy(model, device)
    channels = net.embed_dim
    picks = _pick_pixels(labels, per_class, np.random.default_rng(seed), max_images)
    embeddings, classes = [], []
    for image, label, pick in zip(images, labels, picks, strict=True):
        if not len(pick):
            continue
        height, width = label.shape
        out = np.zeros((height, width), dtype=bool)
        out.flat[pick] = True
        found: list[tuple[np.ndarray, np.ndarray]] = []

        def keep(row: int, col: int, block: torch.Tensor, out: np.ndarray = out, found: list = found) -> None:
            h, w = block.shape[:2]
            r, c = np.nonzero(out[row : row + h, col : col + w])
            if len(r):
                found.append((np.ravel_multi_index((r + row, c + col), out.shape), block[r, c].numpy().copy()))

        tiling = default_tiling(model, fit=(height, width))
        plan = WindowPlan.build(Region(0, 0, height, width), tiling, (0, 0), band_columns(tiling, channels, 64))
        with torch.inference_mode():
            run_windows(ArraySource(image), plan, net.embed, channels, keep, device=device, batch_size=batch_size)
        index = np.concatenate([f[0] for f in found])
        order = np.argsort(index)
        embeddings.append(np.concatenate([f[1] for f in found])[order].astype(np.float16))
        classes.append(label.flat[index[order]].astype(np.int64))
    if not embeddings:
        raise ValueError("the label rasters hold no labelled pixels (all nodata)")
    return ReplaySet(
        embeddings=np.concatenate(embeddings),
        labels=np.concatenate(classes),
        class_names=model.spec.schema.names,
        backbone_digest=backbone_digest(model),
    )
