"""Inference throughput: km^2/min for the FCN and the U-Net, and the FCN's share of this CPU's conv peak.

Predicts a 1 km^2 scene at 1 m (1000 x 1000 px) end to end: read, windowed batched forward, blending,
classification, classes + confidence COGs. FCN efficiency = FLOPs/pixel x pixels/s / peak, where peak is
a large 3x3 conv 64->64 measured in the same run, so the figure is about overheads, not about the CPU.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from _common import (
    bench_model,
    conv_flops_per_pixel,
    conv_peak_flops,
    emit,
    log,
    median,
    scene_cog,
    timed,
    use_all_cores,
)
from shapely.geometry import box

from pearl_pipelines.ml.inference import predict
from pearl_pipelines.ml.models import pick_device

REPEATS = 3


def main() -> None:
    threads = use_all_cores()
    device = pick_device()
    image, _ = scene_cog("scene-1km-shifted", 1000, seed=31, shifted=True)
    area_km2 = 1000 * 1000 / 1e6
    log(f"device {device}, {threads} threads; image {image} ({area_km2:.0f} km^2 at 1 m)")
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        for arch in ("fcn", "unet"):
            model, _ = bench_model(arch)
            out = Path(tmp) / arch
            left, bottom = 400_000.0, 4_300_000.0 - 300
            predict(model, image, out, aoi=box(left, bottom, left + 300, bottom + 300), device=device)  # warm-up
            seconds = median(timed(lambda model=model, out=out: predict(model, image, out, device=device), REPEATS))
            results[f"{arch}_km2_per_min"] = area_km2 / seconds * 60
            results[f"{arch}_seconds"] = seconds
            results[f"{arch}_flops_per_px"] = conv_flops_per_pixel(model)
            log(f"{arch}: {seconds:.2f} s per km^2 -> {results[f'{arch}_km2_per_min']:.1f} km^2/min")
    peak = conv_peak_flops()
    achieved = results["fcn_flops_per_px"] * 1e6 / results["fcn_seconds"]
    efficiency = achieved / peak
    log(f"conv peak (3x3, 64->64, channels-last): {peak / 1e9:.1f} GFLOP/s")
    flops_px = results["fcn_flops_per_px"]
    log(f"FCN: {flops_px / 1e3:.0f} kFLOP/px, {achieved / 1e9:.1f} GFLOP/s = {efficiency:.0%} of peak")
    emit(
        {
            "fcn_km2_per_min": results["fcn_km2_per_min"],
            "unet_km2_per_min": results["unet_km2_per_min"],
            "fcn_efficiency": efficiency,
            "peak_gflops": peak / 1e9,
            "device": str(device),
        }
    )


if __name__ == "__main__":
    main()
