"""`make demo`: build the demo data, start the local services, run the main job, print the URLs.

Every service is started by this process and stopped by it on Ctrl-C (or SIGTERM), in reverse order.
The main job runs in Dagster (submitted through the webserver, like the review app's trigger), in the order
of `first_run_plan`: the review app's model first (the 9-class starter: its shipped weights registered, see
`ml.shipped`, or trained where none ship), then the demo region's regional refresh (imagery via the STAC API,
champion predictions, mosaic COG, STAC item, area per class), then the 4-class starter. Later runs only
refresh the map.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from pearl_pipelines.geo.regions import load_regions
from pearl_pipelines.geo.stac_server import StacServer
from pearl_pipelines.ml.refs import starter_model_name
from pearl_pipelines.ml.shipped import shipped_path
from pearl_pipelines.ml.starter import DEFAULT_ARCH
from pearl_pipelines.services import dagster_dev, mlflow_server, review_app
from pearl_pipelines.settings import Settings
from pearl_pipelines.synthetic.regions import build_region
from pearl_pipelines.worker.forkserver import WorkerServer

DEMO_REGION = "demo"
STARTER_SCHEMAS = ("chesapeake9", "chesapeake4")  # the review app's demo project and the demo map use the first
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


def starter_registered(tracking_uri: str, schema_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    from pearl_pipelines.ml.lineage import mlflow_client

    try:
        mlflow_client(tracking_uri).get_model_version_by_alias(starter_model_name(schema_id), "champion")
    except MlflowException:
        return False
    return True


_RUN_LOGS = """
query RunLogs($runId: ID!, $cursor: String) {
  logsForRun(runId: $runId, afterCursor: $cursor) {
    ... on EventConnection { cursor events { __typename ... on MessageEvent { message } } }
  }
}
"""


def latest_log_message(client: Any, run_id: str, cursor: str | None) -> tuple[str | None, str | None]:
    """The newest user log line of a run after `cursor` (e.g. a training epoch), and the new cursor."""
    from dagster_graphql import DagsterGraphQLClientError

    try:
        logs = client._execute(_RUN_LOGS, {"runId": run_id, "cursor": cursor}).get("logsForRun") or {}
    except DagsterGraphQLClientError:
        return None, cursor
    messages = [e["message"] for e in logs.get("events", []) if e.get("__typename") == "LogMessageEvent"]
    return (messages[-1] if messages else None), logs.get("cursor", cursor)


def run_job(
    client: Any,
    job_name: str,
    *,
    tags: dict[str, str] | None = None,
    run_config: dict[str, Any] | None = None,
    label: str | None = None,
    poll: float = 2.0,
) -> str:
    """Submit a job through the webserver and wait for it, showing its status and latest log line."""
    from dagster_graphql import DagsterGraphQLClientError

    label = label or job_name
    run_id = client.submit_job_execution(
        job_name,
        repository_location_name=LOCATION,
        repository_name=REPOSITORY,
        run_config=run_config or {},
        tags=tags or {},
    )
    started = time.perf_counter()
    status, cursor, message = "QUEUED", None, ""
    with tqdm(desc=f"  {label}: queued", bar_format="{desc} [{elapsed}]") as bar:
        while True:
            try:
                status = client.get_run_status(run_id).name
            except DagsterGraphQLClientError:
                status = "UNKNOWN"
            latest, cursor = latest_log_message(client, run_id, cursor)
            message = latest or message
            bar.set_description_str(f"  {label}: {status.lower()}" + (f" - {message}" if message else ""))
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                break
            time.sleep(poll)
    print(f"  {label}: {status.lower()} in {time.perf_counter() - started:.0f} s (run {run_id})")
    return status


@dataclass(frozen=True)
class DemoStep:
    """One Dagster run of the demo's main job."""

    label: str
    job: str
    run_config: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def starter_step(settings: Settings, schema_id: str) -> DemoStep:
    """Register the shipped weights where they exist (seconds), else train the recipe (minutes)."""
    shipped = shipped_path(settings.assets_dir, schema_id, DEFAULT_ARCH[schema_id]).is_file()
    source = "shipped" if shipped else "train"
    config = {"ops": {"starter_model": {"config": {"schema_id": schema_id, "source": source}}}}
    return DemoStep(f"starter model {schema_id} ({source})", "starter_model_job", run_config=config)


def first_run_plan(settings: Settings, registered: Callable[[str], bool]) -> list[DemoStep]:
    """The runs `make demo` submits, in order: a model the review app can map with first, then the map,
    then the other starters. `registered(schema_id)` says whether a schema's starter is in MLflow already."""
    map_schema, *other_schemas = STARTER_SCHEMAS
    steps = [starter_step(settings, map_schema)] if not registered(map_schema) else []
    steps.append(DemoStep("regional refresh", "regional_refresh_job", tags={"dagster/partition": DEMO_REGION}))
    steps += [starter_step(settings, s) for s in other_schemas if not registered(s)]
    return steps


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
        mlflow = mlflow_server(settings.home_abs, settings.mlflow_port, storage_url=settings.storage_url)
        services.callback(mlflow.stop)  # registered first: a start that fails half-way is cleaned up too
        mlflow.start(timeout=120)
        mlflow_uri = settings.resolved_mlflow_uri
        print(f"  MLflow       {mlflow_uri}")
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
        statuses = {}
        for step in first_run_plan(settings, lambda schema_id: starter_registered(mlflow_uri, schema_id)):
            statuses[step.job] = run_job(client, step.job, tags=step.tags, run_config=step.run_config, label=step.label)
        status = statuses.get("regional_refresh_job", "UNKNOWN")
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
