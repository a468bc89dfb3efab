"""Shared setup of the review-app benches: a bench PEARL_HOME, the demo region, a model, the app under uvicorn.

The bench home is PEARL_HOME/bench/<name>-starter: its own label DB and review state (the mapper's demo project
is never touched), the demo collection linked from PEARL_HOME/catalog (generated at full size when missing),
and the registered starter models (`pearl-starter-chesapeake9` U-Net + wide embedding, the app's base model,
and `pearl-starter-chesapeake4`) linked from PEARL_HOME/models, registered from the shipped weights first when
missing (`pearl starter --schema all --shipped`, as `make demo` does). With `--proxy-fcn` (`proxy=True`) the
home is PEARL_HOME/bench/<name>-proxy-fcn and the model a PEARL-sized FCN (five 3x3 convs, 64 features;
untrained: latency does not depend on weights) with a replay set of 500 pixels per class, as starters have.
MLflow and Dagster ports point at nothing, so no run or label submission leaves the bench.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as `python bench/NAME.py`

from pearl_pipelines.services import Service, review_app
from pearl_pipelines.settings import Settings, get_settings

DEMO = "demo"
BASE_MODEL = "models:/pearl-starter-chesapeake9@starter"


def log(message: str) -> None:
    print(message, flush=True)


def emit(result: dict[str, Any]) -> None:
    """The machine-readable result: always the last line of a bench's output."""
    from _common import emit as emit_common

    emit_common(result)


def model_name(settings: Settings) -> str:
    """The model the bench's app runs: "pearl-starter-chesapeake9 v1" or "proxy-fcn"."""
    from _common import PROXY, starter_label

    return PROXY if settings.home_abs.name.endswith(PROXY) else starter_label("chesapeake9")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def bench_settings(name: str = "review", proxy: bool = False) -> Settings:
    """The bench home PEARL_HOME/bench/<name>-starter (or -proxy-fcn), with the demo region and a model in place."""
    from _common import PROXY

    from pearl_pipelines.geo.regions import load_regions
    from pearl_pipelines.synthetic.regions import build_region

    main = get_settings()
    if not (main.catalog_dir / DEMO / "collection.json").is_file():
        log(f"generating the demo region into {main.catalog_dir} (first run only) ...")
        build_region(load_regions(main.assets_dir)[DEMO], main.catalog_dir, show_progress=True)
    home = main.home_abs / "bench" / f"{name}-{PROXY if proxy else 'starter'}"
    (home / "models").mkdir(parents=True, exist_ok=True)
    if not (home / "catalog").exists():
        (home / "catalog").symlink_to(main.catalog_dir)
    settings = Settings(home=home, mlflow_port=free_port(), dagster_port=free_port())
    if proxy:
        _ensure_proxy(settings)
    else:
        _link_starters(main, settings)
    return settings


def _link_starters(main: Settings, settings: Settings) -> None:
    """Link the registered starters (registered first when missing) into the bench home's models."""
    from _common import ensure_starters, starter_label

    for schema_id, folder in ensure_starters(main).items():
        link = settings.models_dir / folder.name
        if not link.exists():
            link.symlink_to(folder.resolve(), target_is_directory=True)
        log(f"model: {starter_label(schema_id, main)} ({folder.name}) from {folder}")


def _ensure_proxy(settings: Settings) -> None:
    from pearl_pipelines.ml.base_model import local_model_dirs
    from pearl_pipelines.ml.models import MODEL_FILE

    for folder in local_model_dirs(BASE_MODEL, settings):
        if (folder / MODEL_FILE).is_file():
            log(f"model: proxy-fcn (asked for with --proxy-fcn) from {folder}")
            return
    import torch

    from pearl_pipelines.classes import load_schema
    from pearl_pipelines.geo.catalog import load_collection_items
    from pearl_pipelines.ml.data import read_item
    from pearl_pipelines.ml.models import LandcoverModel, ModelSpec, save_model
    from pearl_pipelines.ml.replay import build_replay_set
    from pearl_pipelines.ml.starter import starter_dir

    torch.manual_seed(0)
    model = LandcoverModel(ModelSpec(arch="fcn", schema=load_schema("chesapeake9"), embed_dim=64)).eval()
    folder = starter_dir(settings, "chesapeake9", "fcn")
    log("model: proxy-fcn (asked for with --proxy-fcn): a PEARL-sized FCN (64 features, untrained) + replay set ...")
    # A starter's replay set (500 pixels per class) is part of every retrain: the bench must pay for it too.
    item = read_item(sorted(load_collection_items(settings.catalog_dir, DEMO), key=lambda i: i.id)[0], "chesapeake9")
    build_replay_set(model, [item.image], [item.labels], per_class=500).save(folder / "replay.npz")
    save_model(model, folder / MODEL_FILE, extra={"bench": True})
    log(f"  saved to {folder}")


def start_app(settings: Settings, extra_env: dict[str, str] | None = None) -> tuple[str, Service]:
    port = free_port()
    env = {"PEARL_MLFLOW_PORT": str(settings.mlflow_port), "PEARL_DAGSTER_PORT": str(settings.dagster_port)}
    env.update(extra_env or {})
    service = review_app(settings, port=port, env=env).start(timeout=120)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        project = httpx.get(f"{url}/api/projects/1", timeout=10).json()
        if project["imagery"]["state"] == "ready" and project["model"]["ready"]:
            return url, service
        if project["imagery"]["state"] == "error":
            service.stop()
            raise RuntimeError(project["imagery"]["message"])
        time.sleep(0.5)
    service.stop()
    raise TimeoutError("the review app did not get its imagery and model ready")


def wait_job(url: str, job_id: str, timeout: float = 1800) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/api/jobs/{job_id}", timeout=10).json()
        if job["state"] in ("done", "failed"):
            if job["state"] == "failed":
                raise RuntimeError(f"{job['kind']} failed: {job['error']}")
            return job
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} did not finish")


def km2_square(lon: float, lat: float, km2: float) -> dict[str, Any]:
    """A lon/lat square of `km2` area around (lon, lat)."""
    import math

    half_m = math.sqrt(km2) * 1000 / 2
    dlat = half_m / 111_320
    dlon = half_m / (111_320 * math.cos(math.radians(lat)))
    ring = [[lon - dlon, lat - dlat], [lon + dlon, lat - dlat], [lon + dlon, lat + dlat], [lon - dlon, lat + dlat]]
    return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}


def ensure_predicted_aoi(url: str, km2: float = 1.0) -> dict[str, Any]:
    """An AOI of `km2` at the imagery's centre, predicted with embeddings cached (reused across runs)."""
    project = httpx.get(f"{url}/api/projects/1", timeout=10).json()
    for aoi in project["aois"]:
        if abs(aoi["area_km2"] - km2) < 0.05 and aoi["prediction"] and aoi["prediction"]["embeddings"]:
            return aoi
    west, south, east, north = project["imagery"]["bounds"]
    geometry = km2_square((west + east) / 2, (south + north) / 2, km2)
    aoi = httpx.post(f"{url}/api/projects/1/aois", json={"geometry": geometry, "name": "bench"}, timeout=30)
    aoi.raise_for_status()
    aoi_id = aoi.json()["id"]
    log(f"predicting a {km2:g} km^2 AOI once (embeddings are cached for the next runs) ...")
    started = time.perf_counter()
    job = httpx.post(f"{url}/api/projects/1/aois/{aoi_id}/inference", timeout=30).json()
    wait_job(url, job["id"])
    log(f"  inference took {time.perf_counter() - started:.1f} s")
    return httpx.get(f"{url}/api/projects/1/aois/{aoi_id}", timeout=10).json()


def reference_points(
    settings: Settings,
    bounds: list[float],
    class_names: list[str],
    per_class: int,
    seed: int,
    within: dict[str, Any] | None = None,
) -> list[tuple[str, float, float]]:
    """(class, lon, lat) of random pixels inside lon/lat `bounds` (and the lon/lat geometry `within`, e.g. the AOI:
    the bounds reprojected to the imagery's grid reach a little beyond it) whose reference label is that class."""
    import numpy as np
    import rasterio
    from rasterio.warp import transform, transform_bounds
    from shapely.geometry import Point, shape

    from pearl_pipelines.classes import load_schema
    from pearl_pipelines.geo.catalog import load_collection_items
    from pearl_pipelines.geo.regions import label_asset_key

    schema = load_schema("chesapeake9")
    rng = np.random.default_rng(seed)
    found: dict[str, list[tuple[float, float]]] = {name: [] for name in class_names}
    for item in load_collection_items(settings.catalog_dir, DEMO):
        with rasterio.open(item.assets[label_asset_key("chesapeake9")].get_absolute_href()) as src:
            left, bottom, right, top = transform_bounds("EPSG:4326", src.crs, *bounds)
            labels = src.read(1)
            rows, cols = np.indices(labels.shape)
            xs, ys = src.transform @ (cols + 0.5, rows + 0.5)
            inside = (xs > left) & (xs < right) & (ys > bottom) & (ys < top)
            for name in class_names:
                pick = np.flatnonzero(inside & (labels == schema.index(name)))
                for i in rng.choice(pick, min(len(pick), per_class * 4), replace=False) if len(pick) else []:
                    lon, lat = transform(src.crs, "EPSG:4326", [xs.flat[i]], [ys.flat[i]])
                    found[name].append((lon[0], lat[0]))
    points = []
    if within is not None:
        area = shape(within)
        found = {name: [p for p in places if area.contains(Point(*p))] for name, places in found.items()}
    for name, places in found.items():
        if len(places) < per_class:
            raise RuntimeError(f"fewer than {per_class} reference pixels of {name} in the AOI")
        for j in rng.choice(len(places), per_class, replace=False):
            points.append((name, *places[j]))
    return points


def run_info(settings: Settings) -> dict[str, Any]:
    """{"model", "machine"} of an app bench, the machine line printed (the app's forward pass runs fp32)."""
    from _common import log_machine

    info = log_machine(precision="fp32")
    name = model_name(settings)
    log(f"model: {name} (the app's base model)")
    return {"model": name, "machine": info}


def arguments(description: str) -> Any:
    """An app bench's parser (with --proxy-fcn), parsed."""
    import argparse

    from _common import model_arguments

    return model_arguments(argparse.ArgumentParser(description=description)).parse_args()
