"""A new AOI's first map tile and its whole prediction through the compute backend, next to the same prediction
in-process.

The review app (uvicorn on 127.0.0.1, real HTTP and its websocket, as the browser) no longer runs the backbone
itself: a new AOI's forward pass runs as the worker's `predict-aoi` task through the session launcher
(worker/session.py), here in a fork of the warm worker server, as under `make demo`. The app's base model is the
registered starter `pearl-starter-chesapeake9` (`--proxy-fcn`: a PEARL-sized FCN). Each round draws a new
~1 km^2 AOI, POSTs its inference and, from that POST:

- `first_tile_s`: until the first tile of the AOI's centre is served (200, non-empty body) from the first
  layer announced for the AOI (the first websocket `prediction_updated` for it, whatever it is: a partial
  layer, `partial: true`, where the app sends one before the job ends, else the final one);
- `whole_aoi_s`: until the inference job is done (its websocket `job` event, state done).

In the same run, the same prediction (same model, imagery and AOI, embedding cache included) is called in
this process with `ml.inference.predict`, the way the app did it before. Rounds alternate between the two.
Last line: JSON {"first_tile_s", "whole_aoi_s", "in_process_s", "ratio" (whole / in-process), "partial_layers"
(rounds whose first layer was partial), ..., "model", "machine"} (medians).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import morecantile
from _review import arguments, bench_settings, emit, km2_square, log, run_info, start_app
from websockets.sync.client import connect

from pearl_pipelines.settings import REPO_ROOT, Settings

ROUNDS = 3
AOI_KM2 = 1.0
TILE_ZOOM = 16


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def first_tile(url: str, tilejson_href: str, lon: float, lat: float, timeout: float = 60) -> int:
    """GET the classes tile of the AOI's centre from a layer's TileJSON until it is served (200, non-empty)."""
    tilejson = httpx.get(url + tilejson_href, timeout=30).json()
    tile = morecantile.tms.get("WebMercatorQuad").tile(lon, lat, TILE_ZOOM)
    href = tilejson["tiles"][0].format(z=tile.z, x=tile.x, y=tile.y)
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(href if href.startswith("http") else url + href, timeout=60)
        if response.status_code == 200 and response.content:
            return len(response.content)
        if time.monotonic() > deadline:
            raise TimeoutError(f"tile {href}: {response.status_code} with {len(response.content)} B after {timeout} s")
        time.sleep(0.05)


@dataclass
class SessionRound:
    first_tile_s: float
    whole_aoi_s: float
    first_partial: bool
    layers: int
    worker_predict_s: float
    forked: bool
    pid: int


def session_round(url: str, ws: Any, lon: float, lat: float, n: int) -> SessionRound:
    """One new AOI through the app: POST inference, then the websocket's layers and the job's end."""
    created = httpx.post(
        f"{url}/api/projects/1/aois", json={"geometry": km2_square(lon, lat, AOI_KM2), "name": f"session {n}"}
    )
    created.raise_for_status()
    aoi_id = created.json()["id"]
    started = time.perf_counter()
    job_id = httpx.post(f"{url}/api/projects/1/aois/{aoi_id}/inference", timeout=30).json()["id"]
    first_s = whole_s = None
    first_partial, layers, size = False, 0, 0
    deadline = time.monotonic() + 1800
    while first_s is None or whole_s is None:
        event = json.loads(ws.recv(timeout=max(1.0, deadline - time.monotonic())))
        kind = event.get("type")
        if kind == "error":
            raise RuntimeError(event.get("message"))
        if kind == "job" and event.get("id") == job_id:
            if event.get("state") == "failed":
                raise RuntimeError(f"inference failed: {event.get('error')}")
            if event.get("state") == "done":
                whole_s = time.perf_counter() - started
        elif kind == "prediction_updated" and event.get("aoi_id") == aoi_id:
            layers += 1
            if first_s is None:
                first_partial = bool(event.get("partial"))
                size = first_tile(url, event["tilejson"]["classes"], lon, lat)
                first_s = time.perf_counter() - started
        if time.monotonic() > deadline:
            raise TimeoutError(f"AOI {aoi_id}: no layer or no end of job {job_id}")
    job = httpx.get(f"{url}/api/jobs/{job_id}", timeout=10).json()
    found = re.search(r"predicted in ([\d.]+) s by (.+) \(pid (\d+)\)", job["message"])
    if found is None:
        raise RuntimeError(f"unexpected job message {job['message']!r}")
    log(
        f"  session round {n}: first tile ({size} B, {'partial' if first_partial else 'final'} layer) after "
        f"{first_s:.2f} s, whole AOI {whole_s:.2f} s ({layers} layer event(s) by then); {job['message']}"
    )
    return SessionRound(
        first_s, whole_s, first_partial, layers, float(found.group(1)), "fork" in found.group(2), int(found.group(3))
    )


def in_process_round(settings: Settings, lon: float, lat: float, n: int, tmp: Path) -> float:
    """The same prediction called here: the project's model (base + current head), imagery, AOI and cache."""
    from shapely.geometry import shape

    from pearl_pipelines.labels.store import LabelStore
    from pearl_pipelines.ml.base_model import project_base_file
    from pearl_pipelines.ml.inference import predict
    from pearl_pipelines.ml.models import load_model
    from pearl_pipelines.ml.versions import ModelVersion
    from review_app.workspace import StateStore

    states = StateStore(settings.home_abs, LabelStore(settings.resolved_label_store_url))
    paths, state = states.paths(1), states.get(1)
    model = load_model(project_base_file(settings, paths.base_model_dir))
    version = ModelVersion.load(paths.version_dir(state.current_model or 0))
    model = model if version.needs_xy else version.to_model(model)
    started = time.perf_counter()
    predict(
        model,
        states.imagery_path(1),
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

    args = arguments(__doc__.splitlines()[0])
    # The app, the worker server and its forks run this checkout's code, as this script does.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    settings = bench_settings(proxy=args.proxy_fcn)
    info = run_info(settings)
    log(f"bench home {settings.home_abs}; {os.cpu_count()} cores")
    rounds: list[SessionRound] = []
    local: list[float] = []
    with WorkerServer(settings.home_abs) as worker, tempfile.TemporaryDirectory(prefix="bench-session-") as tmp:
        log(f"warm worker server up (log {worker.log_path})")
        url, app = start_app(settings)
        try:
            west, south, east, north = httpx.get(f"{url}/api/projects/1", timeout=10).json()["imagery"]["bounds"]
            lon0, lat0 = (west + east) / 2, (south + north) / 2
            step = 1.1 * math.sqrt(AOI_KM2) / 111.32  # degrees: each round's AOI is new, beside the last
            places = [(lon0 + (i - ROUNDS // 2) * step / math.cos(math.radians(lat0)), lat0) for i in range(ROUNDS)]
            with connect(f"ws://127.0.0.1:{url.rsplit(':', 1)[1]}/api/projects/1/ws") as ws:
                while json.loads(ws.recv(timeout=30)).get("type") != "hello":
                    pass
                # Rounds alternate (through the app, then here), so a change of machine load hits both alike.
                for n, (lon, lat) in enumerate(places, 1):
                    rounds.append(session_round(url, ws, lon, lat, n))
                    local.append(in_process_round(settings, lon, lat, n, Path(tmp)))
            if app.process is not None and app.process.pid in {r.pid for r in rounds}:
                raise RuntimeError("the forward pass ran in the web process")
        finally:
            app.stop()
    first = [r.first_tile_s for r in rounds]
    whole = [r.whole_aoi_s for r in rounds]
    worker_s = [r.worker_predict_s for r in rounds]
    result = {
        "first_tile_s": median(first),
        "whole_aoi_s": median(whole),
        "in_process_s": median(local),
        "ratio": median(whole) / median(local),
        "ratio_of_rounds": median([a / b for a, b in zip(whole, local, strict=True)]),  # robust to load swings
        "first_tile_ratio": median(first) / median(local),
        "worker_predict_s": median(worker_s),
        "session_overhead_s": median(whole) - median(worker_s),
        "first_round_first_tile_s": first[0],
        "first_round_whole_aoi_s": whole[0],
        "partial_layers": sum(r.first_partial for r in rounds),
        "rounds": ROUNDS,
        "all_forked": all(r.forked for r in rounds),
        "aoi_km2": AOI_KM2,
        "loadavg_1m": os.getloadavg()[0],
        **info,
    }
    log(
        f"first tile {result['first_tile_s']:.2f} s, whole AOI {result['whole_aoi_s']:.2f} s through the worker "
        f"({result['partial_layers']}/{ROUNDS} rounds with a partial first layer) vs in-process predict "
        f"{result['in_process_s']:.2f} s (ratio whole/in-process {result['ratio']:.2f})"
    )
    emit(result)


if __name__ == "__main__":
    main()
