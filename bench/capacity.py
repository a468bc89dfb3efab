"""Capacity model: tiles, Dagster partitions, CPU and GPU hours, cost, wall time and bytes of a regional map, and
mappers per review-app replica, for a county, a state and CONUS NAIP.

Measured here (unless given): the registered 9-class starter (`pearl-starter-chesapeake9`, zero-shot head: the
regional path skips the U-Net) predicts `--measure-tiles` z15 tiles of the demo region (1 m) one by one as the
worker does for a regional map (`predict` over a mosaic of the tiles, clipped to each tile), after one warm-up
tile. The time inside the model's forward pass is summed during each prediction; the rest is the host side
(reading, blending, classifying, writing COGs), which stays on a GPU pod's CPU. Once, one tile is predicted with an
embedding cache (the review app's path) for the cache's bytes. Bytes per pixel of the class + confidence COGs, of
the embedding cache and of the cut imagery tile COG come from those files (kept under PEARL_HOME/bench/capacity).
The conv FLOPs of the pass (`_common.conv_flops`) times the windows it ran give FLOP per km^2, from which the GPU's
forward rate is *estimated* when none is given: `--gpu-peak-tflops` (H100 SXM dense BF16, 989 TFLOP/s) x
`--gpu-efficiency` (0.10); a pod's rate is that forward plus the measured host side, in series. Everything is
scaled from the measured 1 m to `--gsd-m` (NAIP: 0.6 m, 2.78x the pixels) by pixel count. Review-app capacity
comes from PEARL_HOME/bench/load.json (bench/load.py) or `--label-writes-per-s` / `--tiles-per-s`.

See docs/scaling.md for the formulas and the sources of the assumptions. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as `python bench/NAME.py`

EARTH_CIRCUMFERENCE_KM = 40_075.016686  # WebMercatorQuad: 2 pi x 6,378,137 m at the equator
MAX_TILES_PER_REGION = 20_000  # pearl_pipelines.geo.grid.MAX_TILES_PER_AOI: a region file covers at most this
REGIONS = {"county": 1_500.0, "state": 32_000.0, "conus_naip": 8_080_000.0}
DEMO = "demo"

# Assumptions (docs/scaling.md says where each comes from).
H100_BF16_DENSE_TFLOPS = 989.0  # NVIDIA H100 SXM5 datasheet: 1,979 TFLOP/s BF16 "with sparsity", half of it dense
GPU_EFFICIENCY = 0.10  # fraction of that peak the forward pass reaches (small convs, depthwise EfficientNet blocks)
PRICE_PER_GPU_HOUR = 2.50  # USD, an on-demand H100 hour at GPU clouds (late 2025 list prices ~2-3.5 USD)
POD_START_S = 180.0  # per pod: schedule, pull the image, load the model (assumed; not measured here)
LABELS_PER_MAPPER_MIN = 10.0  # a mapper's clicks per minute while labelling (assumed)
TILES_PER_MAPPER_S = 1.0  # map tiles a mapper's browser asks for per second on average (assumed)
NAIP_BANDS = 4  # R, G, B, NIR, 8 bit


# -- the arithmetic (tests/test_capacity.py) ---------------------------------------------------------------------
def tile_area_km2(lat: float, zoom: int) -> float:
    """Ground area of a WebMercatorQuad tile at `lat` (spherical: side = circumference / 2^zoom x cos(lat))."""
    side = EARTH_CIRCUMFERENCE_KM / 2**zoom * math.cos(math.radians(lat))
    return side * side


def tiles_covering(area_km2: float, tile_km2: float) -> int:
    """Tiles that cover a square of `area_km2` placed anywhere on the grid: (side / tile side + 1)^2 (the expected
    count; the edge row and column are partly outside the region)."""
    return math.ceil((math.sqrt(area_km2 / tile_km2) + 1) ** 2)


def region_partitions(tiles: int, pods: int, max_tiles: int = MAX_TILES_PER_REGION) -> int:
    """Region partitions (region files) a map needs: at most `max_tiles` each, and one per pod to use `pods` pods
    (a region's run predicts its tiles in one worker invocation: one pod)."""
    return max(math.ceil(tiles / max_tiles), pods)


def px_per_km2(gsd_m: float) -> float:
    return 1e6 / (gsd_m * gsd_m)


def gpu_km2_per_s_estimate(flop_per_km2: float, peak_tflops: float, efficiency: float) -> float:
    """km^2/s of one GPU that runs `flop_per_km2` at `efficiency` x `peak_tflops`."""
    return peak_tflops * 1e12 * efficiency / flop_per_km2


@dataclass(frozen=True)
class Inputs:
    """Throughputs at 1 m (as measured and as bench/gpu.py reports them); bytes per pixel; the deployment."""

    tile_km2: float
    cpu_km2_per_s: float  # this machine, all its cores, one process: the whole prediction
    gpu_km2_per_s: float  # one GPU: the forward pass alone (bench/gpu.py's km2_per_s)
    host_s_per_km2: float = 0.0  # the rest of a prediction (read, blend, classify, write COGs): stays on the CPU
    cores: int = 2
    gsd_m: float = 0.6
    pods: int = 8
    price_per_gpu_hour: float = PRICE_PER_GPU_HOUR
    pod_start_s: float = POD_START_S
    prediction_bytes_per_px: float = 0.0  # class COG + confidence COG
    embedding_bytes_per_px: float = 0.0  # the review app's cache (float16)
    imagery_tile_bytes_per_px: float = 0.0  # the cut imagery tile COGs the pipeline keeps
    loops_per_pod: int = 1  # predict loops sharing a pod's GPU (the worker runs one today)


def pod_km2_per_s(inp: Inputs) -> float:
    """One pod's km^2/s at 1 m: each predict loop does its host-side work and the GPU forward in series; the GPU
    caps what `loops_per_pod` loops together get."""
    return min(inp.loops_per_pod / (1 / inp.gpu_km2_per_s + inp.host_s_per_km2), inp.gpu_km2_per_s)


def region_row(area_km2: float, inp: Inputs) -> dict[str, float]:
    """One column of the table: a region of `area_km2` at `inp.gsd_m`."""
    tiles = tiles_covering(area_km2, inp.tile_km2)
    work = area_km2 / (inp.gsd_m * inp.gsd_m)  # 1 m-equivalent km^2: the time scales with the pixels
    cpu_hours = work / inp.cpu_km2_per_s / 3600
    gpu_hours = work / pod_km2_per_s(inp) / 3600
    start_hours = inp.pod_start_s / 3600
    pod_hours = gpu_hours + inp.pods * start_hours
    px = area_km2 * px_per_km2(inp.gsd_m)
    return {
        "area_km2": area_km2,
        "tiles": float(tiles),
        "tile_partitions": float(tiles),
        "region_partitions": float(region_partitions(tiles, inp.pods)),
        "cpu_hours": cpu_hours,
        "cpu_core_hours": cpu_hours * inp.cores,
        "gpu_hours": gpu_hours,
        "pod_hours": pod_hours,
        "cost_usd": pod_hours * inp.price_per_gpu_hour,
        "wall_hours": gpu_hours / inp.pods + start_hours,
        "pods_for_a_day": float(math.ceil(gpu_hours / (24 - start_hours))),
        "prediction_bytes": px * inp.prediction_bytes_per_px,
        "embedding_bytes": px * inp.embedding_bytes_per_px,
        "imagery_tile_bytes": px * inp.imagery_tile_bytes_per_px,
        "naip_source_bytes_uncompressed": px * NAIP_BANDS,
    }


def mappers_per_replica(
    label_writes_per_s: float,
    tiles_per_s: float,
    labels_per_mapper_min: float = LABELS_PER_MAPPER_MIN,
    tiles_per_mapper_s: float = TILES_PER_MAPPER_S,
) -> dict[str, float]:
    """Mappers one app replica serves: by label writes, by map tiles, and the smaller of the two."""
    by_writes = math.floor(label_writes_per_s * 60 / labels_per_mapper_min)
    by_tiles = math.floor(tiles_per_s / tiles_per_mapper_s)
    return {"by_writes": float(by_writes), "by_tiles": float(by_tiles), "mappers": float(min(by_writes, by_tiles))}


# -- printing ----------------------------------------------------------------------------------------------------
def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{n:,.0f} B"
        n /= 1000
    raise AssertionError


def human_hours(h: float) -> str:
    if h < 1 / 60:
        return f"{h * 3600:,.0f} s"
    if h < 1:
        return f"{h * 60:,.1f} min"
    if h < 48:
        return f"{h:,.1f} h"
    return f"{h:,.0f} h ({h / 24:,.1f} d)"


ROWS: list[tuple[str, str, Any]] = [
    ("area km^2", "area_km2", lambda v: f"{v:,.0f}"),
    ("z15 tiles", "tiles", lambda v: f"{v:,.0f}"),
    ("Dagster `tile_keys` partitions", "tile_partitions", lambda v: f"{v:,.0f}"),
    ("Dagster region partitions (<= 20,000 tiles, >= 1 per pod)", "region_partitions", lambda v: f"{v:,.0f}"),
    ("CPU hours (this machine, one process)", "cpu_hours", human_hours),
    ("CPU core-hours", "cpu_core_hours", lambda v: f"{v:,.1f}"),
    ("GPU hours (pod time: GPU forward + host-side work)", "gpu_hours", human_hours),
    ("GPU pod hours (+ pod start per pod)", "pod_hours", lambda v: f"{v:,.2f}"),
    ("cost USD (pod hours x price)", "cost_usd", lambda v: f"{v:,.2f}"),
    ("wall time with the pods", "wall_hours", human_hours),
    ("pods to finish within 24 h", "pods_for_a_day", lambda v: f"{v:,.0f}"),
    ("object store: class + confidence COGs", "prediction_bytes", human_bytes),
    ("object store: embedding cache (if all cached)", "embedding_bytes", human_bytes),
    ("object store: cut imagery tile COGs", "imagery_tile_bytes", human_bytes),
    ("NAIP source imagery, 4 x 8 bit, uncompressed (estimate)", "naip_source_bytes_uncompressed", human_bytes),
]


def table(columns: dict[str, dict[str, float]]) -> str:
    names = list(columns)
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, key, fmt in ROWS:
        lines.append(f"| {label} | " + " | ".join(fmt(columns[n][key]) for n in names) + " |")
    return "\n".join(lines)


# -- measuring ---------------------------------------------------------------------------------------------------
def demo_tiles(count: int, out_dir: Path) -> list[tuple[str, Path]]:
    """The `count` tiles nearest the demo region's centre, cut from the local catalog (no STAC API) into `out_dir`
    (kept: the next run reuses them)."""
    from shapely.geometry import shape

    from pearl_pipelines.geo.catalog import load_collection_items
    from pearl_pipelines.geo.grid import aoi_to_tile_keys, tile_geometry
    from pearl_pipelines.geo.imagery_index import index_frame, tile_sources
    from pearl_pipelines.geo.regions import load_regions
    from pearl_pipelines.geo.tiles import cut_tiles
    from pearl_pipelines.settings import get_settings

    settings = get_settings()
    if not (settings.catalog_dir / DEMO / "collection.json").is_file():
        from pearl_pipelines.synthetic.regions import build_region

        print(f"generating the demo region into {settings.catalog_dir} (first run only) ...", flush=True)
        build_region(load_regions(settings.assets_dir)[DEMO], settings.catalog_dir, show_progress=True)
    items = load_collection_items(settings.catalog_dir, DEMO)
    for item in items:
        for asset in item.assets.values():
            asset.href = asset.get_absolute_href() or asset.href
    frame = index_frame(items)
    region = load_regions(settings.assets_dir)[DEMO]
    centre = shape(region.geometry).centroid
    keys = sorted(aoi_to_tile_keys(region.geometry), key=lambda k: tile_geometry(k).centroid.distance(centre))
    keys = keys[:count]
    out_dir.mkdir(parents=True, exist_ok=True)
    list(cut_tiles(keys, lambda k: tile_sources(frame, k), lambda k: out_dir / f"{k}.tif"))
    return [(k, out_dir / f"{k}.tif") for k in keys if (out_dir / f"{k}.tif").is_file()]


def geodesic_km2(key: str) -> float:
    from pyproj import Geod

    from pearl_pipelines.geo.grid import tile_geometry

    area, _ = Geod(ellps="WGS84").geometry_area_perimeter(tile_geometry(key))
    return abs(area) / 1e6


@contextmanager
def forward_timer() -> Iterator[list[float]]:
    """Seconds spent in the model's forward pass (`embed_groups` + `group_logits`, what `predict` runs per window
    in PyTorch), summed into the list's one item while the context is open: the rest of a prediction is host-side
    work (reading, blending, classifying, writing COGs) measured under the same machine load."""
    from pearl_pipelines.ml.models import LandcoverModel

    spent = [0.0]
    originals = {name: getattr(LandcoverModel, name) for name in ("embed_groups", "group_logits")}

    def timing(fn: Any) -> Any:
        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(self, *args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - started

        return run

    for name, fn in originals.items():
        setattr(LandcoverModel, name, timing(fn))
    try:
        yield spent
    finally:
        for name, fn in originals.items():
            setattr(LandcoverModel, name, fn)


def measure(count: int, time_tiles: bool) -> dict[str, Any]:
    """Per-tile time, windows, FLOPs and bytes of the registered starter on demo tiles (1 m)."""
    import torch
    from _common import (
        bench_dir,
        conv_flops,
        log,
        log_machine,
        median,
        starter_model,
        starter_ref,
        use_all_cores,
    )

    from pearl_pipelines.geo.grid import tile_geometry
    from pearl_pipelines.geo.mosaic import GTI_SUFFIX, one_grid_mosaic
    from pearl_pipelines.ml.inference import inference_copy, predict
    from pearl_pipelines.ml.tiling import default_tiling

    use_all_cores()
    info = log_machine("cpu", precision="fp32")  # predict() runs fp32 on CPUs
    bench = starter_model("chesapeake9")
    model = bench.model.eval()
    work = bench_dir() / "capacity"
    tiles = demo_tiles(count + 1, work / "tiles")  # +1: the warm-up tile
    tiling = default_tiling(model)
    net = inference_copy(model, torch.device("cpu"))

    if len(tiles) < 2:
        raise RuntimeError(f"only {len(tiles)} demo tiles could be cut into {work / 'tiles'}")
    tile_km2 = {key: geodesic_km2(key) for key, _ in tiles}
    uri = starter_ref("chesapeake9")
    out: dict[str, Any] = {"model": bench.name, "machine": info, "tiles": [k for k, _ in tiles[1:]]}
    with tempfile.TemporaryDirectory(prefix="bench-capacity-") as tmp:
        mosaic = one_grid_mosaic([p for _, p in tiles], Path(tmp) / f"tiles{GTI_SUFFIX}")
        seconds: list[float] = []
        host: list[float] = []
        forward: list[float] = []
        windows: list[int] = []
        areas: list[float] = []
        pred_bytes = 0
        warm_key = tiles[0][0]
        log(f"warm-up tile {warm_key} ...")
        predict(model, mosaic, Path(tmp) / "warm", aoi=tile_geometry(warm_key), aoi_crs="EPSG:4326", model_id=uri)
        for key, _ in tiles[1:] if time_tiles else tiles[1:2]:
            pred_dir = work / "predictions" / key
            with forward_timer() as spent:
                started = time.perf_counter()
                result = predict(model, mosaic, pred_dir, aoi=tile_geometry(key), aoi_crs="EPSG:4326", model_id=uri)
                took = time.perf_counter() - started
            if result.runtime != "torch":
                log(f"  the forward ran in {result.runtime}, not timed: the host side counts the whole tile")
            window_s = spent[0] / max(result.windows, 1)
            seconds.append(took)
            forward.append(window_s)
            host.append(took - spent[0])
            windows.append(result.windows)
            areas.append(tile_km2[key])
            pred_bytes += result.classes_path.stat().st_size + result.confidence_path.stat().st_size
            log(
                f"tile {key} ({tile_km2[key]:.3f} km^2): {took:.2f} s, {result.windows} windows "
                f"[{result.runtime}]; forward {spent[0]:.2f} s ({window_s:.3f} s per window), the rest {host[-1]:.2f} s"
            )
        mean_km2 = sum(areas) / len(areas)
        # The embedding cache of one tile, as the review app writes it for a new AOI (every feature group).
        emb_key = tiles[1][0]
        emb_dir = work / "embeddings" / emb_key
        emb_seconds = None
        if not (emb_dir / "embeddings.npy").is_file():
            shutil.rmtree(emb_dir, ignore_errors=True)
            started = time.perf_counter()
            predict(
                model,
                mosaic,
                Path(tmp) / "app",
                aoi=tile_geometry(emb_key),
                aoi_crs="EPSG:4326",
                model_id=uri,
                embeddings_dir=emb_dir,
            )
            emb_seconds = time.perf_counter() - started
            log(f"tile {emb_key} with the embedding cache (the app's path): {emb_seconds:.2f} s")
        emb_bytes = sum(p.stat().st_size for p in emb_dir.iterdir() if p.is_file())
    tile_bytes = sum(p.stat().st_size for _, p in tiles[1:]) / len(tiles[1:])
    tile_mean_km2 = sum(tile_km2[k] for k, _ in tiles[1:]) / len(tiles[1:])
    px_1m = px_per_km2(1.0)
    # FLOPs: the fused regional pass (the zero-shot head skips unused groups), counted on one window.
    used = [g for g in net.channel_groups if g not in net._unused_groups()]
    x = torch.zeros(1, len(model.spec.bands), tiling.window, tiling.window, dtype=torch.uint8)
    x = x.contiguous(memory_format=torch.channels_last)
    flop_window = sum(conv_flops(net, net, x, used).values())
    windows_per_km2 = sum(windows) / sum(areas)
    out.update(
        {
            "tile_km2_measured": tile_mean_km2,
            "seconds_per_tile": median(seconds) if time_tiles else None,
            "cpu_km2_per_s": sum(areas) / sum(seconds) if time_tiles else None,
            "forward_s_per_window": median(forward),
            "forward_gflops_cpu": flop_window / median(forward) / 1e9,
            "host_s_per_km2": sum(host) / sum(areas),  # with --tiles-per-min: from one tile
            "app_tile_seconds_with_cache": emb_seconds,
            "windows_per_km2": windows_per_km2,
            "window_px": tiling.window,
            "groups": used,
            "gflop_per_window": flop_window / 1e9,
            "flop_per_km2": flop_window * windows_per_km2,
            "prediction_bytes_per_px": pred_bytes / len(areas) / (mean_km2 * px_1m),
            "embedding_bytes_per_px": emb_bytes / (tile_km2[emb_key] * px_1m),
            "imagery_tile_bytes_per_px": tile_bytes / (tile_mean_km2 * px_1m),
        }
    )
    log(
        f"fused pass ({'+'.join(used)}): {flop_window / 1e9:.1f} GFLOP per {tiling.window}^2 window, "
        f"{windows_per_km2:.2f} windows per km^2 -> {out['flop_per_km2'] / 1e12:.2f} TFLOP per km^2 at 1 m"
    )
    return out


def load_figures(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure-tiles", type=int, default=3, help="tiles timed after one warm-up tile")
    parser.add_argument(
        "--tiles-per-min", type=float, help="CPU z15 tiles/min at 1 m, e.g. 7.0 (then one tile is predicted, not 3)"
    )
    parser.add_argument(
        "--gpu-km2-per-s", type=float, help="one GPU's forward km^2/s at 1 m (bench/gpu.py's km2_per_s); else estimated"
    )
    parser.add_argument(
        "--host-s-per-km2", type=float, help="host-side seconds per km^2 at 1 m beside the GPU (else measured here)"
    )
    parser.add_argument("--gpu-peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS)
    parser.add_argument("--gpu-efficiency", type=float, default=GPU_EFFICIENCY)
    parser.add_argument("--price-per-gpu-hour", type=float, default=PRICE_PER_GPU_HOUR, help="USD")
    parser.add_argument("--pods", type=int, default=8, help="GPU pods running at once")
    parser.add_argument("--pod-start-s", type=float, default=POD_START_S)
    parser.add_argument("--loops-per-pod", type=int, default=1, help="predict loops sharing one GPU (today: 1)")
    parser.add_argument("--gsd-m", type=float, default=0.6, help="imagery pixel size of the table (NAIP: 0.6 m)")
    parser.add_argument("--lat", type=float, default=39.0, help="latitude for the tile size (CONUS centre ~39 N)")
    parser.add_argument("--label-writes-per-s", type=float, help="one replica's label writes/s (else load.json)")
    parser.add_argument("--tiles-per-s", type=float, help="one replica's map tiles/s under writes (else load.json)")
    parser.add_argument("--labels-per-mapper-min", type=float, default=LABELS_PER_MAPPER_MIN)
    parser.add_argument("--tiles-per-mapper-s", type=float, default=TILES_PER_MAPPER_S)
    args = parser.parse_args()

    from _common import bench_dir, log

    from pearl_pipelines.settings import get_settings

    zoom = get_settings().tile_zoom
    measured = measure(args.measure_tiles, time_tiles=args.tiles_per_min is None)
    tile_km2 = tile_area_km2(args.lat, zoom)
    demo_lat = math.degrees(math.acos(math.sqrt(measured["tile_km2_measured"] / tile_area_km2(0, zoom))))
    log(
        f"z{zoom} tile at {args.lat:g} N: {tile_km2:.4f} km^2 (the demo tiles, measured geodesically: "
        f"{measured['tile_km2_measured']:.4f} km^2, as at {demo_lat:.1f} N)"
    )
    if args.tiles_per_min is not None:
        cpu_km2_per_s = args.tiles_per_min * measured["tile_km2_measured"] / 60
        cpu_source = f"given: {args.tiles_per_min:g} tiles/min"
    else:
        cpu_km2_per_s = measured["cpu_km2_per_s"]
        cpu_source = f"measured: {args.measure_tiles} demo tiles, median {measured['seconds_per_tile']:.2f} s per tile"
    if args.gpu_km2_per_s is not None:
        gpu_km2_per_s = args.gpu_km2_per_s
        gpu_source = f"given: {gpu_km2_per_s:g} km^2/s"
    else:
        gpu_km2_per_s = gpu_km2_per_s_estimate(measured["flop_per_km2"], args.gpu_peak_tflops, args.gpu_efficiency)
        gpu_source = (
            f"ESTIMATE (no GPU measured): {measured['flop_per_km2'] / 1e12:.2f} TFLOP per km^2 at 1 m on "
            f"{args.gpu_peak_tflops:g} TFLOP/s x {args.gpu_efficiency:g}"
        )
    log(f"CPU: {cpu_km2_per_s:.4f} km^2/s at 1 m = {60 * cpu_km2_per_s / tile_km2:.1f} tiles/min ({cpu_source})")
    if args.host_s_per_km2 is not None:
        host_s_per_km2, host_source = args.host_s_per_km2, "given"
    else:
        host_s_per_km2 = measured["host_s_per_km2"]
        host_source = "measured here: tile time - time in the model's forward"
    log(f"GPU: {gpu_km2_per_s:.2f} km^2/s at 1 m per GPU for the forward pass ({gpu_source})")
    log(
        f"host side (read, blend, classify, write COGs; stays on the pod's CPU): {host_s_per_km2:.3f} s per km^2 at "
        f"1 m ({host_source})"
    )
    inputs = Inputs(
        tile_km2=tile_km2,
        cpu_km2_per_s=cpu_km2_per_s,
        gpu_km2_per_s=gpu_km2_per_s,
        host_s_per_km2=host_s_per_km2,
        cores=int(measured["machine"]["cores"] or 1),
        gsd_m=args.gsd_m,
        pods=args.pods,
        price_per_gpu_hour=args.price_per_gpu_hour,
        pod_start_s=args.pod_start_s,
        prediction_bytes_per_px=measured["prediction_bytes_per_px"],
        embedding_bytes_per_px=measured["embedding_bytes_per_px"],
        imagery_tile_bytes_per_px=measured["imagery_tile_bytes_per_px"],
        loops_per_pod=args.loops_per_pod,
    )
    columns = {name: region_row(km2, inputs) for name, km2 in REGIONS.items()}
    log(f"one pod ({args.loops_per_pod} predict loop(s) on its GPU): {pod_km2_per_s(inputs):.2f} km^2/s at 1 m")
    log(
        f"\nRegional maps at {args.gsd_m:g} m ({1 / args.gsd_m**2:.2f}x the pixels of 1 m), {args.pods} GPU pods at "
        f"{args.price_per_gpu_hour:.2f} USD/h, {args.pod_start_s:g} s start per pod; bytes per px: predictions "
        f"{inputs.prediction_bytes_per_px:.3f}, embeddings {inputs.embedding_bytes_per_px:.1f}, imagery tiles "
        f"{inputs.imagery_tile_bytes_per_px:.3f}\n"
    )
    log(table(columns))

    load = load_figures(bench_dir() / "load.json")
    writes = args.label_writes_per_s
    tiles_s = args.tiles_per_s
    load_source = "given"
    if load is not None and (writes is None or tiles_s is None):
        one = load.get("processes", {}).get("1", load)
        writes = writes if writes is not None else one["label_writes_per_s"]
        tiles_s = tiles_s if tiles_s is not None else one["tiles_per_s"]
        load_source = f"bench/load.json ({load.get('measured_at', 'undated')}, 1 process)"
    mappers = None
    if writes is not None and tiles_s is not None:
        mappers = mappers_per_replica(writes, tiles_s, args.labels_per_mapper_min, args.tiles_per_mapper_s)
        log(
            f"\nmappers per replica ({load_source}: {writes:.1f} label writes/s, {tiles_s:.1f} tiles/s under writes; "
            f"{args.labels_per_mapper_min:g} labels/min and {args.tiles_per_mapper_s:g} tiles/s per mapper): "
            f"{mappers['by_writes']:.0f} by writes, {mappers['by_tiles']:.0f} by tiles -> {mappers['mappers']:.0f}"
        )
        if load is not None and "3" in load.get("processes", {}):
            three = load["processes"]["3"]
            shared = mappers_per_replica(
                three["label_writes_per_s"], three["tiles_per_s"], args.labels_per_mapper_min, args.tiles_per_mapper_s
            )
            mappers["three_processes_same_cores"] = shared["mappers"]
            log(
                f"  3 processes on the same cores ({three['label_writes_per_s']:.1f} writes/s, "
                f"{three['tiles_per_s']:.1f} tiles/s in all): {shared['mappers']:.0f} mappers in all"
            )
    else:
        log(
            "\nmappers per replica: no bench/load.json under PEARL_HOME/bench and no --label-writes-per-s/--tiles-per-s"
        )

    from _common import emit

    emit(
        {
            "zoom": zoom,
            "lat": args.lat,
            "tile_km2": tile_km2,
            "gsd_m": args.gsd_m,
            "cpu_km2_per_s_1m": cpu_km2_per_s,
            "cpu_tiles_per_min_1m": 60 * cpu_km2_per_s / measured["tile_km2_measured"],
            "cpu_source": cpu_source,
            "gpu_km2_per_s_1m": gpu_km2_per_s,
            "gpu_source": gpu_source,
            "host_s_per_km2_1m": host_s_per_km2,
            "host_source": host_source,
            "pod_km2_per_s_1m": pod_km2_per_s(inputs),
            "inputs": asdict(inputs),
            "measured": {k: v for k, v in measured.items() if k not in ("model", "machine")},
            "regions": columns,
            "mappers_per_replica": mappers,
            "mappers_source": load_source if mappers else None,
            "model": measured["model"],
            "machine": measured["machine"],
        }
    )


if __name__ == "__main__":
    main()
