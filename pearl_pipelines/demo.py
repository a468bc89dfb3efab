"""`make demo`: build the demo data, start the local services, run the main job, print the URLs.

Every service is started by this process and stopped by it on Ctrl-C (or SIGTERM), in reverse order.
The main job runs in Dagster (submitted through the webserver, like the review app's trigger): the
starter model when none is registered yet, then the demo region's regional refresh (imagery via the
STAC API, champion predictions, mosaic COG, STAC item, area per class).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from typing import Any

from tqdm import tqdm

from pearl_pipelines.geo.regions import build_region, load_regions
from pearl_pipelines.geo.stac_server import StacServer
from pearl_pipelines.services import dagster_dev, mlflow_server, review_app
from pearl_pipelines.settings import Settings
from pearl_pipelines.worker.forkserver import WorkerServer

DEMO_REGION = "demo"
STARTER_SCHEMA = "chesapeake9"
LOCATION = "pearl_pipelines"
REPOSITORY = "__repository__"


def ensure_regions(settings: Settings) -> None:
    """Generate every region of assets/regions that is not yet in the local catalog."""
    for region in load_regions(settings.assets_dir).values():
        if region.properties.synthetic is None:
            continue
        if not (settings.catalog_dir / region.name / "collection.json").exists():
            started = time.perf_counter()
            build_region(region, settings.catalog_dir, show_progress=True)
            print(f"  region {region.name} generated in {time.perf_counter() - started:.1f} s")


def starter_registered(tracking_uri: str, schema_id: str = STARTER_SCHEMA) -> bool:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient(tracking_uri).get_model_version_by_alias(f"pearl-starter-{schema_id}", "champion")
    except MlflowException:
        return False
    return True


def run_job(client: Any, job_name: str, *, tags: dict[str, str] | None = None, poll: float = 2.0) -> str:
    """Submit a job through the webserver and wait for it; returns the final status name."""
    from dagster_graphql import DagsterGraphQLClientError

    run_id = client.submit_job_execution(
        job_name, repository_location_name=LOCATION, repository_name=REPOSITORY, tags=tags or {}
    )
    started = time.perf_counter()
    status = "QUEUED"
    with tqdm(desc=f"  {job_name}", bar_format="{desc}: {postfix} [{elapsed}]") as bar:
        while True:
            try:
                status = client.get_run_status(run_id).name
            except DagsterGraphQLClientError:
                status = "UNKNOWN"
            bar.set_postfix_str(status.lower())
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                break
            time.sleep(poll)
    print(f"  {job_name}: {status.lower()} in {time.perf_counter() - started:.0f} s (run {run_id})")
    return status


def run_demo(settings: Settings, keep_running: bool = True) -> None:
    from dagster_graphql import DagsterGraphQLClient

    settings.home_abs.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # SIGTERM unwinds the ExitStack like Ctrl-C
    print(f"PEARL_HOME = {settings.home_abs}")
    print("1/3 demo regions")
    ensure_regions(settings)
    with contextlib.ExitStack() as services:
        print("2/3 local services")
        stac = services.enter_context(StacServer(settings.catalog_dir, settings.stac_port))
        print(f"  STAC API     {stac.url}")
        mlflow = mlflow_server(settings.home_abs, settings.mlflow_port)
        services.callback(mlflow.stop)  # registered first: a start that fails half-way is cleaned up too
        mlflow.start(timeout=120)
        print(f"  MLflow       {settings.resolved_mlflow_uri}")
        worker = WorkerServer(settings.home_abs)  # warm worker: Pipes tasks fork it instead of importing torch
        services.callback(worker.stop)
        worker.start()
        print(f"  worker       warm, {worker.path}")
        dagster = dagster_dev(settings)
        services.callback(dagster.stop)
        dagster.start(timeout=180)
        print(f"  Dagster      {dagster.url}")
        review = review_app(settings)
        services.callback(review.stop)
        review.start(timeout=120)
        review_url = f"http://{settings.review_host}:{settings.review_port}/"
        print(f"  review app   {review_url}")
        print("3/3 main job (Dagster)")
        client = DagsterGraphQLClient(dagster.host, port_number=dagster.port, timeout=60)
        if not starter_registered(settings.resolved_mlflow_uri):
            run_job(client, "starter_model_job")
        status = run_job(client, "regional_refresh_job", tags={"dagster/partition": DEMO_REGION})
        maps = settings.home_abs / "maps" / DEMO_REGION
        print(f"\nDemo ready ({status.lower()}): land-cover map of {DEMO_REGION} under {maps}")
        print(f"  review app   {review_url}")
        print(f"  Dagster UI   {dagster.url}/assets/landcover_map")
        print(f"  MLflow UI    {settings.resolved_mlflow_uri}/#/models")
        print(f"  STAC API     {stac.url}/collections/{DEMO_REGION}/items")
        if keep_running:
            print("Ctrl-C stops every service started here.")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                print("\nstopping services...")
