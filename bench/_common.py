"""Shared bench setup: data and models under PEARL_HOME/bench, created on first use and reused after.

Models: a registered starter model (PEARL_HOME/models/*.pt) of the wanted architecture when one exists;
otherwise a PEARL-sized FCN (five 3x3 convs, 64 features) trained for a minute on a generated scene, or,
for the U-Net (whose cost, not quality, is measured), the standard architecture untrained.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from affine import Affine

from pearl_pipelines.classes import load_schema
from pearl_pipelines.geo.cog import write_cog
from pearl_pipelines.ml.models import LandcoverModel, ModelSpec, load_model, save_model
from pearl_pipelines.settings import get_settings

CRS = "EPSG:32618"
ORIGIN = (400_000.0, 4_300_000.0)
SCHEMA_ID = "chesapeake4"


def bench_dir() -> Path:
    path = get_settings().home_abs / "bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def use_all_cores() -> int:
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


def log(message: str) -> None:
    print(message, flush=True)


def emit(result: dict[str, float]) -> None:
    """The machine-readable result: always the last line of a bench's output."""
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}), flush=True)


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def schema_lut() -> np.ndarray:
    """chesapeake9 reference labels of generated scenes -> chesapeake4 indices."""
    return load_schema(SCHEMA_ID).remap_from(load_schema("chesapeake9"))


def scene_cog(name: str, size: int, seed: int, shifted: bool = False) -> tuple[Path, np.ndarray]:
    """A generated size x size scene at 1 m as a COG (cached) and its chesapeake4 reference labels."""
    from pearl_pipelines.synthetic.scene import SHIFTED, generate_scene

    path, labels_path = bench_dir() / f"{name}.tif", bench_dir() / f"{name}.labels.npy"
    if not (path.is_file() and labels_path.is_file()):
        log(f"generating {size}x{size} scene {name} ...")
        scene = generate_scene(size, size, seed=seed, shift=SHIFTED if shifted else None)
        write_cog(path, scene.image, crs=CRS, transform=Affine(1, 0, ORIGIN[0], 0, -1, ORIGIN[1]))
        np.save(labels_path, schema_lut()[scene.labels])
    return path, np.load(labels_path)


def _registered_starter(arch: str) -> tuple[LandcoverModel, Path] | None:
    """A starter model of `arch` for the bench's 4-class schema under PEARL_HOME/models, if one was trained."""
    models_dir = get_settings().models_dir
    for path in sorted(models_dir.glob("**/*.pt")) if models_dir.is_dir() else []:
        try:
            model = load_model(path)
        except Exception:  # not a LandcoverModel file: keep looking
            continue
        if model.spec.arch == arch and model.spec.schema.id == SCHEMA_ID:
            log(f"using registered starter model {path}")
            return model, path
    return None


def _train_fcn(path: Path) -> LandcoverModel:
    from pearl_pipelines.ml.data import LabelledRaster, band_stats
    from pearl_pipelines.ml.replay import build_replay_set
    from pearl_pipelines.ml.train import TrainConfig, train_model
    from pearl_pipelines.synthetic.scene import generate_scene

    log("no starter FCN found: training a PEARL-sized FCN on a generated 512x512 scene (about a minute) ...")
    scene = generate_scene(512, 512, seed=21)
    raster = LabelledRaster("bench-train", scene.image, schema_lut()[scene.labels])
    mean, std = band_stats([raster])
    torch.manual_seed(0)
    model = LandcoverModel(ModelSpec(arch="fcn", schema=load_schema(SCHEMA_ID), embed_dim=64, mean=mean, std=std))
    config = TrainConfig(epochs=3, steps_per_epoch=40, batch_size=8, patch_size=64, lr=5e-3, seed=0)
    train_model(model, [raster], config, show_progress=False)
    save_model(model, path)
    build_replay_set(model, [raster.image], [raster.labels], per_class=300).save(path.with_suffix(".replay.npz"))
    return model


def replay_path(model_path: Path | None) -> Path | None:
    """The replay set saved with a model: the bench's `<name>.replay.npz`, or a starter's `replay.npz`."""
    if model_path is None:
        return None
    for path in (model_path.with_suffix(".replay.npz"), model_path.parent / "replay.npz"):
        if path.is_file():
            return path
    return None


def bench_model(arch: str) -> tuple[LandcoverModel, Path | None]:
    """(model, its file): a registered starter, else the bench's own FCN (trained once), else an untrained U-Net."""
    starter = _registered_starter(arch)
    if starter is not None:
        return starter
    if arch == "fcn":
        path = bench_dir() / "fcn-chesapeake4.pt"
        return (load_model(path) if path.is_file() else _train_fcn(path)), path
    from pearl_pipelines.ml.starter import recipe_for

    log(f"no starter {arch} found: using the starter recipe's {arch} architecture untrained (same cost)")
    torch.manual_seed(0)
    kwargs = recipe_for(SCHEMA_ID, arch).arch_kwargs
    return LandcoverModel(ModelSpec(arch=arch, schema=load_schema(SCHEMA_ID), arch_kwargs=kwargs)).eval(), None


def conv_flops_per_pixel(model: LandcoverModel, size: int = 256) -> float:
    """Multiply-adds x 2 of every conv (incl. transposed and the head) per input pixel, counted with hooks."""
    total = 0.0

    def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        macs_per_position = module.in_channels // module.groups * module.out_channels * module.weight[0, 0].numel()
        # A conv does its MACs once per output position; a transposed conv once per input position.
        positions = inputs[0] if isinstance(module, torch.nn.ConvTranspose2d) else output
        total += 2.0 * macs_per_position * positions.shape[2] * positions.shape[3]

    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]
    handles = [m.register_forward_hook(hook) for m in convs]
    with torch.inference_mode():
        model(torch.zeros(1, len(model.spec.bands), size, size, dtype=torch.uint8))
    for handle in handles:
        handle.remove()
    return total / (size * size)


def conv_peak_flops(repeats: int = 5) -> float:
    """Measured FLOP/s of a large 3x3 conv 64->64 (channels-last, big batch): this CPU's practical peak."""
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(memory_format=torch.channels_last).eval()
    x = torch.randn(8, 64, 256, 256).contiguous(memory_format=torch.channels_last)
    flops = 2.0 * 64 * 64 * 9 * x.shape[0] * x.shape[2] * x.shape[3]
    with torch.inference_mode():
        conv(x)
        best = min(timed(lambda: conv(x), repeats))
    return flops / best
