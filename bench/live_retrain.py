"""Live retrain latency through the real app: labels posted -> retrain -> "prediction updated" -> first new tile.

Drives the review app over HTTP and its websocket exactly like the browser does, on a 1 km^2 AOI whose
embeddings were cached by one inference (reused across runs). Each round posts four point labels (two
reference classes, new places each round), asks for a retrain of the AOI, waits for the websocket's
`prediction_updated`, fetches the new layer's TileJSON and its first tile, and stops the clock there.
The app computes metrics (grouped CV) after announcing the layer; a round waits for the job to end
before the next one starts, outside the clock.

Last line: {"median_s"} (target < 2 s), plus the fastest and slowest round.
"""

from __future__ import annotations

import json
import statistics
import time

import httpx
import morecantile
from _review import bench_settings, emit, ensure_predicted_aoi, log, reference_points, start_app
from websockets.sync.client import connect

ROUNDS = 7
CLASSES = ["water", "tree_canopy"]


def wait_event(ws, predicate, timeout: float = 60.0) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = json.loads(ws.recv(timeout=deadline - time.monotonic()))
        if event.get("type") == "error":
            raise RuntimeError(event["message"])
        if event.get("type") == "job" and event.get("state") == "failed":
            raise RuntimeError(event.get("error"))
        if predicate(event):
            return event
    raise TimeoutError("no matching event")


def main() -> None:
    settings = bench_settings()
    url, app = start_app(settings)
    try:
        aoi = ensure_predicted_aoi(url, 1.0)
        ring = aoi["geometry"]["coordinates"][0]
        bounds = [min(p[0] for p in ring), min(p[1] for p in ring), max(p[0] for p in ring), max(p[1] for p in ring)]
        center = ((bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2)
        tile = morecantile.tms.get("WebMercatorQuad").tile(*center, 16)
        log(f"AOI {aoi['id']}: {aoi['area_km2']:.2f} km^2, {ROUNDS} rounds of 4 labels + retrain")
        client = httpx.Client(base_url=url, timeout=30)
        totals, retrain_only = [], []
        with connect(f"ws://127.0.0.1:{url.rsplit(':', 1)[1]}/api/projects/1/ws") as ws:
            wait_event(ws, lambda e: e["type"] == "hello")
            for n in range(ROUNDS):
                labels = reference_points(settings, bounds, CLASSES, per_class=2, seed=100 + n)
                started = time.perf_counter()
                for name, lon, lat in labels:
                    response = client.post(
                        "/api/projects/1/labels",
                        json={"class_name": name, "geometry": {"type": "Point", "coordinates": [lon, lat]}},
                    )
                    response.raise_for_status()
                clicked = time.perf_counter()
                job = client.post("/api/projects/1/retrain", json={"aoi_id": aoi["id"]}).json()
                update = wait_event(ws, lambda e: e["type"] == "prediction_updated" and e["aoi_id"] == aoi["id"])
                tilejson = client.get(update["tilejson"]["classes"]).json()
                first = client.get(tilejson["tiles"][0].format(z=tile.z, x=tile.x, y=tile.y))
                first.raise_for_status()
                done = time.perf_counter()
                totals.append(done - started)
                retrain_only.append(done - clicked)
                log(
                    f"round {n + 1}: labels {clicked - started:.3f} s, retrain -> new tile {done - clicked:.3f} s, "
                    f"layer v{update['version']} ({len(first.content)} B tile)"
                )
                wait_event(
                    ws, lambda e, job_id=job["id"]: e["type"] == "job" and e["id"] == job_id and e["state"] == "done"
                )
        emit(
            {
                "median_s": statistics.median(totals),
                "min_s": min(totals),
                "max_s": max(totals),
                "median_click_to_tile_s": statistics.median(retrain_only),
            }
        )
    finally:
        app.stop()


if __name__ == "__main__":
    main()
