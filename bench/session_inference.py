"""A new AOI's first map tile through the compute backend, next to the same prediction in-process.

The review app (uvicorn on 127.0.0.1, real HTTP) no longer runs the backbone itself: a new AOI's forward pass
runs as the worker's `predict-aoi` task through the session launcher (worker/session.py), here in a fork of the
warm worker server, as under `make demo`. Each round draws a new ~1 km^2 AOI, starts its inference and waits
for the first predicted tile to be served (POST AOI -> tile PNG 200). In the same run, the same prediction
(same model, imagery and AOI, embedding cache included) is called in this process with `ml.inference.predict`,
the way the app did it before.

Rounds alternate between the two. Prints per-round figures, then the JSON line {"session_first_tile_s",
"in_process_s", "ratio", ...} (medians; ratio = session / in-process; worker_predict_s is the forward pass as
the worker timed it).
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import morecantile
from _review import bench_settings, emit, km2_square, log, start_app, wait_job

from pearl_pipelines.settings import REPO_ROOT, Settings

ROUNDS = 3
AOI_KM2 = 1.0
TILE_ZOOM = 16


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def first_tile(url: str, aoi: dict[str, Any], lon: float, lat: float) -> int:
    """GET the classes tile of the AOI's centre; its size in bytes."""
    tilejson = httpx.get(url + aoi["prediction"]["tilejson"]["classes"], timeout=30).json()
    tile = morecantile.tms.get("WebMercatorQuad").tile(lon, lat, TILE_ZOOM)
    href = tilejson["tiles"][0].format(z=tile.z, x=tile.x, y=tile.y)
    response = httpx.get(href if href.startswith("http") else url + href, timeout=60)
    response.raise_for_status()
    return len(response.content)


def session_round(url: str, lon: float, lat: float, n: int) -> tuple[float, float, bool, int]:
    """(seconds to the first tile, the worker's own forward-pass seconds, forked from the warm server, worker pid)."""
    started = time.perf_counter()
    created = httpx.post(
        f"{url}/api/projects/1/aois", json={"geometry": km2_square(lon, lat, AOI_KM2), "name": f"session {n}"}
    )
    created.raise_for_status()
    aoi_id = created.json()["id"]
    job = wait_job(url, httpx.post(f"{url}/api/projects/1/aois/{aoi_id}/inference", timeout=30).json()["id"])
    aoi = httpx.get(f"{url}/api/projects/1/aois/{aoi_id}", timeout=10).json()
    size = first_tile(url, aoi, lon, lat)
    seconds = time.perf_counter() - started
    found = re.search(r"predicted in ([\d.]+) s by (.+) \(pid (\d+)\)", job["message"])
    if found is None:
        raise RuntimeError(f"unexpected job message {job['message']!r}")
    log(f"  session round {n}: first tile ({size} B) after {seconds:.2f} s; {job['message']}")
    return seconds, float(found.group(1)), "fork" in found.group(2), int(found.group(3))


def in_process_round(settings: Settings, lon: float, lat: float, n: int, tmp: Path) -> float:
    """The same prediction called here: the project's model (base + current head), imagery, AOI and cache."""
    from shapely.geometry import shape

    from pearl_pipelines.ml.base_model import project_base_file
    from pearl_pipelines.ml.inference import predict
    from pearl_pipelines.ml.models import load_model
    from pearl_pipelines.ml.versions import ModelVersion
    from review_app.workspace import ProjectPaths, ProjectState, StateStore

    paths = ProjectPaths.of(settings.home_abs, 1)
    state = ProjectState.model_validate_json(paths.state.read_text())
    model = load_model(project_base_file(settings, paths.base_model_dir))
    version = ModelVersion.load(paths.version_dir(state.current_model or 0))
    model = model if version.needs_xy else version.to_model(model)
    started = time.perf_counter()
    predict(
        model,
        StateStore(settings.home_abs).imagery_path(1),
        tmp / f"out-{n}",
        aoi=shape(km2_square(lon, lat, AOI_KM2)),
        aoi_crs="EPSG:4326",
        embeddings_dir=tmp / f"cache-{n}",
        model_id=version.id,
    )
    seconds = time.perf_counter() - started
    log(f"  in-process round {n}: {seconds:.2f} s")
    return seconds


def main() -> None:
    from pearl_pipelines.worker.forkserver import WorkerServer

    # The app, the worker server and its forks run this checkout's code, as this script does.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    settings = bench_settings()
    log(f"bench home {settings.home_abs}; {os.cpu_count()} cores")
    session, local, worker_s, forked, pids = [], [], [], [], set()
    with WorkerServer(settings.home_abs) as worker, tempfile.TemporaryDirectory(prefix="bench-session-") as tmp:
        log(f"warm worker server up (log {worker.log_path})")
        url, app = start_app(settings)
        try:
            west, south, east, north = httpx.get(f"{url}/api/projects/1", timeout=10).json()["imagery"]["bounds"]
            lon0, lat0 = (west + east) / 2, (south + north) / 2
            step = 1.1 * math.sqrt(AOI_KM2) / 111.32  # degrees: each round's AOI is new, beside the last
            places = [(lon0 + (i - ROUNDS // 2) * step / math.cos(math.radians(lat0)), lat0) for i in range(ROUNDS)]
            # Rounds alternate (through the app, then here), so a change of machine load hits both alike.
            for n, (lon, lat) in enumerate(places, 1):
                seconds, predict_s, fork, pid = session_round(url, lon, lat, n)
                session.append(seconds)
                worker_s.append(predict_s)
                forked.append(fork)
                pids.add(pid)
                local.append(in_process_round(settings, lon, lat, n, Path(tmp)))
            if app.process is not None and app.process.pid in pids:
                raise RuntimeError("the forward pass ran in the web process")
        finally:
            app.stop()
    result = {
        "session_first_tile_s": median(session),
        "in_process_s": median(local),
        "ratio": median(session) / median(local),
        "ratio_of_rounds": median([a / b for a, b in zip(session, local, strict=True)]),  # robust to load swings
        "worker_predict_s": median(worker_s),
        "session_overhead_s": median(session) - median(worker_s),
        "session_first_round_s": session[0],
        "rounds": float(ROUNDS),
        "all_forked": float(all(forked)),
        "aoi_km2": AOI_KM2,
        "loadavg_1m": os.getloadavg()[0],
    }
    log(
        f"first tile through the worker {result['session_first_tile_s']:.2f} s vs in-process predict "
        f"{result['in_process_s']:.2f} s (ratio {result['ratio']:.2f})"
    )
    emit(result)


if __name__ == "__main__":
    main()
