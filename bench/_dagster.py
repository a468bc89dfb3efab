"""Shared setup of the Dagster benches: a bench home under PEARL_HOME, the local services, a starter model.

The benches run the real local deployment: the STAC API, an MLflow server and `dagster dev` (with
PEARL_DAGSTER_AUTOMATION=off, so no sensor run competes with the runs a bench submits), all on free
ports, in `PEARL_HOME/bench/dagster-starter` (the catalog is shared with PEARL_HOME). Regions and the starter
models are created on first use and reused after: the starters `make demo` registers
(`pearl starter --schema all --shipped` into the bench's MLflow: `pearl-starter-chesapeake9`, U-Net + wide
embedding, and `pearl-starter-chesapeake4`, FCN). With `--proxy-fcn` the home is
`PEARL_HOME/bench/dagster-proxy-fcn` and the champion a PEARL-sized FCN trained briefly through
`starter_model_job` (the benches then time the pipeline, not the model users run).
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as `python bench/NAME.py`

from pearl_pipelines.settings import get_settings

STARTER = "pearl-starter-chesapeake9"
LOCATION, REPOSITORY = "pearl_pipelines", "__repository__"
# A PEARL-sized FCN (five 3x3 convs, 64 features), trained briefly: the benches time the pipeline, not quality.
BENCH_STARTER = {
    "train_regions": ["train-a"],
    "holdout_regions": ["holdout"],
    "arch": "fcn",
    "embed_dim": 64,
    "epochs": 2,
    "steps_per_epoch": 20,
    "batch_size": 4,
    "patch_size": 128,
    "replay_per_class": 200,
}
NEEDED_REGIONS = ("demo", "train-a", "holdout")

_RUN_TIMES = """
query RunTimes($runId: ID!) {
  runOrError(runId: $runId) { __typename ... on Run { status creationTime startTime endTime } }
}
"""


def log(message: str) -> None:
    print(message, flush=True)


def emit(result: dict[str, Any]) -> None:
    """The machine-readable result: always the last line of a bench's output."""
    from _common import emit as emit_common

    emit_common(result)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Bench:
    home: Path
    mlflow_uri: str
    dagster_port: int
    client: Any  # DagsterGraphQLClient

    def submit(self, job: str, *, run_config: dict | None = None, tags: dict | None = None) -> str:
        return self.client.submit_job_execution(
            job, repository_location_name=LOCATION, repository_name=REPOSITORY, run_config=run_config, tags=tags
        )

    def wait(self, run_id: str, timeout: float = 3600, poll: float = 0.1) -> dict[str, Any]:
        """Poll until the run ends; returns its status and Dagster's creation/start/end times (epoch s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.client._execute(_RUN_TIMES, {"runId": run_id})["runOrError"]
            if run.get("status") in ("SUCCESS", "FAILURE", "CANCELED"):
                if run["status"] != "SUCCESS":
                    raise RuntimeError(f"run {run_id} ended {run['status']}; see the Dagster UI or dagster-dev.log")
                return run
            time.sleep(poll)
        raise TimeoutError(f"run {run_id} did not finish in {timeout:.0f} s")


def ensure_regions(catalog_dir: Path) -> None:
    from pearl_pipelines.geo.regions import load_regions
    from pearl_pipelines.synthetic.regions import build_region

    regions = load_regions(get_settings().assets_dir)
    for name in NEEDED_REGIONS:
        if not (catalog_dir / name / "collection.json").is_file():
            started = time.perf_counter()
            build_region(regions[name], catalog_dir, show_progress=True)
            log(f"region {name} generated in {time.perf_counter() - started:.1f} s")


def has_champion(uri: str) -> bool:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient(uri).get_model_version_by_alias(STARTER, "champion")
    except MlflowException:
        return False
    return True


@contextlib.contextmanager
def bench_services(name: str, proxy: bool = False) -> Iterator[Bench]:
    """Services for a bench (stopped on exit), with the registered starters (or, with `proxy`, a bench FCN)."""
    from dagster_graphql import DagsterGraphQLClient

    from pearl_pipelines.geo.stac_server import StacServer
    from pearl_pipelines.services import dagster_dev, mlflow_server
    from pearl_pipelines.worker.forkserver import WorkerServer

    root = get_settings().home_abs
    home = root / "bench" / f"dagster-{'proxy-fcn' if proxy else 'starter'}"
    home.mkdir(parents=True, exist_ok=True)
    ensure_regions(root / "catalog")
    if not (home / "catalog").exists():
        (home / "catalog").symlink_to(root / "catalog", target_is_directory=True)
    stac_port, mlflow_port, dagster_port = free_port(), free_port(), free_port()
    os.environ.update(
        {
            "PEARL_HOME": str(home),
            "PEARL_STAC_PORT": str(stac_port),
            "PEARL_MLFLOW_PORT": str(mlflow_port),
            "PEARL_DAGSTER_AUTOMATION": "off",
        }
    )
    os.environ.pop("PEARL_MLFLOW_TRACKING_URI", None)
    get_settings.cache_clear()
    with contextlib.ExitStack() as stack:
        log(f"[{name}] services under {home}")
        stack.enter_context(StacServer(root / "catalog", stac_port))
        mlflow = mlflow_server(home, mlflow_port)
        stack.callback(mlflow.stop)
        mlflow.start(timeout=180)
        worker = WorkerServer(home)  # warm worker, as `make demo` runs it
        stack.callback(worker.stop)
        worker.start()
        dagster = dagster_dev(get_settings(), port=dagster_port)
        stack.callback(dagster.stop)
        started = time.perf_counter()
        dagster.start(timeout=300)
        log(f"[{name}] dagster dev answered after {time.perf_counter() - started:.1f} s")
        bench = Bench(
            home,
            f"http://127.0.0.1:{mlflow_port}",
            dagster_port,
            DagsterGraphQLClient("127.0.0.1", port_number=dagster_port),
        )
        if proxy and not has_champion(bench.mlflow_uri):
            log(f"[{name}] proxy-fcn (--proxy-fcn): training a PEARL-sized FCN through starter_model_job ...")
            started = time.perf_counter()
            bench.wait(
                bench.submit("starter_model_job", run_config={"ops": {"starter_model": {"config": BENCH_STARTER}}})
            )
            log(f"[{name}] proxy-fcn registered in {time.perf_counter() - started:.1f} s")
        elif not proxy:
            from _common import ensure_starters

            ensure_starters(get_settings())  # registers into this bench's MLflow (PEARL_MLFLOW_PORT) if missing
        yield bench


def model_name(bench: Bench, proxy: bool) -> str:
    """The champion the bench's runs map with: "pearl-starter-chesapeake9 v1" or "proxy-fcn v1"."""
    from mlflow import MlflowClient

    version = MlflowClient(bench.mlflow_uri).get_model_version_by_alias(STARTER, "champion").version
    return f"proxy-fcn v{version}" if proxy else f"{STARTER} v{version}"


def run_info(bench: Bench, proxy: bool) -> dict[str, Any]:
    """{"model", "machine"} of a Dagster bench, the machine line printed."""
    from _common import log_machine

    info = log_machine(precision="fp32")
    name = model_name(bench, proxy)
    log(f"model: {name} (champion of {STARTER} in the bench's MLflow)")
    return {"model": name, "machine": info}


def arguments(description: str) -> Any:
    import argparse

    from _common import model_arguments

    return model_arguments(argparse.ArgumentParser(description=description)).parse_args()


def utm_box_lonlat(region_name: str, offset_m: tuple[float, float], size_m: float) -> Any:
    """A size_m x size_m square (in the region's UTM grid, offset from its north-west corner) as a lon/lat polygon."""
    from rasterio.warp import transform_geom
    from shapely.geometry import box, mapping, shape

    from pearl_pipelines.geo.regions import load_regions

    grid = load_regions(get_settings().assets_dir)[region_name].properties.synthetic
    assert grid is not None
    x0, y0 = grid.origin[0] + offset_m[0], grid.origin[1] - offset_m[1]
    square = box(x0, y0 - size_m, x0 + size_m, y0)
    return shape(transform_geom(f"EPSG:{grid.epsg}", "EPSG:4326", mapping(square)))


def reference_labels(region_name: str, aoi: Any, n: int, seed: int) -> list[tuple[str, Any]]:
    """n points inside the AOI, labelled from the region's reference rasters (a careful mapper's clicks)."""
    from pearl_pipelines.synthetic.regions import reference_points

    return reference_points(get_settings().catalog_dir, region_name, aoi, n, seed=seed)
