"""Supervised training of a LandcoverModel (backbone + head) on random patches; CPU-first, deterministic.

One loop for every architecture: AdamW, a one-cycle learning-rate schedule (fast warm-up, cosine decay,
which reaches a good model in few epochs), cross-entropy that ignores nodata (255) and optionally weights
classes by inverse frequency ** `class_weight_power` so that rare classes count for macro F1.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from pydantic import BaseModel, Field
from torch import nn
from tqdm import tqdm

from pearl_pipelines.classes import NODATA_CLASS
from pearl_pipelines.ml.augment import DomainRandomisation
from pearl_pipelines.ml.data import LabelledRaster, PatchSampler, class_counts
from pearl_pipelines.ml.inference import Region, WindowPlan, band_columns, inference_copy, run_windows
from pearl_pipelines.ml.metrics import MetricsReport, evaluate_against_reference
from pearl_pipelines.ml.models import LandcoverModel, pick_device
from pearl_pipelines.ml.precision import PrecisionChoice, PrecisionSetting, autocast, select_precision
from pearl_pipelines.ml.tiling import ArraySource, default_tiling
from pearl_pipelines.settings import get_settings


class TrainConfig(BaseModel):
    """Training hyper-parameters (logged as MLflow params)."""

    epochs: int = Field(default=12, ge=1)
    steps_per_epoch: int = Field(default=40, ge=1)
    batch_size: int = Field(default=8, ge=1)
    patch_size: int = Field(default=128, ge=8)
    lr: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    class_weight_power: float = Field(default=0.5, ge=0, le=1, description="0: unweighted, 1: inverse frequency")
    class_balance: float = Field(default=0.0, ge=0, le=1, description="share of patches centred on a random class")
    precision: PrecisionSetting = Field(
        default="auto", description="auto: bfloat16 autocast where a timed probe finds it natively faster, else fp32"
    )
    domain_randomisation: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="share of patches with random sensor, light, season, resolution (ml/augment.py)",
    )
    seed: int = 0
    threads: int | None = Field(default=None, description="torch CPU threads; default os.cpu_count()")


@dataclass
class EpochStats:
    epoch: int
    loss: float
    accuracy: float  # pixel accuracy on the epoch's training patches
    lr: float
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)


EpochCallback = Callable[[EpochStats, LandcoverModel], dict[str, float] | None]


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)  # legacy global state that some libraries still read


def class_weights(rasters: Sequence[LabelledRaster], n_classes: int, power: float) -> torch.Tensor:
    """Inverse-frequency ** power weights, mean 1 over present classes; absent classes weigh 0."""
    counts = class_counts(rasters, n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = (counts[present] / counts[present].sum()) ** -power
    weights[present] /= weights[present].mean()
    return torch.tensor(weights, dtype=torch.float32)


def training_precision(config: TrainConfig, device: torch.device | str = "cpu") -> PrecisionChoice:
    """The recipe's precision; `auto` defers to `PEARL_PRECISION`, and `auto` there to a cached timed probe."""
    settings = get_settings()
    requested = config.precision if config.precision != "auto" else settings.precision
    torch.set_num_threads(config.threads or os.cpu_count() or 1)  # the probe must time the threads training uses
    return select_precision(requested, device, cache_dir=settings.cache_dir)


def train_model(
    model: LandcoverModel,
    rasters: Sequence[LabelledRaster],
    config: TrainConfig,
    *,
    on_epoch: EpochCallback | None = None,
    show_progress: bool = True,
    precision: PrecisionChoice | None = None,
) -> list[EpochStats]:
    """Train `model` in place on patches of `rasters`; returns per-epoch stats.

    `on_epoch(stats, model)` runs after each epoch (model in eval mode) and may return extra metrics
    (e.g. validation macro F1), which are stored in `stats.metrics`. `precision` is the caller's resolved
    choice (it logs it); by default `training_precision(config)`.
    """
    device = next(model.parameters()).device
    precision = precision or training_precision(config, device)
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    seed_everything(config.seed)
    # U-Net sides must be multiples of 2**depth; crop the patch down rather than fail.
    multiple = model.multiple
    domain = DomainRandomisation(p=config.domain_randomisation) if config.domain_randomisation > 0 else None
    sampler = PatchSampler(
        rasters, config.patch_size, seed=config.seed, class_balance=config.class_balance, domain=domain
    )
    sampler.patch_size -= sampler.patch_size % multiple
    n_classes = len(model.spec.schema)
    weights = class_weights(rasters, n_classes, config.class_weight_power)
    criterion = nn.CrossEntropyLoss(weight=weights, ignore_index=NODATA_CLASS)
    # channels-last convolutions run about twice as fast on CPU (oneDNN) as NCHW here.
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total_steps = config.epochs * config.steps_per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total_steps)
    history: list[EpochStats] = []
    bar = tqdm(
        total=total_steps, desc=f"train {model.spec.arch} {precision.precision}", unit="step", disable=not show_progress
    )
    for epoch in range(1, config.epochs + 1):
        model.train()
        started = time.perf_counter()
        losses = []
        correct = labelled = 0
        for _ in range(config.steps_per_epoch):
            images, labels = sampler.batch(config.batch_size)
            with autocast(device, precision.precision):
                logits = model(images.contiguous(memory_format=torch.channels_last)).float()
            loss = criterion(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            valid = labels != NODATA_CLASS
            correct += int((logits.detach().argmax(dim=1)[valid] == labels[valid]).sum())
            labelled += int(valid.sum())
            bar.update()
            bar.set_postfix(epoch=epoch, loss=f"{np.mean(losses):.3f}")
        model.eval()
        stats = EpochStats(
            epoch=epoch,
            loss=float(np.mean(losses)),
            accuracy=correct / max(labelled, 1),
            lr=optimizer.param_groups[0]["lr"],
            seconds=time.perf_counter() - started,
        )
        if on_epoch is not None:
            with torch.no_grad():
                stats.metrics.update(on_epoch(stats, model) or {})
        history.append(stats)
    bar.close()
    model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    model.eval()
    return history


def predict_array(model: LandcoverModel, image: np.ndarray, *, batch_size: int = 4) -> np.ndarray:
    """(H, W) uint8 classes of an in-memory (bands, H, W) image, through the engine's windowed inference.

    Same windows, padding and blending as `inference.predict`, so validation scores what production predicts.
    """
    device = pick_device()
    net = inference_copy(model, device)
    tiling = default_tiling(model)
    n_classes = len(model.spec.schema)
    height, width = image.shape[1:]
    classes = np.full((height, width), NODATA_CLASS, dtype=np.uint8)

    def sink(row: int, col: int, block: torch.Tensor) -> None:
        h, w = block.shape[:2]
        classes[row : row + h, col : col + w] = block.argmax(dim=-1).numpy()

    plan = WindowPlan.build(Region(0, 0, height, width), tiling, (0, 0), band_columns(tiling, n_classes, 64))
    with torch.inference_mode():
        run_windows(ArraySource(image), plan, net, n_classes, sink, device=device, batch_size=batch_size)
    return classes


def evaluate_rasters(model: LandcoverModel, rasters: Sequence[LabelledRaster]) -> MetricsReport:
    """Dense metrics of the model's predictions against the rasters' reference labels (all pixels pooled)."""
    predicted = np.concatenate([predict_array(model, r.image).ravel() for r in rasters])
    reference = np.concatenate([r.labels.ravel() for r in rasters])
    return evaluate_against_reference(predicted, reference, model.spec.schema.names)
