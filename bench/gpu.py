"""GPU throughput of the registered 9-class starter's forward pass, as the app runs it (all embedding groups).

Without a CUDA device it says so and ends with {"gpu": null, "reason": "no CUDA device", ...} (exit 0).
Otherwise: `pearl-starter-chesapeake9` (registered from the shipped weights when missing) runs the app's
forward pass (`embed_groups` + head: U-Net, spectral texture, ImageNet EfficientNet-Lite0, 1x1 head; the
output the embedding cache stores) over 512 x 512 windows of a generated scene, channels-last, in a batch
sized from the free GPU memory, in fp32 (TF32 as PyTorch's defaults allow it for convs) and under bf16 and
fp16 autocast. Per precision: km^2/s of window area (windows do not overlap here), achieved TFLOP/s (conv
FLOPs counted with hooks, including the Lite0 network that lives outside the module tree), and its fraction
of a large matmul's TFLOP/s measured in the same run and precision. Then one end-to-end `predict()` of a
1 km^2 scene with the embedding cache, for the figure a user sees.
Last line: JSON with "gpu" (the card), per-precision results, "model" and "machine".
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from _common import app_forward, bench_model, conv_flops, emit, log, log_machine, model_arguments, scene_cog

WINDOW = 512
MAX_BATCH = 64


@contextlib.contextmanager
def precision_mode(device: torch.device, precision: str) -> Iterator[None]:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        yield


def gpu_time(fn, repeats: int, device: torch.device) -> float:  # type: ignore[no-untyped-def]
    """Median seconds of `fn()` on the GPU (CUDA events; one warm-up call first)."""
    fn()
    torch.cuda.synchronize(device)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def matmul_peak(device: torch.device, precision: str, n: int = 8192, repeats: int = 10) -> float:
    """FLOP/s of an n x n matmul in `precision` (fp32 with TF32 allowed as cuDNN allows it for the convs)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    allow = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
    try:
        seconds = gpu_time(lambda: a @ b, repeats, device)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow
    return 2.0 * n**3 / seconds


def pick_batch(forward, x1: torch.Tensor, device: torch.device) -> int:  # type: ignore[no-untyped-def]
    """Windows per batch: what half the free memory holds, by the peak memory of a batch of one."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    with torch.inference_mode():
        forward(x1)
    torch.cuda.synchronize(device)
    per_window = max(torch.cuda.max_memory_allocated(device) - before, 1)
    free, total = torch.cuda.mem_get_info(device)
    batch = max(1, min(MAX_BATCH, int(free * 0.5 // per_window)))
    log(
        f"memory: {free / 2**30:.1f} of {total / 2**30:.1f} GiB free, {per_window / 2**20:.0f} MiB per window "
        f"-> batch {batch}"
    )
    return batch


def main() -> None:
    parser = model_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        info = log_machine("cpu", precision="fp32")
        log("gpu: no CUDA device here (torch.cuda.is_available() is false); nothing to measure")
        emit({"gpu": None, "reason": "no CUDA device", "torch_cuda": torch.version.cuda, "machine": info})
        return
    from pearl_pipelines.ml.inference import inference_copy, predict

    device = torch.device("cuda")
    info = log_machine(device)
    card = torch.cuda.get_device_name(device)
    bench = bench_model("chesapeake9", proxy=args.proxy_fcn)
    net = inference_copy(bench.model, device)
    forward = app_forward(net)  # every group + the head, as with the app's embedding cache
    image, _ = scene_cog("scene-1km-shifted", 1000, seed=31, shifted=True)

    import rasterio

    with rasterio.open(image) as src:
        pixels = torch.from_numpy(src.read(list(range(1, len(net.spec.bands) + 1)), window=((0, WINDOW), (0, WINDOW))))
    x1 = pixels[None].to(device).contiguous(memory_format=torch.channels_last)
    flops_window = sum(conv_flops(net, forward, x1, list(net.channel_groups)).values())
    batch = pick_batch(forward, x1, device)
    x = x1.expand(batch, -1, -1, -1).contiguous(memory_format=torch.channels_last)
    window_km2 = WINDOW * WINDOW / 1e6

    precisions = ["fp32"]
    if torch.cuda.is_bf16_supported():
        precisions.append("bf16")
    precisions.append("fp16")
    results: dict[str, dict[str, float]] = {}
    for precision in precisions:

        def run(precision: str = precision) -> None:
            with torch.inference_mode(), precision_mode(device, precision):
                forward(x)

        seconds = gpu_time(run, args.repeats, device)
        achieved = flops_window * batch / seconds
        peak = matmul_peak(device, precision)
        results[precision] = {
            "km2_per_s": window_km2 * batch / seconds,
            "tflops": achieved / 1e12,
            "matmul_peak_tflops": peak / 1e12,
            "fraction_of_peak": achieved / peak,
            "batch_s": seconds,
        }
        log(
            f"{precision}: batch {batch} x {WINDOW}^2 in {seconds * 1e3:.1f} ms -> "
            f"{results[precision]['km2_per_s']:.2f} km^2/s, {achieved / 1e12:.2f} TFLOP/s = "
            f"{achieved / peak:.1%} of the {precision} matmul peak ({peak / 1e12:.1f} TFLOP/s)"
        )

    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        predict(bench.model, image, Path(tmp) / "warm", device=device, embeddings_dir=Path(tmp) / "cache-warm")
        started = time.perf_counter()
        predict(bench.model, image, Path(tmp) / "out", device=device, embeddings_dir=Path(tmp) / "cache")
        end_to_end = time.perf_counter() - started
    log(f"end to end: predict() of 1 km^2 with the embedding cache (fp32) in {end_to_end:.2f} s")
    emit(
        {
            "gpu": card,
            "batch": batch,
            "gflop_per_window": flops_window / 1e9,
            **{f"{p}": r for p, r in results.items()},
            "predict_1km2_s": end_to_end,
            "model": bench.name,
            "machine": info,
        }
    )


if __name__ == "__main__":
    main()
