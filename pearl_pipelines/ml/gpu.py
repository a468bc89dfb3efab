"""Inference on a CUDA device, checked rather than assumed: windows per batch from the free memory that one window
was measured to take, and bfloat16 autocast only where the precision probe finds it faster *and* it keeps the
classes of a test window. Nothing here runs without CUDA (`predict` calls it for CUDA devices only); the pure
arithmetic is `batch_for_memory`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from pearl_pipelines.ml.precision import Precision, autocast, select_precision

MEMORY_SHARE = 0.5  # of the free memory, for the batch: the rest stays for the allocator's slack and other work
MAX_BATCH = 16  # more windows per batch gain nothing once the GPU is busy, and cost host memory for blending
MIN_AGREEMENT = 0.99  # of a test window's classes that bfloat16 must keep to be used


@dataclass(frozen=True)
class GpuPlan:
    batch_size: int
    precision: Precision
    window_bytes: int  # device memory one window's forward pass took (measured)
    free_bytes: int
    agreement: float | None  # share of a test window's classes bfloat16 kept (None: not tried)

    def describe(self) -> str:
        kept = "" if self.agreement is None else f", bf16 kept {self.agreement:.1%} of the classes"
        return (
            f"{self.batch_size} windows per batch ({self.window_bytes / 2**20:.0f} MiB each, "
            f"{self.free_bytes / 2**30:.1f} GiB free), {self.precision}{kept}"
        )


def batch_for_memory(free_bytes: int, window_bytes: int, *, share: float = MEMORY_SHARE, cap: int = MAX_BATCH) -> int:
    """Windows per batch: as many as `share` of the free memory holds at `window_bytes` each, 1..`cap`."""
    return int(max(1, min(cap, share * free_bytes // max(window_bytes, 1))))


def _logits(output: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """The logits of a forward pass's output (the last part of an embed-and-classify output)."""
    return output[-1] if isinstance(output, list) else output


def plan_gpu_inference(
    forward: Callable[[torch.Tensor], torch.Tensor | list[torch.Tensor]],
    bands: int,
    window: int,
    device: torch.device,
    *,
    requested: str = "auto",
    cache_dir: Path | None = None,
) -> GpuPlan:
    """Run one window of `forward` on `device` (fp32, then bf16 where the probe finds it faster) and plan from it."""
    assert device.type == "cuda", "plan_gpu_inference runs on CUDA devices only"
    x = torch.randint(0, 256, (1, bands, window, window), dtype=torch.uint8, device=device)
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        reference = _logits(forward(x)).argmax(1)
    torch.cuda.synchronize(device)
    window_bytes = int(torch.cuda.max_memory_allocated(device) - base)
    free, _ = torch.cuda.mem_get_info(device)
    choice = select_precision(requested, device, cache_dir=cache_dir)
    precision: Precision = "fp32"
    agreement = None
    if choice.bf16:
        with torch.inference_mode(), autocast(device, "bf16"):
            low = _logits(forward(x)).float().argmax(1)
        agreement = float((low == reference).float().mean())
        precision = "bf16" if agreement >= MIN_AGREEMENT else "fp32"
    return GpuPlan(batch_for_memory(free, window_bytes), precision, window_bytes, int(free), agreement)
