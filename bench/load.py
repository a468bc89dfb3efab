"""Load: label writers and tile readers at once against the review app under uvicorn, on PostgreSQL, with one and
with three app processes.

Its own PostgreSQL server (durable settings: fsync on), the bench home of the other review benches
(bench/_review.py) with a fresh label database, and app processes on loopback started as `start_app` starts one.
For each process count of `--processes` (default 1 and 3, in that order, the same label store and home): phase 1,
`--writers` threads post labels and `--readers` threads read imagery and prediction tiles of a predicted 1 km^2
AOI for `--seconds`, every request sent to the next process in turn (round robin); phase 2, the baseline
measured in the same run: the same tile reads with no writers. After each count, every label acknowledged in it
must be in the database exactly once.

Where `redis-server` is installed (Debian package), one is started on loopback and every process, in both runs,
gets PEARL_RATE_LIMIT_STORAGE=redis://.../0 and PEARL_EVENTS_URL=redis://.../1 (shared write limits and events,
as replicas run); without it every process counts on its own (memory://). The per-user write limit is lifted
(PEARL_WRITE_RATE_LIMIT=1000000/second) in both runs: all writers are one user here, and the bench measures what
the processes and the database carry, not the limit (30/s per user by default, one mapper clicks far less).

Last line: {"label_writes_per_s", "tile_p99_ms", "tile_p99_ms_no_writers", "tile_p99_ratio", "tiles_per_s",
"tiles_per_s_no_writers", "errors", "lost" (the first count of `--processes`, as before), "processes" (the same per
count), "label_writes_per_s_3", "tile_p99_ms_3", "writes_ratio_3_vs_1", "tile_p99_ratio_3_vs_1", "lost_3" (when
1 and 3 are measured), "shared_state", "model", "machine"}; also written to PEARL_HOME/bench/load.json (read by
bench/capacity.py). The app runs the registered starter (`--proxy-fcn`: a PEARL-sized FCN).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import shutil
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import morecantile
from _common import model_arguments
from _review import bench_settings, emit, ensure_predicted_aoi, free_port, log, percentile, run_info, start_app

from pearl_pipelines.labels.pg_local import PostgresServer, find_bin_dir
from pearl_pipelines.labels.store import LabelStore
from pearl_pipelines.redis_local import RedisServer
from pearl_pipelines.services import Service
from pearl_pipelines.settings import get_settings

# Idle connections are dropped before uvicorn's keep-alive timeout (5 s) closes them from its side: with round robin a
# thread's connection to one process idles while it asks the others, and reusing one the server is just closing reads
# as "connection reset" (a client artefact; a load balancer in front of replicas manages this for browsers).
CLIENT_LIMITS = httpx.Limits(keepalive_expiry=4.0)


def tile_urls(url: str, project: dict[str, Any], aoi: dict[str, Any]) -> list[str]:
    """Imagery and prediction tiles (zoom 15-17) over the AOI: what a mapper's map requests. Paths (with their
    query), so that any app process can be asked for them."""
    tms = morecantile.tms.get("WebMercatorQuad")
    coords = aoi["geometry"]["coordinates"][0]
    west, south = min(c[0] for c in coords), min(c[1] for c in coords)
    east, north = max(c[0] for c in coords), max(c[1] for c in coords)
    templates = [project["imagery"]["tilejson"]["true_color"], aoi["prediction"]["tilejson"]["classes"]]
    urls = []
    for template in templates:
        tiles = httpx.get(f"{url}{template}", timeout=30).json()["tiles"][0]
        parts = urlsplit(tiles)
        tiles = parts.path + (f"?{parts.query}" if parts.query else "")
        for tile in tms.tiles(west, south, east, north, [15, 16, 17]):
            urls.append(tiles.replace("{z}", str(tile.z)).replace("{x}", str(tile.x)).replace("{y}", str(tile.y)))
    return urls


class RoundRobin:
    """The next app process for each request, in turn across all client threads; counts requests per process."""

    def __init__(self, bases: list[str]) -> None:
        self._cycle = itertools.cycle(bases)
        self._lock = threading.Lock()
        self.sent = dict.fromkeys(bases, 0)

    def next(self) -> str:
        with self._lock:
            base = next(self._cycle)
            self.sent[base] += 1
            return base


def run_phase(
    bases: list[str], urls: list[str], aoi: dict[str, Any], *, writers: int, readers: int, seconds: float
) -> dict[str, Any]:
    stop = threading.Event()
    lock = threading.Lock()
    spread = RoundRobin(bases)
    tile_ms: list[float] = []
    acknowledged: list[int] = []
    errors: list[str] = []
    coords = aoi["geometry"]["coordinates"][0]
    west, south = min(c[0] for c in coords), min(c[1] for c in coords)
    east, north = max(c[0] for c in coords), max(c[1] for c in coords)

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(timeout=60, limits=CLIENT_LIMITS) as client:
            while not stop.is_set():
                point = [rng.uniform(west, east), rng.uniform(south, north)]
                body = {"class_name": rng.choice(["water", "tree_canopy", "impervious_surfaces"]), "aoi_id": aoi["id"]}
                body["geometry"] = {"type": "Point", "coordinates": point}
                try:
                    response = client.post(f"{spread.next()}/api/projects/1/labels", json=body)
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
        with httpx.Client(timeout=60, limits=CLIENT_LIMITS) as client:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    response = client.get(f"{spread.next()}{rng.choice(urls)}")
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
    return {
        "tile_ms": tile_ms,
        "acknowledged": acknowledged,
        "errors": errors,
        "seconds": elapsed,
        "requests_per_process": list(spread.sent.values()),
    }


def stored_labels(store_url: str) -> list[int]:
    store = LabelStore(store_url)
    try:
        return [row.id for row in store.list_labels(1)]
    finally:
        store.engine.dispose()


def measure(
    bases: list[str], urls: list[str], aoi: dict[str, Any], store_url: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Both phases against `bases`, then the lost-label check of the labels acknowledged in them."""
    n = len(bases)
    log(
        f"[{n} process{'es' if n > 1 else ''}] phase 1: {args.writers} writers + {args.readers} readers for "
        f"{args.seconds:g} s, round robin over {', '.join(bases)}"
    )
    loaded = run_phase(bases, urls, aoi, writers=args.writers, readers=args.readers, seconds=args.seconds)
    log(f"[{n}] phase 2: {args.readers} readers, no writers, for {args.seconds:g} s")
    quiet = run_phase(bases, urls, aoi, writers=0, readers=args.readers, seconds=args.seconds)
    stored = stored_labels(store_url)
    lost = len(set(loaded["acknowledged"]) - set(stored))
    duplicated = len(stored) - len(set(stored))
    errors = loaded["errors"] + quiet["errors"]
    for line in sorted(set(errors))[:10]:
        log(f"  error: {line}")
    p99, p99_quiet = percentile(loaded["tile_ms"], 99), percentile(quiet["tile_ms"], 99)
    writes = len(loaded["acknowledged"]) / loaded["seconds"]
    log(
        f"[{n}] {len(loaded['acknowledged'])} labels acknowledged ({writes:.1f}/s), {len(stored)} stored in all, "
        f"{lost} lost, {duplicated} duplicated; tiles p99 {p99:.0f} ms with writers ({len(loaded['tile_ms'])} tiles) "
        f"vs {p99_quiet:.0f} ms without ({len(quiet['tile_ms'])} tiles); requests per process "
        f"{loaded['requests_per_process']}"
    )
    return {
        "label_writes_per_s": writes,
        "tile_p99_ms": p99,
        "tile_p99_ms_no_writers": p99_quiet,
        "tile_p99_ratio": p99 / p99_quiet,
        "tile_p50_ms": percentile(loaded["tile_ms"], 50),
        "tiles_per_s": len(loaded["tile_ms"]) / loaded["seconds"],
        "tiles_per_s_no_writers": len(quiet["tile_ms"]) / quiet["seconds"],
        "acknowledged": float(len(loaded["acknowledged"])),
        "errors": float(len(errors)),
        "lost": float(lost + duplicated),
        "requests_per_process": loaded["requests_per_process"],
    }


def process_counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"--processes takes counts >= 1 separated by commas, e.g. 1,3; got {text!r}")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=50)
    parser.add_argument("--readers", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30.0, help="per phase; 2 phases per process count")
    parser.add_argument(
        "--processes", type=process_counts, default=[1, 3], help="app process counts to measure, in order (1,3)"
    )
    parser.add_argument("--no-redis", action="store_true", help="memory:// limits and events even with redis-server")
    args = model_arguments(parser).parse_args()

    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise SystemExit(
            "PostgreSQL is not installed (initdb in PATH or /usr/lib/postgresql/*/bin): make test installs it"
        )
    redis_binary = None if args.no_redis else shutil.which("redis-server")
    server = PostgresServer(bin_dir, durable=True).start()
    redis_server: RedisServer | None = None
    apps: list[Service] = []
    results: dict[str, dict[str, Any]] = {}
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
        if redis_binary:
            redis_server = RedisServer(redis_binary, free_port()).start()
            env.update({"PEARL_RATE_LIMIT_STORAGE": redis_server.url(0), "PEARL_EVENTS_URL": redis_server.url(1)})
            shared = f"redis (redis-server on {redis_server.port}: limits db 0, events db 1)"
        else:
            shared = "memory:// (no redis-server: each process counts limits and delivers events on its own)"
        log(f"shared state of the app processes: {shared}")
        bases: list[str] = []

        def grow(n: int) -> None:
            while len(bases) < n:
                url, app = start_app(settings, extra_env=env)  # one at a time: the first prepares the project
                apps.append(app)
                bases.append(url)
                log(f"review app {len(bases)} on {url}, label store PostgreSQL {server.port} (fsync on)")

        grow(1)
        aoi = ensure_predicted_aoi(bases[0])
        project = httpx.get(f"{bases[0]}/api/projects/1", timeout=30).json()
        urls = tile_urls(bases[0], project, aoi)
        log(f"{len(urls)} tile URLs")
        for n in args.processes:
            grow(n)
            results[str(n)] = measure(bases[:n], urls, aoi, store_url, args)
    finally:
        for app in apps:
            app.stop()
        server.stop()
        if redis_server is not None:
            redis_server.cleanup()
    first = results[str(args.processes[0])]
    out: dict[str, Any] = {
        key: first[key]
        for key in (
            "label_writes_per_s",
            "tile_p99_ms",
            "tile_p99_ms_no_writers",
            "tile_p99_ratio",
            "tiles_per_s",
            "tiles_per_s_no_writers",
            "errors",
            "lost",
        )
    }
    out["processes"] = results
    if "1" in results and "3" in results:
        one, three = results["1"], results["3"]
        out.update(
            {
                "label_writes_per_s_3": three["label_writes_per_s"],
                "tile_p99_ms_3": three["tile_p99_ms"],
                "writes_ratio_3_vs_1": three["label_writes_per_s"] / one["label_writes_per_s"],
                "tile_p99_ratio_3_vs_1": three["tile_p99_ms"] / one["tile_p99_ms"],
                "tiles_per_s_ratio_3_vs_1": three["tiles_per_s"] / one["tiles_per_s"],
                "errors_3": three["errors"],
                "lost_3": three["lost"],
            }
        )
        log(
            f"1 vs 3 processes: label writes {one['label_writes_per_s']:.1f} vs {three['label_writes_per_s']:.1f}/s "
            f"({out['writes_ratio_3_vs_1']:.2f}x); tile p99 {one['tile_p99_ms']:.0f} vs {three['tile_p99_ms']:.0f} ms "
            f"({out['tile_p99_ratio_3_vs_1']:.2f}x); lost {one['lost']:.0f} / {three['lost']:.0f}"
        )
    out.update(
        {
            "writers": args.writers,
            "readers": args.readers,
            "seconds": args.seconds,
            "shared_state": "redis" if redis_binary else "memory",
            **info,
        }
    )
    saved = get_settings().home_abs / "bench" / "load.json"
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps({**out, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
    log(f"saved to {saved}")
    emit(out)


if __name__ == "__main__":
    main()
