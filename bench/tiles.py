"""Tile latency and throughput of the review app vs plain titiler serving the same COGs, 16 concurrent clients.

Both servers run under uvicorn (one worker) on loopback in this run: the review app (ids -> files, schema
colormap, GTiff-only reader, cache headers) and a plain `titiler.core` TilerFactory app reading `?url=`.
Each requests the same imagery tiles (true colour, z16-z17 over the demo region) and prediction tiles
(z16-z18 over a predicted 1 km^2 AOI) as 512 px PNGs; rounds alternate between the servers so that load
from anything else on the machine hits both alike.

Last line: {"p50_ms", "p99_ms", "tiles_per_s", "ratio_vs_titiler", "model", "machine"} for the review app (ratio of
tiles/s). The app runs the registered starter (`--proxy-fcn`: a PEARL-sized FCN instead).
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import morecantile
from _review import (
    arguments,
    bench_settings,
    emit,
    ensure_predicted_aoi,
    free_port,
    log,
    percentile,
    run_info,
    start_app,
)

from pearl_pipelines.services import Service

CLIENTS = 16
ROUNDS = 3
TMS = morecantile.tms.get("WebMercatorQuad")


def tiles_over(bounds: list[float], zooms: list[int], inset: float = 0.03) -> list[tuple[int, int, int]]:
    """Tiles over the bounds shrunk by `inset` on each side (edge tiles may fall outside the raster: 404)."""
    west, south, east, north = bounds
    dx, dy = (east - west) * inset, (north - south) * inset
    return [(t.z, t.x, t.y) for t in TMS.tiles(west + dx, south + dy, east - dx, north - dy, zooms=zooms)]


async def fetch_all(urls: list[str]) -> tuple[list[float], float]:
    """GET every URL with CLIENTS concurrent workers; (latencies in s, wall time in s)."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for url in urls:
        queue.put_nowait(url)
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def worker() -> None:
            while not queue.empty():
                url = queue.get_nowait()
                started = time.perf_counter()
                response = await client.get(url)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    raise RuntimeError(f"{url} -> {response.status_code} {response.text[:200]}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CLIENTS)))
        return latencies, time.perf_counter() - started


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    settings = bench_settings(proxy=args.proxy_fcn)
    info = run_info(settings)
    url, app = start_app(settings)
    baseline: Service | None = None
    try:
        aoi = ensure_predicted_aoi(url)
        project = httpx.get(f"{url}/api/projects/1", timeout=10).json()
        layer = aoi["prediction"]
        paths = ReviewPaths(settings.home_abs, aoi["id"], layer["version"])
        port = free_port()
        baseline = Service(
            "plain titiler",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "_titiler_app:app",
                "--app-dir",
                str(Path(__file__).parent),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            f"http://127.0.0.1:{port}/docs",
        ).start(timeout=60)
        plain = f"http://127.0.0.1:{port}"
        rng = random.Random(0)
        imagery_tiles = tiles_over(project["imagery"]["bounds"], [16, 17])
        ring = aoi["geometry"]["coordinates"][0]
        aoi_bounds = [
            min(p[0] for p in ring),
            min(p[1] for p in ring),
            max(p[0] for p in ring),
            max(p[1] for p in ring),
        ]
        prediction_tiles = tiles_over(aoi_bounds, [16, 17, 18])
        rng.shuffle(imagery_tiles)
        rng.shuffle(prediction_tiles)
        q = "tilesize=512"
        ours = {
            "imagery": [
                f"{url}/tiles/imagery/1/tiles/WebMercatorQuad/{z}/{x}/{y}.png?bidx=1&bidx=2&bidx=3&{q}"
                for z, x, y in imagery_tiles
            ],
            "predictions": [
                f"{url}/tiles/predictions/1/{aoi['id']}/{layer['version']}/tiles/WebMercatorQuad/{z}/{x}/{y}.png?{q}"
                for z, x, y in prediction_tiles
            ],
        }
        theirs = {
            "imagery": [
                f"{plain}/cog/tiles/WebMercatorQuad/{z}/{x}/{y}.png?url={quote(str(paths.imagery))}"
                f"&bidx=1&bidx=2&bidx=3&{q}"
                for z, x, y in imagery_tiles
            ],
            "predictions": [
                f"{plain}/cog/tiles/WebMercatorQuad/{z}/{x}/{y}.png?url={quote(str(paths.classes))}&{q}"
                for z, x, y in prediction_tiles
            ],
        }
        log(
            f"{len(imagery_tiles)} imagery + {len(prediction_tiles)} prediction tiles per round, {CLIENTS} clients, "
            f"{ROUNDS} rounds per server"
        )
        for urls in (ours, theirs):  # warm-up: imports, GDAL caches, connection pools
            asyncio.run(fetch_all(urls["imagery"][:32] + urls["predictions"][:32]))
        stats: dict[str, dict[str, list[float]]] = {
            name: {"lat": [], "wall": [], "n": []} for name in ("ours", "titiler")
        }
        per_layer: dict[tuple[str, str], list[float]] = {}
        for _ in range(ROUNDS):
            for name, urls in (("ours", ours), ("titiler", theirs)):
                for kind in ("imagery", "predictions"):
                    latencies, wall = asyncio.run(fetch_all(urls[kind]))
                    stats[name]["lat"] += latencies
                    stats[name]["wall"].append(wall)
                    stats[name]["n"].append(len(latencies))
                    per_layer.setdefault((name, kind), []).append(len(latencies) / wall)
        for (name, kind), rates in sorted(per_layer.items()):
            log(f"  {name:8s} {kind:12s} {sum(rates) / len(rates):7.1f} tiles/s")
        result = {}
        for name in ("ours", "titiler"):
            s = stats[name]
            rate = sum(s["n"]) / sum(s["wall"])
            result[name] = (percentile(s["lat"], 50) * 1000, percentile(s["lat"], 99) * 1000, rate)
            log(f"{name:8s} p50 {result[name][0]:.1f} ms  p99 {result[name][1]:.1f} ms  {rate:.1f} tiles/s")
        p50, p99, rate = result["ours"]
        emit(
            {
                "p50_ms": p50,
                "p99_ms": p99,
                "tiles_per_s": rate,
                "ratio_vs_titiler": rate / result["titiler"][2],
                **info,
            }
        )
    finally:
        if baseline is not None:
            baseline.stop()
        app.stop()


class ReviewPaths:
    """The files behind the review app's ids (the plain titiler gets them as `url=`)."""

    def __init__(self, home: Path, aoi_id: int, version: int) -> None:
        from pearl_pipelines.labels.store import LabelStore
        from pearl_pipelines.settings import Settings
        from review_app.workspace import StateStore

        states = StateStore(home, LabelStore(Settings(home=home).resolved_label_store_url))
        self.imagery = states.imagery_path(1)
        self.classes = states.paths(1).classes_path(aoi_id, version)


if __name__ == "__main__":
    main()
