"""Sliding-window inference over any 4-band uint8 raster (COG, VRT mosaic), streamed to COGs.

Windows come from the global grid of `tiling.py`, run in batches, and their weighted outputs are
accumulated into a buffer one window-row high. After each window row the rows no later window can
touch are final: they are classified and written, and the buffer slides down. Wide areas are split
into column bands, so memory depends on the window and band size, never on the area.

With `embeddings_dir`, the backbone's output is accumulated as well (C + K channels) and stored as the
area's embedding cache; otherwise the fused backbone+head model runs and only K channels are accumulated.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.enums import MaskFlags
from rasterio.features import geometry_mask
from rasterio.warp import transform_geom
from rasterio.windows import Window
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry
from tqdm.auto import tqdm

from pearl_pipelines.ml.embeddings import EmbeddingCache, backbone_digest
from pearl_pipelines.ml.gpu import plan_gpu_inference
from pearl_pipelines.ml.models import LandcoverModel, pick_device
from pearl_pipelines.ml.outputs import ClassRasterWriter, PredictionResult
from pearl_pipelines.ml.precision import Precision, autocast
from pearl_pipelines.ml.runtime import Groups, group_function
from pearl_pipelines.ml.tiling import (
    PixelSource,
    RasterSource,
    Tiling,
    blend_kernel,
    default_tiling,
    fitted_grid,
    grid_anchor,
    read_reflected,
    window_starts,
)

Progress = Callable[[int, int], None]
# (row, col, block): a finished (h, w, C) float32 block at local raster pixel (row, col); read-only view.
Sink = Callable[[int, int, torch.Tensor], None]
# (B, bands, h, w) -> (B, C, h, w), or the C channels as consecutive parts (accumulated where they land, never
# concatenated: on CPU a concatenated wide embedding cost a fifth of the forward pass).
Forward = Callable[[torch.Tensor], torch.Tensor | list[torch.Tensor]]

# GDAL's block cache defaults to 5% of RAM and would hold every written block of a large output; reads
# are whole strips and writes complete a block row per window row, so a small cache is enough.
GDAL_CACHE_MB = 16
SINK_COLUMNS = 1024
# Largest window of an AOI's fitted grid (`fit_windows`): 2 x 2 windows of 608 px for a 1 km^2 AOI at 1 m, with a
# first block (ml/preview.py) of a quarter of it; one window's buffers of a wide embedding (~240 channels) stay
# under ~0.6 GB. A single window of 1120 px would save another 15 % of pixels but leave no block to show first.
AOI_MAX_WINDOW = 768


@dataclass(frozen=True)
class Region:
    """A rectangle of raster pixels: rows [row0, row0 + height), cols [col0, col0 + width)."""

    row0: int
    col0: int
    height: int
    width: int

    @property
    def window(self) -> Window:
        return Window(self.col0, self.row0, self.width, self.height)


@dataclass
class WindowPlan:
    """Which grid windows cover a region, grouped into column bands (each band streams row by row)."""

    region: Region
    tiling: Tiling
    row_starts: np.ndarray
    bands: list[tuple[int, int, np.ndarray]] = field(default_factory=list)  # (col_lo, col_hi, col starts)

    @classmethod
    def build(cls, region: Region, tiling: Tiling, anchor: tuple[int, int], band_cols: int) -> WindowPlan:
        plan = cls(region, tiling, window_starts(region.row0, region.row0 + region.height, tiling, anchor[0]))
        col_end = region.col0 + region.width
        for lo in range(region.col0, col_end, band_cols):
            hi = min(lo + band_cols, col_end)
            plan.bands.append((lo, hi, window_starts(lo, hi, tiling, anchor[1])))
        return plan

    @property
    def total(self) -> int:
        return len(self.row_starts) * sum(len(starts) for *_, starts in self.bands)


def band_columns(tiling: Tiling, channels: int, buffer_mb: float) -> int:
    """Widest column band whose accumulation buffer fits `buffer_mb`, at least four strides wide."""
    cols = int(buffer_mb * 2**20 / (tiling.window * channels * 4))
    return max(4, cols // tiling.stride) * tiling.stride


def _extent(start: int, lo: int, hi: int, tiling: Tiling) -> tuple[int, int]:
    """The part of the window at `start` to compute: all of it, or (cropping) what [lo, hi) needs plus the margin."""
    if not tiling.crop:
        return start, start + tiling.window
    return max(start, lo - tiling.margin), min(start + tiling.window, hi + tiling.margin)


def run_windows(
    source: PixelSource,
    plan: WindowPlan,
    forward: Forward,
    channels: int,
    sink: Sink,
    *,
    device: torch.device,
    batch_size: int = 4,
    progress: Progress | None = None,
) -> int:
    """Run `forward` over every planned window, blend, and hand finished row blocks to `sink`. Returns windows run."""
    t = plan.tiling
    w, s, m = t.window, t.stride, t.margin
    kernel = torch.from_numpy(blend_kernel(t))[:, :, None]  # (W, W, 1), for channels-last outputs
    r_lo, r_hi = plan.region.row0, plan.region.row0 + plan.region.height
    done, total = 0, plan.total
    for col_lo, col_hi, col_starts in plan.bands:
        x0 = int(col_starts[0])
        acc = torch.zeros(w, int(col_starts[-1]) + w - x0, channels)  # rows y .. y + W of the current window row
        windows = [(x, *_extent(x, col_lo, col_hi, t)) for x in col_starts.tolist()]
        read_lo, read_hi = windows[0][1], windows[-1][2]
        by_width: dict[int, list[tuple[int, int, int]]] = {}  # only edge windows are cropped: few shapes
        for window in windows:
            by_width.setdefault(window[2] - window[1], []).append(window)
        for y in plan.row_starts.tolist():
            top, bottom = _extent(y, r_lo, r_hi, t)
            strip = read_reflected(source, top, bottom - top, read_lo, read_hi - read_lo).transpose(1, 2, 0)
            for group in by_width.values():
                for first in range(0, len(group), batch_size):
                    chunk = group[first : first + batch_size]
                    batch = torch.from_numpy(np.stack([strip[:, a - read_lo : b - read_lo] for _, a, b in chunk]))
                    out = forward(batch.permute(0, 3, 1, 2).to(device))
                    parts = [p.permute(0, 2, 3, 1).cpu() for p in ([out] if isinstance(out, torch.Tensor) else out)]
                    for i, (x, a, b) in enumerate(chunk):
                        target = acc[top - y : bottom - y, a - x0 : b - x0]
                        weight = kernel[top - y : bottom - y, a - x : b - x]
                        c = 0
                        for part in parts:  # (B, h, w, c_part): each into its channels of the buffer
                            target[..., c : c + part.shape[3]].addcmul_(part[i], weight)
                            c += part.shape[3]
                    done += len(chunk)
                    if progress:
                        progress(done, total)
            # Rows [y + m, y + m + S) get nothing from later windows: emit them, then slide the buffer by S.
            first_row, last_row = max(y + m, r_lo), min(y + m + s, r_hi)
            if last_row > first_row:
                sink(first_row, col_lo, acc[first_row - y : last_row - y, col_lo - x0 : col_hi - x0])
            acc[: w - s] = acc[s:].clone()
            acc[w - s :] = 0
    return done


def aoi_region(
    dataset: Any, aoi: BaseGeometry | Mapping[str, Any] | None, aoi_crs: Any = None
) -> tuple[Region, BaseGeometry | None]:
    """(Region, AOI geometry in the raster's CRS or None) for an AOI given in `aoi_crs` (default: the raster's)."""
    full = Region(0, 0, dataset.height, dataset.width)
    if aoi is None:
        return full, None
    geom = aoi if isinstance(aoi, BaseGeometry) else shape(aoi)
    if geom.is_empty or geom.geom_type not in ("Polygon", "MultiPolygon"):
        raise ValueError(f"AOI must be a non-empty Polygon or MultiPolygon, got {geom.geom_type}")
    if aoi_crs is not None and rasterio.crs.CRS.from_user_input(aoi_crs) != dataset.crs:
        geom = shape(transform_geom(aoi_crs, dataset.crs, mapping(geom)))
    inv = ~dataset.transform
    xmin, ymin, xmax, ymax = geom.bounds
    cols, rows = zip(*(inv @ (x, y) for x in (xmin, xmax) for y in (ymin, ymax)), strict=True)
    r0, r1 = max(math.floor(min(rows)), 0), min(math.ceil(max(rows)), dataset.height)
    c0, c1 = max(math.floor(min(cols)), 0), min(math.ceil(max(cols)), dataset.width)
    if r1 <= r0 or c1 <= c0:
        raise ValueError(f"AOI bounds {geom.bounds} do not intersect the imagery bounds {tuple(dataset.bounds)}")
    return Region(r0, c0, r1 - r0, c1 - c0), geom


def _valid_mask(dataset: Any, geom: BaseGeometry | None) -> Callable[[int, int, int, int], np.ndarray | None]:
    """(row, col, h, w) -> bool mask of pixels to classify: inside the AOI and covered by imagery.

    Imagery without nodata or masks (the common COG case) costs nothing; gaps in a mosaic or masked
    collars become nodata instead of confident nonsense.
    """
    masked = any(MaskFlags.all_valid not in flags for flags in dataset.mask_flag_enums)

    def mask(row: int, col: int, height: int, width: int) -> np.ndarray | None:
        window = Window(col, row, width, height)
        valid = dataset.dataset_mask(window=window) > 0 if masked else None
        if geom is None:
            return valid
        inside = geometry_mask(
            [geom], out_shape=(height, width), transform=dataset.window_transform(window), invert=True
        )
        return inside if valid is None else inside & valid

    return mask


def aoi_windows(
    model: LandcoverModel,
    dataset: Any,
    aoi: BaseGeometry | Mapping[str, Any] | None,
    aoi_crs: Any = None,
    *,
    tiling: Tiling | None = None,
    max_window: int = AOI_MAX_WINDOW,
) -> tuple[Tiling, tuple[int, int] | None]:
    """(tiling, anchor) of the fewest windows that cover the AOI's pixels (`tiling.fitted_grid`; anchor None: the
    global grid), for `predict`."""
    region, _ = aoi_region(dataset, aoi, aoi_crs)
    box = (region.row0, region.col0, region.height, region.width)
    return fitted_grid(tiling or default_tiling(model), box, model.multiple, max_window, grid_anchor(dataset.transform))


def inference_copy(model: LandcoverModel, device: torch.device) -> LandcoverModel:
    """An eval-mode, channels-last copy on `device` (the caller's model is left as it is)."""
    net = copy.deepcopy(model).eval().to(device)
    return net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def _check_imagery(dataset: Any, model: LandcoverModel, tiling: Tiling) -> None:
    bands = len(model.spec.bands)
    if dataset.count < bands or dataset.dtypes[0] != "uint8":
        raise ValueError(
            f"imagery {dataset.name} has {dataset.count} band(s) of {dataset.dtypes[0]}; "
            f"the model needs {bands} uint8 bands ({', '.join(model.spec.bands)})"
        )
    multiple = model.multiple
    if tiling.window % multiple:
        raise ValueError(f"window {tiling.window} must be a multiple of {multiple} for this model's embedding")


def _embed_and_classify(net: LandcoverModel, groups_of: Groups) -> Forward:
    """Embeddings and logits as the C + K channels of one output, so the map is the fused path's, bit for bit (the
    logits come from the groups as in `LandcoverModel.forward`)."""

    def forward(x: torch.Tensor) -> list[torch.Tensor]:
        groups = groups_of(x)
        return [*groups.values(), net.group_logits(groups)]

    return forward


def _autocast(forward: Forward, device: torch.device, precision: Precision) -> Forward:
    """`forward` under `precision`'s autocast, with float32 outputs (the blending buffer is float32)."""
    if precision == "fp32":
        return forward

    def run(x: torch.Tensor) -> list[torch.Tensor]:
        with autocast(device, precision):
            out = forward(x)
        return [part.float() for part in ([out] if isinstance(out, torch.Tensor) else out)]

    return run


def _classify(net: LandcoverModel, groups_of: Groups) -> Forward:
    """`LandcoverModel.forward` in eval mode, on the groups `groups_of` computes (those the head reads)."""
    return lambda x: net.group_logits(groups_of(x))


def _tqdm_progress(total: int, progress: Progress | None) -> tuple[Progress, Callable[[], None]]:
    bar = tqdm(total=total, unit="window", desc="predict")

    def update(done: int, total_: int) -> None:
        bar.update(done - bar.n)
        if progress:
            progress(done, total_)

    return update, bar.close


def predict(
    model: LandcoverModel,
    imagery: str | Path | Any,
    out_dir: Path,
    *,
    aoi: BaseGeometry | Mapping[str, Any] | None = None,
    aoi_crs: Any = None,
    tiling: Tiling | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    embeddings_dir: Path | None = None,
    model_id: str | None = None,
    progress: Progress | None = None,
    show_progress: bool = False,
    buffer_mb: float = 64,
    anchor: tuple[int, int] | None = None,
    fit_windows: bool = False,
) -> PredictionResult:
    """Predict `imagery` (path or open rasterio dataset) inside `aoi`; write classes + confidence COGs to `out_dir`.

    Pixels of the AOI's bounding box outside the AOI are nodata (255). With `embeddings_dir`, the
    area's embeddings are cached there for head-only re-prediction (see `embeddings.py`).
    `batch_size` (windows per forward pass) defaults to 1 on CPU, where one 512 px window already
    saturates the cores and bigger batches only add memory, and on a GPU to what its free memory holds
    (ml/gpu.py, which also picks bfloat16 autocast where it is faster and keeps the classes).
    Windows sit on the global grid (seamless between areas) unless `fit_windows` (the fewest windows that cover
    this AOI: `aoi_windows`) or an explicit `anchor` (the global pixel index of the raster's pixel (0, 0) for
    `tiling`, as `aoi_windows` returns it) says otherwise.
    """
    started = time.perf_counter()
    device = torch.device(device) if device is not None else pick_device()
    tiling = tiling or default_tiling(model)
    net = inference_copy(model, device)
    with ExitStack() as stack:
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB))
        stack.enter_context(torch.inference_mode())
        dataset: Any = imagery if hasattr(imagery, "read") else stack.enter_context(rasterio.open(imagery))
        _check_imagery(dataset, model, tiling)
        region, geom = aoi_region(dataset, aoi, aoi_crs)
        if fit_windows:
            tiling, anchor = aoi_windows(model, dataset, aoi, aoi_crs, tiling=tiling)
        mask = _valid_mask(dataset, geom)
        crs, transform = dataset.crs, dataset.window_transform(region.window)
        writer = stack.enter_context(
            ClassRasterWriter(
                out_dir,
                height=region.height,
                width=region.width,
                crs=crs,
                transform=transform,
                schema=model.spec.schema,
            )
        )

        k = len(model.spec.schema)
        cache = None
        if embeddings_dir is not None:
            cache = EmbeddingCache.create(
                embeddings_dir,
                crs=crs,
                transform=transform,
                height=region.height,
                width=region.width,
                channels=net.embed_dim,
                backbone_digest=backbone_digest(model),
                model_id=model_id,
                channel_groups=model.channel_groups,
            )
        # The groups the output needs (all of them for a cache; those the head reads otherwise), on the CPU runtime
        # that computes them fastest here (ml/runtime.py).
        skip = frozenset(net._unused_groups()) if cache is None else frozenset()
        groups_of, runtime = group_function(net, device, skip=skip)
        forward = _classify(net, groups_of) if cache is None else _embed_and_classify(net, groups_of)
        if device.type == "cuda":  # windows per batch and precision measured on this GPU (ml/gpu.py)
            gpu = plan_gpu_inference(forward, len(model.spec.bands), tiling.window, device)
            batch_size = batch_size or gpu.batch_size
            runtime = f"torch {gpu.describe()}"
            forward = _autocast(forward, device, gpu.precision)
        channels = k if cache is None else net.embed_dim + k

        def sink(row: int, col: int, block: torch.Tensor) -> None:
            """(h, w, [C +] K) finished block: logits are the last K channels, embeddings any before them."""
            for c in range(0, block.shape[1], SINK_COLUMNS):  # column slices keep per-block copies small
                part = block[:, c : c + SINK_COLUMNS]
                valid = mask(row, col + c, part.shape[0], part.shape[1])
                r, c0 = row - region.row0, col + c - region.col0
                if cache is not None:
                    cache.write_block(r, c0, part[..., :-k], valid)
                writer.write_logits(r, c0, part[..., -k:].permute(2, 0, 1).contiguous(), valid)

        batch_size = batch_size or 1
        band_cols = band_columns(tiling, channels, buffer_mb)
        plan = WindowPlan.build(region, tiling, grid_anchor(dataset.transform) if anchor is None else anchor, band_cols)
        close_bar = None
        if show_progress:
            progress, close_bar = _tqdm_progress(plan.total, progress)
        try:
            windows = run_windows(
                RasterSource(dataset, len(model.spec.bands)),
                plan,
                forward,
                channels,
                sink,
                device=device,
                batch_size=batch_size,
                progress=progress,
            )
        finally:
            if close_bar:
                close_bar()
        if cache is not None:
            cache.flush()
        classes_path, confidence_path = writer.close()
    return PredictionResult(
        classes_path=classes_path,
        confidence_path=confidence_path,
        height=region.height,
        width=region.width,
        crs=crs,
        transform=transform,
        windows=windows,
        seconds=time.perf_counter() - started,
        embeddings_dir=Path(embeddings_dir) if embeddings_dir is not None else None,
        runtime=runtime,
    )
