"""Load: label writers and tile readers at once against the review app under uvicorn, on PostgreSQL.

Its own PostgreSQL server (durable settings: fsync on) and its own app on loopback, the bench home of the other
review benches (bench/_review.py) with a fresh label database. Phase 1: `--writers` threads post labels and
`--readers` threads read imagery and prediction tiles of a predicted 1 km^2 AOI for `--seconds`. Phase 2, the
baseline measured in the same run: the same tile reads with no writers. Afterwards every acknowledged label
must be in the database once. Last line: {"label_writes_per_s", "tile_p99_ms", "tile_p99_ms_no_writers",
"tile_p99_ratio", "errors", "lost", "model", "machine"}; the app runs the registered starter (`--proxy-fcn`: a
PEARL-sized FCN).
"""

from __future__ import annotations

import argparse
import random
import shutil
import threading
import time
from typing import Any

import httpx
import morecantile
from _common import model_arguments
from _review import bench_settings, emit, ensure_predicted_aoi, log, percentile, run_info, start_app

from pearl_pipelines.labels.pg_local import PostgresServer, find_bin_dir
from pearl_pipelines.labels.store import LabelStore


def tile_urls(url: str, project: dict[str, Any], aoi: dict[str, Any]) -> list[str]:
    """Imagery and prediction tiles (zoom 15-17) over the AOI: what a mapper's map requests."""
    tms = morecantile.tms.get("WebMercatorQuad")
    coords = aoi["geometry"]["coordinates"][0]
    west, south = min(c[0] for c in coords), min(c[1] for c in coords)
    east, north = max(c[0] for c in coords), max(c[1] for c in coords)
    templates = [project["imagery"]["tilejson"]["true_color"], aoi["prediction"]["tilejson"]["classes"]]
    urls = []
    for template in templates:
        tiles = httpx.get(f"{url}{template}", timeout=30).json()["tiles"][0]
        for tile in tms.tiles(west, south, east, north, [15, 16, 17]):
            urls.append(tiles.replace("{z}", str(tile.z)).replace("{x}", str(tile.x)).replace("{y}", str(tile.y)))
    return urls


def run_phase(
    url: str, urls: list[str], aoi: dict[str, Any], *, writers: int, readers: int, seconds: float
) -> dict[str, Any]:
    stop = threading.Event()
    lock = threading.Lock()
    tile_ms: list[float] = []
    acknowledged: list[int] = []
    errors: list[str] = []
    coords = aoi["geometry"]["coordinates"][0]
    west, south = min(c[0] for c in coords), min(c[1] for c in coords)
    east, north = max(c[0] for c in coords), max(c[1] for c in coords)

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=url, timeout=60) as client:
            while not stop.is_set():
                point = [rng.uniform(west, east), rng.uniform(south, north)]
                body = {"class_name": rng.choice(["water", "tree_canopy", "impervious_surfaces"]), "aoi_id": aoi["id"]}
                body["geometry"] = {"type": "Point", "coordinates": point}
                try:
                    response = client.post("/api/projects/1/labels", json=body)
                except httpx.HTTPError as exc:
                    with lock:
                        errors.append(f"write: {exc!r}")
                    continue
                with lock:
                    if response.status_code == 201:
                        acknowledged.append(int(response.json()["id"]))
                    else:
                        errors.append(f"write: HTTP {response.status_code} {response.text[:120]}")

    def reader(seed: int) -> None:
        rng = random.Random(1000 + seed)
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    response = client.get(rng.choice(urls))
                except httpx.HTTPError as exc:
                    with lock:
                        errors.append(f"tile: {exc!r}")
                    continue
                elapsed = (time.perf_counter() - started) * 1000
                with lock:
                    if response.status_code == 200:
                        tile_ms.append(elapsed)
                    else:
                        errors.append(f"tile: HTTP {response.status_code}")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    threads += [threading.Thread(target=reader, args=(i,)) for i in range(readers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(timeout=120)
    elapsed = time.perf_counter() - started
    return {"tile_ms": tile_ms, "acknowledged": acknowledged, "errors": errors, "seconds": elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=50)
    parser.add_argument("--readers", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = model_arguments(parser).parse_args()

    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise SystemExit(
            "PostgreSQL is not installed (initdb in PATH or /usr/lib/postgresql/*/bin): make test installs it"
        )
    server = PostgresServer(bin_dir, durable=True).start()
    app = None
    try:
        store_url = server.new_database()
        home = bench_settings("load", proxy=args.proxy_fcn)  # its own home: the review state of a fresh label DB
        info = run_info(home)
        for stale in ("review", "labels.db"):
            path = home.home_abs / stale
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        settings = home.model_copy(update={"label_store_url": store_url})
        env = {"PEARL_LABEL_STORE_URL": store_url, "PEARL_WRITE_RATE_LIMIT": "1000000/second"}
        url, app = start_app(settings, extra_env=env)
        log(f"review app on {url}, label store PostgreSQL {server.port} (fsync on)")
        aoi = ensure_predicted_aoi(url)
        project = httpx.get(f"{url}/api/projects/1", timeout=30).json()
        urls = tile_urls(url, project, aoi)
        log(f"{len(urls)} tile URLs; phase 1: {args.writers} writers + {args.readers} readers for {args.seconds:g} s")
        loaded = run_phase(url, urls, aoi, writers=args.writers, readers=args.readers, seconds=args.seconds)
        log(f"phase 2: {args.readers} readers, no writers, for {args.seconds:g} s")
        quiet = run_phase(url, urls, aoi, writers=0, readers=args.readers, seconds=args.seconds)
        store = LabelStore(store_url)
        stored = [row.id for row in store.list_labels(1)]
        store.engine.dispose()
    finally:
        if app is not None:
            app.stop()
        server.stop()
    lost = len(set(loaded["acknowledged"]) - set(stored))
    duplicated = len(stored) - len(set(stored))
    errors = loaded["errors"] + quiet["errors"]
    for line in sorted(set(errors))[:10]:
        log(f"  error: {line}")
    p99, p99_quiet = percentile(loaded["tile_ms"], 99), percentile(quiet["tile_ms"], 99)
    log(
        f"{len(loaded['acknowledged'])} labels acknowledged ({len(loaded['acknowledged']) / loaded['seconds']:.1f}/s), "
        f"{len(stored)} stored, {lost} lost, {duplicated} duplicated; tiles p99 {p99:.0f} ms with writers "
        f"({len(loaded['tile_ms'])} tiles) vs {p99_quiet:.0f} ms without ({len(quiet['tile_ms'])} tiles)"
    )
    emit(
        {
            "label_writes_per_s": len(loaded["acknowledged"]) / loaded["seconds"],
            "tile_p99_ms": p99,
            "tile_p99_ms_no_writers": p99_quiet,
            "tile_p99_ratio": p99 / p99_quiet,
            "tiles_per_s": len(loaded["tile_ms"]) / loaded["seconds"],
            "tiles_per_s_no_writers": len(quiet["tile_ms"]) / quiet["seconds"],
            "errors": float(len(errors)),
            "lost": float(lost + duplicated),
            **info,
        }
    )


if __name__ == "__main__":
    main()
