"""Inference throughput and efficiency of the registered 9-class starter, in the two ways the engine runs it.

The model is `pearl-starter-chesapeake9` (U-Net + spectral texture + ImageNet EfficientNet-Lite0 features,
zero-shot head), registered from the shipped weights when missing; `--proxy-fcn` runs the bench-trained
PEARL-sized FCN instead. A 1 km^2 scene at 1 m (1000 x 1000 px) is predicted end to end (read, windowed
forward, blending, classes + confidence COGs) in two modes:

- `app`: with an embedding cache (`predict(..., embeddings_dir=...)`, as the review app and the worker run a
  new AOI): every feature group is computed, the embedding is stored beside the logits;
- `fused`: no cache: the head's unused groups are skipped (the zero-shot head never reads the U-Net).

Per mode: km^2/s, and the conv FLOPs that actually ran (U-Net, the hidden EfficientNet-Lite0 blocks, the
1x1 head; counted with hooks on one window, times the windows run) per second, as a fraction of a large
3x3 conv's FLOP/s measured in the same run (the FLOPs are the model's whatever runs them). On CPU both engine
runtimes are timed in the same run (`PEARL_CPU_RUNTIME=torch`, then the default `auto`: ONNX Runtime where
ml/runtime.py finds it usable). Then each group's time (PyTorch) on one 512 x 512 window.
Last line: JSON with `app_*`, `fused_*` (the default runtime), `by_runtime`, `groups_ms`, `peak_gflops`, `model`
and `machine`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch
from _common import (
    app_forward,
    bench_model,
    conv_flops,
    conv_peak_flops,
    cpu_runtime,
    emit,
    log,
    log_machine,
    median,
    model_arguments,
    scene_cog,
    timed,
    use_all_cores,
)
from shapely.geometry import box

from pearl_pipelines.ml.inference import default_tiling, inference_copy, predict
from pearl_pipelines.ml.models import LandcoverModel, pick_device

SIDE = 1000  # px at 1 m: 1 km^2
WINDOW_SIDE = 512  # the per-group split's window


def mode_groups(net: LandcoverModel, mode: str) -> list[str]:
    """The feature groups a mode computes: all of them with the cache, the head's used ones fused."""
    unused = net._unused_groups() if mode == "fused" else set()
    return [g for g in net.channel_groups if g not in unused]


def group_split(net: LandcoverModel, device: torch.device, repeats: int) -> dict[str, float]:
    """Median ms of each part of `embed_groups` + the head on one 512 x 512 window (batch 1, as on CPU)."""
    x = torch.randint(0, 256, (1, len(net.spec.bands), WINDOW_SIDE, WINDOW_SIDE), dtype=torch.uint8, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    scaled = x.float() / 255.0
    parts = {"backbone": lambda: net.backbone(net.normalise(x))}
    for name, extra in zip(net.spec.features, net.extras, strict=True):
        parts[name] = lambda extra=extra: extra(scaled)
    with torch.inference_mode():
        groups = net.embed_groups(x)
        parts["head"] = lambda: net.group_logits(groups)
        split = {}
        for name, fn in parts.items():
            fn()  # warm-up
            split[name] = median(timed(fn, repeats)) * 1e3
    return split


def time_mode(
    model: LandcoverModel, image: Path, tmp: Path, device: torch.device, mode: str, label: str, repeats: int
) -> tuple[float, int, str]:
    """(median seconds of predict() over the scene, windows run, the runtime that ran) in `mode`."""
    done: list[tuple[int, str]] = []

    def once() -> None:
        n = len(done)
        cache = tmp / f"cache-{label}-{mode}-{n}" if mode == "app" else None
        result = predict(model, image, tmp / f"{label}-{mode}-{n}", device=device, embeddings_dir=cache)
        done.append((result.windows, str(getattr(result, "runtime", "torch"))))

    left, bottom = 400_000.0, 4_300_000.0 - 300
    warm = box(left, bottom, left + 300, bottom + 300)  # pays for kernel choice (and an ONNX export, once)
    predict(model, image, tmp / f"warm-{label}-{mode}", aoi=warm, device=device, embeddings_dir=None)
    seconds = median(timed(once, repeats))
    return seconds, done[-1][0], done[-1][1]


def main() -> None:
    parser = model_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--repeats", type=int, default=3, help="timed predictions per mode (median)")
    args = parser.parse_args()
    use_all_cores()
    device = pick_device()
    info = log_machine(device, precision="fp32")  # predict() runs fp32: it has no autocast
    bench = bench_model("chesapeake9", proxy=args.proxy_fcn)
    model = bench.model.eval()
    image, _ = scene_cog("scene-1km-shifted", SIDE, seed=31, shifted=True)
    area_km2 = SIDE * SIDE / 1e6
    tiling = default_tiling(model)
    log(f"image {image} ({area_km2:.0f} km^2 at 1 m); window {tiling.window} px, stride {tiling.stride} px")

    net = inference_copy(model, device)
    x = torch.zeros(1, len(model.spec.bands), tiling.window, tiling.window, dtype=torch.uint8, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    runs = {"app": app_forward(net), "fused": net}
    flops_window: dict[str, dict[str, float]] = {}
    for mode, run in runs.items():
        groups = mode_groups(net, mode)
        flops_window[mode] = conv_flops(net, run, x, groups)
        if not flops_window[mode].get(groups[-1]) and groups[-1] != "backbone":
            raise RuntimeError(f"{mode}: no FLOPs counted for {groups[-1]}: the count misses a group")
        parts = ", ".join(f"{k} {v / tiling.window**2 / 1e3:.1f}" for k, v in flops_window[mode].items())
        log(f"{mode}: groups {'+'.join(groups)}; kFLOP per window px: {parts}")

    # The engine's CPU runtime setting (ml/runtime.py, PEARL_CPU_RUNTIME): PyTorch, then the default (auto: ONNX
    # Runtime where it is usable), so both figures come from the same run. GPUs run PyTorch only.
    settings = ["torch", "auto"] if device.type == "cpu" and cpu_runtime() != "torch" else [cpu_runtime()]
    timings: dict[str, dict[str, tuple[float, int, str]]] = {}
    saved = os.environ.get("PEARL_CPU_RUNTIME")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
            for setting in settings:
                os.environ["PEARL_CPU_RUNTIME"] = setting
                timings[setting] = {
                    mode: time_mode(model, image, Path(tmp), device, mode, setting, args.repeats) for mode in runs
                }
                for mode, (seconds, windows, ran) in timings[setting].items():
                    log(f"{mode} [{ran}]: {seconds:.2f} s per km^2 ({windows} windows)")
    finally:
        if saved is None:
            os.environ.pop("PEARL_CPU_RUNTIME", None)
        else:
            os.environ["PEARL_CPU_RUNTIME"] = saved
    peak = conv_peak_flops()
    log(f"conv peak (PyTorch 3x3, 64->64, channels-last, batch 8 x 256^2): {peak / 1e9:.1f} GFLOP/s")

    by_runtime: dict[str, dict[str, dict[str, float]]] = {}
    for setting, modes in timings.items():
        for mode, (seconds, windows, ran) in modes.items():
            achieved = sum(flops_window[mode].values()) * windows / seconds
            efficiency = achieved / peak
            if efficiency <= 0:
                raise RuntimeError(f"{mode}: 0 % of peak is a bench bug ({achieved} FLOP/s, {seconds} s)")
            by_runtime.setdefault(ran if setting == "torch" else f"{setting}:{ran}", {})[mode] = {
                "km2_per_s": area_km2 / seconds,
                "seconds": seconds,
                "gflops": achieved / 1e9,
                "efficiency": efficiency,
            }
            log(
                f"{mode} [{ran}]: {area_km2 / seconds:.3f} km^2/s; {achieved / 1e9:.1f} GFLOP/s = {efficiency:.1%} "
                "of the conv peak"
            )
    default = timings[settings[-1]]  # what predict() runs by default here
    out: dict[str, object] = {}
    for mode, (seconds, windows, ran) in default.items():
        achieved = sum(flops_window[mode].values()) * windows / seconds
        out[f"{mode}_km2_per_s"] = area_km2 / seconds
        out[f"{mode}_seconds"] = seconds
        out[f"{mode}_gflops"] = achieved / 1e9
        out[f"{mode}_efficiency"] = achieved / peak
        out[f"{mode}_runtime"] = ran
        out[f"{mode}_kflop_per_window_px"] = {k: v / tiling.window**2 / 1e3 for k, v in flops_window[mode].items()}

    split = group_split(net, device, args.repeats)
    total_ms = sum(split.values())
    log(
        f"per-group time (PyTorch) on one {WINDOW_SIDE}x{WINDOW_SIDE} window: "
        + ", ".join(f"{k} {v:.0f} ms ({v / total_ms:.0%})" for k, v in split.items())
    )
    emit(
        {
            **out,
            "by_runtime": by_runtime,
            "groups_ms": split,
            "peak_gflops": peak / 1e9,
            "model": bench.name,
            "machine": info,
        }
    )


if __name__ == "__main__":
    main()
