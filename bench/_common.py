"""Shared bench setup: the machine line, the registered starter models, data under PEARL_HOME/bench.

Models: the starters `make demo` registers (`pearl-starter-chesapeake9`: U-Net + wide embedding with a
zero-shot head; `pearl-starter-chesapeake4`: FCN), registered from the shipped weights on first use
(`pearl starter --schema all --shipped`, about two minutes) and found under PEARL_HOME/models after. A
bench-trained PEARL-sized FCN (five 3x3 convs, 64 features) is only used when asked for (`--proxy-fcn`).
Every bench prints `machine()` (CPU, instruction-set flags and caps, threads, device, precision) and puts it
into its JSON line, with the model it ran.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as `python bench/NAME.py`

import numpy as np
import torch
from affine import Affine

from pearl_pipelines.classes import load_schema
from pearl_pipelines.geo.cog import write_cog
from pearl_pipelines.ml.models import LandcoverModel, ModelSpec, load_model, save_model
from pearl_pipelines.settings import Settings, get_settings

CRS = "EPSG:32618"
ORIGIN = (400_000.0, 4_300_000.0)
SCHEMA_ID = "chesapeake4"
STARTER_SCHEMAS = ("chesapeake9", "chesapeake4")
PROXY = "proxy-fcn"
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")


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


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def emit(result: dict[str, Any]) -> None:
    """The machine-readable result: always the last line of a bench's output."""
    print(json.dumps(_rounded(result)), flush=True)


# -- the machine -------------------------------------------------------------------------------------------------
def machine(device: torch.device | str | None = None, precision: str | None = None) -> dict[str, Any]:
    """Where and how a bench ran: CPU model and its bf16-relevant flags, torch's kernel capability and the env
    caps on it, threads, device, the engine's runtime for the embedding there, and the precision computed in
    (`precision`, default: what `select_precision` picks here, as training does; `precision_auto` is always
    that pick)."""
    from pearl_pipelines.ml.models import pick_device
    from pearl_pipelines.ml.precision import _cpu_model_and_flags, select_precision

    device = torch.device(device) if device is not None else pick_device()
    cpu, flags = _cpu_model_and_flags()
    present = set(flags.split())
    choice = select_precision(os.environ.get("PEARL_PRECISION", "auto"), device, cache_dir=get_settings().cache_dir)
    info: dict[str, Any] = {
        "cpu": cpu or platform.processor(),
        **{flag: flag in present for flag in CPU_FLAGS},
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY"),
        "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "device": str(device),
        "precision": precision or choice.precision,
        "precision_auto": f"{choice.precision} ({choice.source})",
        "runtime_setting": cpu_runtime() if device.type == "cpu" else "torch",
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def describe_machine(info: dict[str, Any]) -> str:
    flags = " ".join(f"{f}{'+' if info[f] else '-'}" for f in CPU_FLAGS)
    caps = ", ".join(f"{k}={info[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if info.get(k)) or "none"
    gpu = f" ({info['gpu']})" if info.get("gpu") else ""
    return (
        f"machine: {info['cpu']} [{flags}]; torch {info['torch']} kernels {info['cpu_capability']} (caps: {caps}); "
        f"{info['threads']} threads of {info['cores']} cores; device {info['device']}{gpu}, "
        f"runtime {info['runtime_setting']}; precision {info['precision']} (auto here: {info['precision_auto']})"
    )


def log_machine(device: torch.device | str | None = None, precision: str | None = None) -> dict[str, Any]:
    """`machine()`, printed as one line; benches put the dict into their JSON line as "machine"."""
    info = machine(device, precision)
    log(describe_machine(info))
    return info


# -- models ------------------------------------------------------------------------------------------------------
def model_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--proxy-fcn",
        action="store_true",
        help="run a PEARL-sized FCN proxy (five 3x3 convs, 64 features) instead of the registered starter",
    )
    return parser


def starter_ref(schema_id: str) -> str:
    return f"models:/pearl-starter-{schema_id}@starter"


def _starter_folder(schema_id: str, settings: Settings) -> Path | None:
    from pearl_pipelines.ml.base_model import local_model_dirs
    from pearl_pipelines.ml.models import MODEL_FILE

    for folder in local_model_dirs(starter_ref(schema_id), settings):
        if (folder / MODEL_FILE).is_file():
            return folder
    return None


def _versions_file(settings: Settings) -> Path:
    return settings.home_abs / "bench" / "starter-versions.json"


def record_versions(output: str, settings: Settings) -> dict[str, str]:
    """{model name: version} from the output of `pearl starter`, kept under PEARL_HOME/bench for `starter_label`."""
    versions = {m.group(1): m.group(2) for m in re.finditer(r"^(pearl-starter-\S+) v(\d+) \(", output, re.M)}
    path = _versions_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(versions))
    return versions


def ensure_starters(settings: Settings | None = None) -> dict[str, Path]:
    """{schema: local folder (model.pt + replay.npz)} of the registered starters under `settings` (default:
    PEARL_HOME), registering them from the shipped weights first when any is missing (as `make demo` does)."""
    settings = settings or get_settings()
    found = {s: _starter_folder(s, settings) for s in STARTER_SCHEMAS}
    if all(found.values()):
        return found  # type: ignore[return-value]
    missing = ", ".join(s for s, f in found.items() if f is None)
    pearl = Path(sys.executable).with_name("pearl")
    command = [str(pearl)] if pearl.is_file() else [sys.executable, "-m", "pearl_pipelines.cli"]
    command += ["starter", "--schema", "all", "--shipped"]
    log(
        f"registering the starter models ({missing} missing under {settings.models_dir}; a few minutes): "
        + " ".join(command)
    )
    started = time.perf_counter()
    env = {**os.environ, "PEARL_HOME": str(settings.home_abs), "PEARL_MLFLOW_PORT": str(settings.mlflow_port)}
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(command)}` failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    versions = record_versions(done.stdout, settings)
    log(f"  registered {', '.join(f'{n} v{v}' for n, v in versions.items())} in {time.perf_counter() - started:.0f} s")
    found = {s: _starter_folder(s, settings) for s in STARTER_SCHEMAS}
    if not all(found.values()):
        raise RuntimeError(f"`pearl starter` ran but left no starter model under {settings.models_dir}")
    return found  # type: ignore[return-value]


def starter_label(schema_id: str, settings: Settings | None = None) -> str:
    """ "pearl-starter-<schema> v<N>": the version from this bench's registration record, else from MLflow if
    it answers, else the alias."""
    settings = settings or get_settings()
    name = f"pearl-starter-{schema_id}"
    for home in (settings, get_settings()):
        try:
            version = json.loads(_versions_file(home).read_text()).get(name)
        except (OSError, ValueError):
            version = None
        if version:
            return f"{name} v{version}"
    try:
        import httpx

        answer = httpx.get(
            f"{settings.resolved_mlflow_uri}/api/2.0/mlflow/registered-models/alias",
            params={"name": name, "alias": "starter"},
            timeout=2,
        )
        return f"{name} v{answer.json()['model_version']['version']}"
    except Exception:  # MLflow down or elsewhere: the alias is all we know
        return f"{name}@starter"


@dataclass
class BenchModel:
    model: LandcoverModel
    path: Path
    name: str  # "pearl-starter-chesapeake9 v1" or "proxy-fcn"


def starter_model(schema_id: str = "chesapeake9") -> BenchModel:
    """The registered starter of `schema_id` (registered first if missing)."""
    folder = ensure_starters()[schema_id]
    from pearl_pipelines.ml.models import MODEL_FILE

    model = load_model(folder / MODEL_FILE)
    name = starter_label(schema_id)
    spec = model.spec
    features = "+".join(spec.features) or "no extra features"
    log(f"model: {name} ({spec.arch}, {features}, {len(spec.schema)} classes, embed {model.embed_dim}) from {folder}")
    return BenchModel(model, folder / MODEL_FILE, name)


def bench_model(schema_id: str = SCHEMA_ID, proxy: bool = False) -> BenchModel:
    """The registered starter of `schema_id`, or with `proxy` the bench's own 4-class FCN (trained once)."""
    if not proxy:
        return starter_model(schema_id)
    path = bench_dir() / "fcn-chesapeake4.pt"
    model = load_model(path) if path.is_file() else _train_fcn(path)
    log(f"model: {PROXY} (bench-trained PEARL-sized FCN, chesapeake4, asked for with --proxy-fcn) from {path}")
    return BenchModel(model, path, PROXY)


def _train_fcn(path: Path) -> LandcoverModel:
    from pearl_pipelines.ml.data import LabelledRaster, band_stats
    from pearl_pipelines.ml.replay import build_replay_set
    from pearl_pipelines.ml.train import TrainConfig, train_model
    from pearl_pipelines.synthetic.scene import generate_scene

    log(f"{PROXY}: training a PEARL-sized FCN on a generated 512x512 scene (about a minute, once) ...")
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


# -- data --------------------------------------------------------------------------------------------------------
def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def schema_lut(schema_id: str = SCHEMA_ID) -> np.ndarray:
    """chesapeake9 reference labels of generated scenes -> `schema_id` indices."""
    return load_schema(schema_id).remap_from(load_schema("chesapeake9"))


def scene_cog(
    name: str, size: int, seed: int, shifted: bool = False, schema_id: str = SCHEMA_ID
) -> tuple[Path, np.ndarray]:
    """A generated size x size scene at 1 m as a COG (cached) and its reference labels in `schema_id`."""
    from pearl_pipelines.synthetic.scene import SHIFTED, generate_scene

    path = bench_dir() / f"{name}.tif"
    labels_path = bench_dir() / (f"{name}.labels.npy" if schema_id == SCHEMA_ID else f"{name}.{schema_id}.npy")
    if not (path.is_file() and labels_path.is_file()):
        log(f"generating {size}x{size} scene {name} ...")
        scene = generate_scene(size, size, seed=seed, shift=SHIFTED if shifted else None)
        if not path.is_file():
            write_cog(path, scene.image, crs=CRS, transform=Affine(1, 0, ORIGIN[0], 0, -1, ORIGIN[1]))
        np.save(labels_path, schema_lut(schema_id)[scene.labels])
    return path, np.load(labels_path)


# -- forward passes and FLOPs -------------------------------------------------------------------------------------
def app_forward(net: LandcoverModel) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """The forward pass of a prediction with an embedding cache (the app's new AOI): every feature group, then the
    head's logits from them (as `ml.inference` runs it; written here from the model's public API)."""

    def forward(x: torch.Tensor) -> list[torch.Tensor]:
        groups = net.embed_groups(x)
        return [*groups.values(), net.group_logits(groups)]

    return forward


def cpu_runtime() -> str:
    """The CPU runtime setting of `ml.inference` for the embedding (`ml.runtime.chosen_runtime`: auto, torch or
    onnxruntime; `PEARL_CPU_RUNTIME`), where the engine has one; "torch" otherwise. What ran is the
    `runtime` of a `PredictionResult`."""
    try:
        from pearl_pipelines.ml.runtime import chosen_runtime
    except ImportError:
        return "torch"
    return str(chosen_runtime())


def hidden_networks(model: LandcoverModel) -> list[torch.nn.Module]:
    """Networks a feature group runs but keeps out of the module tree (ImageNetLite0's `_net`)."""
    return [extra._net for extra in model.extras if isinstance(getattr(extra, "_net", None), torch.nn.Module)]


def conv_flops(
    model: LandcoverModel, run: Callable[[torch.Tensor], object], x: torch.Tensor, groups: list[str]
) -> dict[str, float]:
    """FLOPs (multiply-adds x 2) of every conv that `run(x)` executes, by part: `backbone`, each feature group
    (its hidden network hooked explicitly), and `head` (the linear head's share of each of `groups`, the groups
    the call computes; `group_logits` applies it functionally, so it is counted from shapes). Pooling,
    interpolation and normalisation are not counted."""
    counts: dict[str, float] = {}

    def hook_for(part: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            macs = module.in_channels // module.groups * module.out_channels * module.weight[0, 0].numel()
            # A conv does its MACs once per output position; a transposed conv once per input position.
            positions = inputs[0] if isinstance(module, torch.nn.ConvTranspose2d) else output
            n, _, h, w = positions.shape
            counts[part] = counts.get(part, 0.0) + 2.0 * macs * n * h * w

        return hook

    parts: list[tuple[str, torch.nn.Module]] = [("backbone", model.backbone)]
    for name, extra in zip(model.spec.features, model.extras, strict=True):
        parts.append((name, extra))
        parts += [(name, net) for net in hidden_networks(model) if net is getattr(extra, "_net", None)]
    if not isinstance(model.head, torch.nn.Conv2d):
        parts.append(("head", model.head))
    kinds = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    handles = [
        m.register_forward_hook(hook_for(part)) for part, root in parts for m in root.modules() if isinstance(m, kinds)
    ]
    try:
        with torch.inference_mode():
            run(x)
    finally:
        for handle in handles:
            handle.remove()
    if isinstance(model.head, torch.nn.Conv2d):
        n, _, h, w = x.shape
        k = model.head.out_channels
        channels = sum(hi - lo for g, (lo, hi) in model.channel_groups.items() if g in groups)
        counts["head"] = 2.0 * channels * k * n * h * w
    return counts


def conv_flops_per_pixel(model: LandcoverModel, size: int = 256) -> float:
    """FLOPs per input pixel of the model's plain forward (the fused path: unused groups skipped)."""
    net = model.eval()
    used = [g for g in model.channel_groups if g not in net._unused_groups()]
    x = torch.zeros(1, len(model.spec.bands), size, size, dtype=torch.uint8)
    return sum(conv_flops(net, net, x, used).values()) / (size * size)


def conv_peak_flops(repeats: int = 5, device: torch.device | str = "cpu") -> float:
    """Measured FLOP/s of a large 3x3 conv 64->64 (channels-last, big batch): this CPU's practical peak."""
    device = torch.device(device)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(device, memory_format=torch.channels_last).eval()
    x = torch.randn(8, 64, 256, 256, device=device).contiguous(memory_format=torch.channels_last)
    flops = 2.0 * 64 * 64 * 9 * x.shape[0] * x.shape[2] * x.shape[3]
    with torch.inference_mode():
        conv(x)
        best = min(timed(lambda: conv(x), repeats))
    return flops / best
