"""Peak memory of inference: 1 km^2 vs 16 km^2, each predicted in a fresh process.

The imagery is a VRT mosaic of 4 x 4 copies of a 1 km^2 scene (4000 x 4000 px at 1 m). The parent reads
each child's peak resident set size from the kernel (`os.wait4` rusage, ru_maxrss), so the figure
covers everything: torch, GDAL caches, buffers, COG writing. Streaming inference should make the two equal.
The model is the registered starter the app maps with, `pearl-starter-chesapeake9` (registered from the
shipped weights when missing), fused (no embedding cache: 16 km^2 of it would be ~7 GB of disk), as the
regional maps run it; `--proxy-fcn` runs the bench-trained FCN instead.
Last line: {"rss_1km2_mb", "rss_16km2_mb", "ratio", "model", "machine"}.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import rasterio
from _common import (
    ORIGIN,
    bench_dir,
    bench_model,
    emit,
    log,
    log_machine,
    median,
    model_arguments,
    scene_cog,
    use_all_cores,
)
from shapely.geometry import box

from pearl_pipelines.ml.inference import predict

TILE = 1000
MOSAIC = 4  # 4 x 4 tiles = 16 km^2
RUNS = 3


def mosaic_vrt() -> Path:
    """A 4000 x 4000 VRT made of 16 references to the 1 km^2 scene (same file, shifted)."""
    path = bench_dir() / "mosaic-16km2.vrt"
    image, _ = scene_cog("scene-1km-shifted", TILE, seed=31, shifted=True)
    if path.is_file():
        return path
    with rasterio.open(image) as src:
        srs, t = src.crs.to_wkt(), src.transform
    size = TILE * MOSAIC
    bands = []
    for band in range(1, 5):
        sources = "".join(
            f'<SimpleSource><SourceFilename relativeToVRT="1">{image.name}</SourceFilename>'
            f"<SourceBand>{band}</SourceBand>"
            f'<SrcRect xOff="0" yOff="0" xSize="{TILE}" ySize="{TILE}"/>'
            f'<DstRect xOff="{i * TILE}" yOff="{j * TILE}" xSize="{TILE}" ySize="{TILE}"/></SimpleSource>'
            for j in range(MOSAIC)
            for i in range(MOSAIC)
        )
        bands.append(f'<VRTRasterBand dataType="Byte" band="{band}">{sources}</VRTRasterBand>')
    path.write_text(
        f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}"><SRS>{srs}</SRS>'
        f"<GeoTransform>{t.c}, {t.a}, 0, {t.f}, 0, {t.e}</GeoTransform>{''.join(bands)}</VRTDataset>"
    )
    return path


def child(km: int, proxy: bool) -> None:
    """Predict a km x km square of the mosaic (its top-left corner) and exit."""
    use_all_cores()
    model = bench_model("chesapeake9", proxy=proxy).model
    side = km * TILE
    aoi = box(ORIGIN[0], ORIGIN[1] - side, ORIGIN[0] + side, ORIGIN[1])
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        predict(model, mosaic_vrt(), Path(tmp), aoi=aoi)
    print(f"{side * side / 1e6:.0f} km^2 predicted in {time.perf_counter() - started:.1f} s", flush=True)


def peak_rss_mb(km: int, proxy: bool) -> float:
    """Peak RSS of a fresh `memory.py --child km` process, in MB."""
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(km), *(["--proxy-fcn"] if proxy else [])])
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"child for {km * km} km^2 failed with exit code {proc.returncode}")
    return usage.ru_maxrss / 1024  # Linux reports KB


def main() -> None:
    parser = model_arguments(argparse.ArgumentParser(description=__doc__))
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.proxy_fcn)
        return
    use_all_cores()
    info = log_machine(precision="fp32")
    name = bench_model("chesapeake9", proxy=args.proxy_fcn).name  # create shared data before timing children
    mosaic_vrt()
    small = median([peak_rss_mb(1, args.proxy_fcn) for _ in range(RUNS)])
    large = median([peak_rss_mb(MOSAIC, args.proxy_fcn) for _ in range(RUNS)])
    log(f"peak RSS: 1 km^2 {small:.0f} MB, {MOSAIC * MOSAIC} km^2 {large:.0f} MB ({large / small:.2f}x)")
    emit({"rss_1km2_mb": small, "rss_16km2_mb": large, "ratio": large / small, "model": name, "machine": info})


if __name__ == "__main__":
    main()
