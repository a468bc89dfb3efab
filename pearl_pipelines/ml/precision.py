"""Which floating-point precision to compute in: chosen by measuring this machine, never by assuming it.

bfloat16 autocast halves convolution time on CPUs that execute it natively (AVX512-BF16, AMX) and on recent
GPUs, but PyTorch *emulates* it elsewhere: on a CPU with AVX2 only, a conv step runs ~10-65x slower than
fp32. So `select_precision("auto")` times one small conv forward + backward step in both precisions and
picks bfloat16 only where it is clearly faster. The answer is cached per machine fingerprint (CPU model and
flags, the ATen/oneDNN instruction-set caps, torch version, thread count) under `PEARL_HOME/cache`, so the
probe (~0.5 s) runs once per machine. `PEARL_PRECISION=fp32|bf16` forces either choice.

To imitate a CPU without AVX-512 on one that has it, cap PyTorch's kernels before Python starts:
`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`; `machine_fingerprint()["cpu_capability"]` then says AVX2
and the probe measures the emulated bfloat16.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

Precision = Literal["fp32", "bf16"]
PrecisionSetting = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
CACHE_FILE = "precision.json"
# bfloat16 must beat fp32 by this factor to be chosen: a tie is not worth the rounding.
MIN_SPEEDUP = 1.15

# (fp32 seconds, bf16 seconds) of one probe step on `device`.
Probe = Callable[[torch.device], tuple[float, float]]


@dataclass(frozen=True)
class PrecisionChoice:
    precision: Precision
    source: str  # setting | probe | cache | unsupported
    device: str
    fp32_ms: float | None = None
    bf16_ms: float | None = None

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    def describe(self) -> str:
        timing = ""
        if self.fp32_ms is not None and self.bf16_ms is not None:
            timing = f": probe step fp32 {self.fp32_ms:.1f} ms, bf16 {self.bf16_ms:.1f} ms"
        return f"precision {self.precision} on {self.device} ({self.source}{timing})"


def _cpu_model_and_flags() -> tuple[str, str]:
    with contextlib.suppress(OSError):
        model = flags = ""
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = value.strip()
        return model, flags
    return platform.processor(), ""


def machine_fingerprint(device: torch.device) -> dict[str, str]:
    """What the precision choice depends on; a change in any of these re-runs the probe."""
    model, flags = _cpu_model_and_flags()
    fingerprint = {
        "device": device.type,
        "torch": torch.__version__,
        "cpu": model,
        "cpu_flags": hashlib.sha256(flags.encode()).hexdigest()[:16],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
        "threads": str(torch.get_num_threads()),
    }
    if device.type == "cuda":
        fingerprint["gpu"] = torch.cuda.get_device_name(device)
    return fingerprint


def bf16_supported(device: torch.device) -> bool:
    """Whether the backend claims native bfloat16 at all (a claim the probe still has to confirm)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


@contextlib.contextmanager
def autocast(device: torch.device, precision: Precision) -> Iterator[None]:
    """bfloat16 autocast when `precision` is bf16, plain fp32 otherwise: the one place code enters it."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        yield


def timed_conv_step(device: torch.device, *, size: int = 64, repeats: int = 5) -> tuple[float, float]:
    """Best-of-`repeats` seconds of a 3x3 conv (64 -> 64, channels-last) forward + backward, fp32 and bf16.

    Small enough that emulated bfloat16 (~50x slower) still costs well under a second; the two precisions
    alternate, so a burst of load from another process slows both alike.
    """
    conv = nn.Conv2d(64, 64, 3, padding=1).to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    x = torch.randn(2, 64, size, size, device=device).contiguous(memory_format=torch.channels_last)

    def step(precision: Precision) -> float:
        started = time.perf_counter()
        with autocast(device, precision):
            out = conv(x)
        out.float().sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    step("fp32"), step("bf16")  # the first calls pay for kernel selection
    times: dict[Precision, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(repeats):
        for precision, taken in times.items():
            taken.append(step(precision))
    return min(times["fp32"]), min(times["bf16"])


def _read_cache(path: Path) -> dict[str, dict[str, object]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def select_precision(
    requested: str = "auto",
    device: torch.device | str = "cpu",
    *,
    cache_dir: Path | None = None,
    probe: Probe = timed_conv_step,
) -> PrecisionChoice:
    """The precision to train or infer in on `device`: `requested` when forced, else measured (and cached)."""
    device = torch.device(device)
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; accepted: {', '.join(PRECISIONS)}")
    if requested != "auto":
        return PrecisionChoice(requested, "setting", device.type)  # type: ignore[arg-type]
    if not bf16_supported(device):
        return PrecisionChoice("fp32", "unsupported", device.type)
    fingerprint = machine_fingerprint(device)
    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    cache_path = cache_dir / CACHE_FILE if cache_dir is not None else None
    entries = _read_cache(cache_path) if cache_path is not None else {}
    if cached := entries.get(key):
        fields = {k: cached[k] for k in ("precision", "device", "fp32_ms", "bf16_ms") if k in cached}
        return PrecisionChoice(**fields, source="cache")  # type: ignore[arg-type]
    fp32_s, bf16_s = probe(device)
    precision: Precision = "bf16" if bf16_s * MIN_SPEEDUP < fp32_s else "fp32"
    choice = PrecisionChoice(precision, "probe", device.type, round(fp32_s * 1e3, 2), round(bf16_s * 1e3, 2))
    if cache_path is not None:
        with contextlib.suppress(OSError):  # a read-only home only costs a probe next time
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            entries[key] = {**asdict(choice), "fingerprint": fingerprint}
            tmp = cache_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(entries, indent=2))
            tmp.replace(cache_path)
    return choice
