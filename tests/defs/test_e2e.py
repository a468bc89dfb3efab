"""End to end, for real: labels in the label store -> Dagster -> a model version in MLflow -> predictions -> a map.

Real services: the STAC API (rustac over the small synthetic catalog), an MLflow tracking server, the
Pipes worker as a subprocess, and (last test) `dagster dev` with the review app's direct trigger.
Small regions (0.3 scale) and a tiny starter model keep it to a few minutes on two cores.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import rasterio
from mlflow import MlflowClient
from shapely.geometry import Point

from pearl_pipelines.classes import load_schema
from pearl_pipelines.defs.jobs import LABEL_EVENT_TAG, PROJECT_TAG
from pearl_pipelines.defs.partitions import TILE_KEYS
from pearl_pipelines.defs.resources import LabelStoreResource, MlflowRegistry, build_resources
from pearl_pipelines.defs.sensors import label_submission_sensor
from pearl_pipelines.geo.cog import validate_cog
from pearl_pipelines.geo.grid import aoi_to_tile_keys
from pearl_pipelines.geo.regions import load_regions
from pearl_pipelines.labels.store import LabelStore
from pearl_pipelines.ml.refs import project_model_name
from pearl_pipelines.services import mlflow_server
from pearl_pipelines.settings import get_settings
from pearl_pipelines.synthetic.regions import build_region, reference_points
from tests.conftest import SMALL_SCALE, free_port
from tests.defs.conftest import BASE_MODEL, DEMO_AOI, STARTER

pytestmark = pytest.mark.slow

TINY_STARTER = {
    "train_regions": ["train-a"],
    "holdout_regions": ["holdout"],
    "arch": "fcn",
    "embed_dim": 8,
    "epochs": 1,
    "steps_per_epoch": 4,
    "batch_size": 2,
    "patch_size": 64,
    "replay_per_class": 40,
    # The cheap group only: a 4-step starter's map through Dagster is what these tests check; the ImageNet
    # group's own tests are in tests/ml/test_features.py.
    "features": ["spectral_texture"],
    # The trained head: the champion gate compares a retrain with it (the zero-shot head: tests/ml/test_zero_shot.py).
    "zero_shot_patches": 0,
}


@dataclass
class Pipeline:
    defs: dg.Definitions
    instance: dg.DagsterInstance
    resources: dict
    store: LabelStore
    mlflow_uri: str


@pytest.fixture(scope="module")
def pipeline(stac_server, small_catalog, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    settings = get_settings()
    holdout = load_regions(settings.assets_dir)["holdout"]
    if not (settings.catalog_dir / "holdout" / "collection.json").exists():
        build_region(holdout, settings.catalog_dir, scale=SMALL_SCALE)
    port = free_port()
    labels_url = f"sqlite:///{tmp_path_factory.mktemp('labels') / 'labels.db'}"
    with (
        pytest.MonkeyPatch.context() as env,
        mlflow_server(tmp_path_factory.mktemp("mlflow"), port),
        dg.instance_for_test() as instance,
    ):
        uri = f"http://127.0.0.1:{port}"
        env.setenv("PEARL_MLFLOW_TRACKING_URI", uri)  # for `dagster dev` in the last test
        env.setenv("PEARL_LABEL_STORE_URL", labels_url)
        env.setenv("PEARL_DAGSTER_AUTOMATION", "off")  # the trigger submits; no sensor run competes
        env.setenv("PEARL_LABEL_QUIET_S", "0")  # the test evaluates the label sensor right after labelling
        get_settings.cache_clear()
        from pearl_pipelines.definitions import defs

        resources = {
            **build_resources(get_settings()),
            "mlflow": MlflowRegistry(tracking_uri=uri),
            "label_store": LabelStoreResource(url=labels_url),
        }
        store = LabelStore(labels_url)
        yield Pipeline(defs, instance, resources, store, uri)
        store.engine.dispose()
    get_settings.cache_clear()


def reference_labels(aoi, n: int, seed: int = 0) -> list[tuple[str, Point]]:
    """Points inside the AOI labelled from the demo region's reference rasters (what a careful mapper clicks)."""
    return reference_points(get_settings().catalog_dir, "demo", aoi, n, seed=seed)


def run_job(pipeline: Pipeline, name: str, **kwargs) -> dg.ExecuteInProcessResult:
    job = pipeline.defs.resolve_job_def(name)
    return job.execute_in_process(instance=pipeline.instance, resources=pipeline.resources, **kwargs)


def materialize_starter(pipeline: Pipeline, config: dict) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [pipeline.defs.get_assets_def("starter_model")],
        instance=pipeline.instance,
        resources=pipeline.resources,
        run_config={"ops": {"starter_model": {"config": config}}},
    )


def test_starter_model_is_trained_and_registered(pipeline: Pipeline) -> None:
    result = materialize_starter(pipeline, TINY_STARTER)
    assert result.success
    meta = result.asset_materializations_for_node("starter_model")[0].metadata
    assert meta["model_uri"].value == f"models:/{STARTER}/1"
    client = MlflowClient(pipeline.mlflow_uri)
    assert client.get_model_version_by_alias(STARTER, "starter").version == "1"
    assert client.get_model_version_by_alias(STARTER, "champion").version == "1"
    assert client.get_run(meta["mlflow_run_id"].value).data.tags["dagster_run_id"] == result.run_id


def test_shipped_starter_is_registered_through_dagster_without_training(pipeline: Pipeline) -> None:
    """What `make demo` runs first: the shipped 9-class weights, scored on holdout and registered (no training)."""
    name = "pearl-starter-shipped-e2e"
    config = {"schema_id": "chesapeake9", "source": "shipped", "train_regions": ["train-a"], "model_name": name}
    result = materialize_starter(pipeline, config)
    assert result.success
    meta = result.asset_materializations_for_node("starter_model")[0].metadata
    assert meta["model_uri"].value == f"models:/{name}/1" and meta["arch"].value == "unet"
    assert meta["epochs"].value == 0 and "(shipped" in meta["precision"].value
    run = MlflowClient(pipeline.mlflow_uri).get_run(meta["mlflow_run_id"].value)
    assert run.data.params["source"] == "shipped" and run.data.params["shipped_file"] == "chesapeake9-unet.pt"
    # Scored here, on this (small) holdout: far above chance (9 classes), so the weights fit today's scenes.
    assert run.data.metrics["holdout_macro_f1"] == pytest.approx(meta["holdout_macro_f1"].value)
    assert run.data.metrics["trained_head_holdout_macro_f1"] > 0.6
    # Registered with the zero-shot head (fitted here on domain-randomised patches, blind to the learned
    # features): below the trained head on synthetic scenes, still far above chance (0.11 for 9 classes).
    assert run.data.metrics["zero_shot_fit_seconds"] > 0 and meta["holdout_macro_f1"].value > 0.4


def test_labels_to_model_version_and_predictions(pipeline: Pipeline) -> None:
    store = pipeline.store
    project = store.create_project("e2e", {"collections": ["demo"]}, load_schema("chesapeake9"), BASE_MODEL)
    keys = aoi_to_tile_keys(DEMO_AOI)
    aoi = store.add_aoi(project.id, "e2e-aoi", DEMO_AOI, keys)
    store.add_labels(project.id, reference_labels(DEMO_AOI, 40), aoi_id=aoi.id)

    # The sensor turns the label events into a run request (and registers the AOI's tile keys).
    context = dg.build_sensor_context(
        instance=pipeline.instance, resources={"label_store": pipeline.resources["label_store"]}
    )
    tick = label_submission_sensor(context)
    (request,) = tick.run_requests
    pipeline.instance.add_dynamic_partitions(TILE_KEYS, list(tick.dynamic_partitions_requests[0].partition_keys))
    started = time.perf_counter()
    result = run_job(pipeline, "label_to_map_job", run_config=request.run_config, tags=request.tags)
    print(f"label_to_map_job (in process): {time.perf_counter() - started:.1f} s")
    assert result.success
    assert request.tags[PROJECT_TAG] == str(project.id)
    assert request.tags[LABEL_EVENT_TAG] == str(store.max_event_id(project.id))

    # A new version of the project's registered model (a head on the starter), with lineage and `current`.
    model = result.asset_materializations_for_node("landcover_model")[0].metadata
    client = MlflowClient(pipeline.mlflow_uri)
    name = project_model_name(project.id)
    version = client.get_model_version(name, str(model["model_version"].value))
    assert version.tags["pearl.parent_model"] == f"models:/{STARTER}/1"
    assert version.tags["pearl.base_model"] == f"models:/{STARTER}/1"
    assert version.tags["pearl.source"] == "dagster"
    assert version.tags["pearl.label_store_digest"] == store.label_set_digest(project.id)
    assert version.tags["pearl.label_set_digest"].startswith("ls-")
    assert version.tags["dagster_run_id"] == result.run_id
    assert client.get_model_version_by_alias(name, "current").version == version.version
    checks = {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {
        "label_set_geometry_valid": True,
        "model_not_worse_than_champion": True,
        "predictions_cog_valid": True,
    }

    # Every training and inference run of this Dagster run is an MLflow run tagged with its id.
    tagged = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], filter_string=f"tags.dagster_run_id = '{result.run_id}'"
    )
    assert {r.data.tags.get("pearl.task") for r in tagged} >= {"embed", "retrain", "predict-head"}

    # Exactly the AOI's tiles were predicted, as partitions, with the new version, as valid COGs.
    predicted = pipeline.instance.get_materialized_partitions(dg.AssetKey("predictions"))
    assert predicted == {k for k in keys if pipeline.resources["rasters"].tile_path(k).is_file()}
    for materialization in result.asset_materializations_for_node("predictions"):
        assert materialization.metadata["model_uri"].value == f"models:/{name}/{version.version}"
        assert validate_cog(Path(materialization.metadata["classes_uri"].value))[0]


def test_one_label_burst_in_the_review_app_is_one_fit_one_version_one_cache(pipeline: Pipeline) -> None:
    """The review app embeds a new AOI (in the worker), fits a head on a label burst and registers it; the Dagster
    label run for the same labels adopts that version: no second backbone pass, no second fit, one MLflow version."""
    from fastapi.testclient import TestClient

    from pearl_pipelines.layout import Layout, model_slug
    from review_app.main import create_app
    from tests.review_app.conftest import wait_job, wait_ready

    settings = get_settings().model_copy(update={"dagster_port": free_port(), "write_rate_limit": "1000/second"})
    mlflow = MlflowClient(pipeline.mlflow_uri)
    with TestClient(create_app(settings)) as client:
        body = {"name": "one-burst", "imagery": {"source": "local", "collection": "demo"}, "base_model": BASE_MODEL}
        project = client.post("/api/projects", json=body).json()
        pid = project["id"]
        wait_ready(client, pid, timeout=120)
        aoi = client.post(f"/api/projects/{pid}/aois", json={"geometry": DEMO_AOI.__geo_interface__}).json()
        job = client.post(f"/api/projects/{pid}/aois/{aoi['id']}/inference").json()
        assert wait_job(client, job["id"], timeout=300)["state"] == "done"
        for class_name, point in reference_labels(DEMO_AOI, 30, seed=3):
            body = {"class_name": class_name, "geometry": point.__geo_interface__}
            assert client.post(f"/api/projects/{pid}/labels", json=body).status_code == 201
        assert wait_job(client, client.post(f"/api/projects/{pid}/retrain", json={}).json()["id"])["state"] == "done"
        name = project_model_name(pid)
        deadline = time.monotonic() + 120
        while not mlflow.search_model_versions(f"name = '{name}'"):
            assert time.monotonic() < deadline, "the review app's version never reached MLflow"
            time.sleep(0.5)
    (app_version,) = mlflow.search_model_versions(f"name = '{name}'")
    assert app_version.tags["pearl.source"] == "review-app"
    assert app_version.tags["pearl.base_model"] == f"models:/{STARTER}/1"  # resolved from the alias
    assert app_version.tags["pearl.label_store_digest"] == pipeline.store.label_set_digest(pid)

    # The one cache: where Dagster keeps the starter's AOI caches, written by the app's worker.
    layout = Layout.at(get_settings().home_abs)
    cache = layout.path(Layout.aoi_embeddings(model_slug(STARTER, 1), aoi["id"]))
    assert (cache / "embeddings.json").is_file()
    assert not layout.project(pid).embeddings_dir(aoi["id"]).exists()

    context = dg.build_sensor_context(
        instance=pipeline.instance, resources={"label_store": pipeline.resources["label_store"]}
    )
    tick = label_submission_sensor(context)
    (request,) = [r for r in tick.run_requests if r.tags[PROJECT_TAG] == str(pid)]
    for add in tick.dynamic_partitions_requests:
        pipeline.instance.add_dynamic_partitions(TILE_KEYS, list(add.partition_keys))
    result = run_job(pipeline, "label_to_map_job", run_config=request.run_config, tags=request.tags)
    assert result.success
    embeddings = result.asset_materializations_for_node("embeddings")[0].metadata
    assert "aois_embedded" not in embeddings  # the app's cache was complete: no backbone pass in Dagster
    model = result.asset_materializations_for_node("landcover_model")[0].metadata
    assert model["adopted_from_review_app"].value is True
    assert model["model_version"].value == int(app_version.version)
    assert model["holdout_macro_f1"].value is not None  # the gate still scored the recipe on held-out labels
    assert len(mlflow.search_model_versions(f"name = '{name}'")) == 1  # one burst, one version
    assert mlflow.get_model_version_by_alias(name, "current").version == app_version.version
    tasks = {
        r.data.tags.get("pearl.task")
        for r in mlflow.search_runs(
            [e.experiment_id for e in mlflow.search_experiments()],
            filter_string=f"tags.dagster_run_id = '{result.run_id}'",
        )
    }
    assert "embed" not in tasks
    for materialization in result.asset_materializations_for_node("predictions"):  # head on the composed model
        assert materialization.metadata["model_uri"].value == f"models:/{name}/{app_version.version}"


def test_regional_refresh_makes_a_map(pipeline: Pipeline) -> None:
    started = time.perf_counter()
    result = run_job(pipeline, "regional_refresh_job", partition_key="demo")
    print(f"regional_refresh_job (in process): {time.perf_counter() - started:.1f} s")
    assert result.success
    # The map step also reports the tile predictions it made: pick the map's own materialization.
    (meta,) = [
        m.metadata
        for m in result.asset_materializations_for_node("landcover_map")
        if m.asset_key == dg.AssetKey("landcover_map")
    ]
    champion = MlflowClient(pipeline.mlflow_uri).get_model_version_by_alias(STARTER, "champion")
    assert meta["model_uri"].value == f"models:/{STARTER}/{champion.version}"
    path = Path(meta["uri"].value)
    assert validate_cog(path)[0]
    with rasterio.open(path) as src:
        classes = src.read(1)
        pixel_ha = abs(src.transform.a * src.transform.e) / 10_000
        assert src.colormap(1)[0][:3] != (0, 0, 0)
    areas = meta["area_ha_json"].value
    assert sum(areas.values()) == pytest.approx((classes != 255).sum() * pixel_ha, rel=1e-6)
    item = __import__("json").loads(Path(meta["stac_item"].value).read_text())
    assert item["properties"]["pearl:model"] == meta["model_uri"].value
    assert item["assets"]["landcover"]["classification:classes"][0]["name"] == "water"
    assert Path(meta["preview_path"].value).stat().st_size > 0
    assert [
        e.passed for e in result.get_asset_check_evaluations() if e.asset_check_key.name == "landcover_map_cog_valid"
    ] == [True]
    # The tiles the champion predicted for the map are materializations of their `predictions` partitions.
    region_tiles = set(aoi_to_tile_keys(load_regions()["demo"].geometry))
    assert region_tiles & pipeline.instance.get_materialized_partitions(dg.AssetKey("predictions"))


def test_trigger_submits_the_label_run_through_dagster_dev(pipeline: Pipeline, tmp_path: Path) -> None:
    """`dagster dev` (own instance under PEARL_HOME/dagster) + `trigger.submit_label_run` over GraphQL."""
    from dagster_graphql import DagsterGraphQLClient

    from pearl_pipelines.demo import latest_log_message
    from pearl_pipelines.services import dagster_dev
    from pearl_pipelines.trigger import submit_label_run
    from pearl_pipelines.worker.forkserver import WorkerServer

    store = pipeline.store
    (project,) = [p for p in store.list_projects() if p.name == "e2e"]
    (aoi,) = store.list_aois(project.id)
    store.add_labels(project.id, reference_labels(DEMO_AOI, 5, seed=1), aoi_id=aoi.id)
    name = project_model_name(project.id)
    versions_before = len(MlflowClient(pipeline.mlflow_uri).search_model_versions(f"name = '{name}'"))
    port = free_port()
    # As `make demo` runs it: with the warm worker server (tasks fork it instead of importing torch again).
    with WorkerServer(get_settings().home_abs), dagster_dev(get_settings(), port=port) as dagster:
        started = time.perf_counter()
        run_id = submit_label_run(project.id, port=port, store=store)
        client = DagsterGraphQLClient("127.0.0.1", port_number=port)
        status = None
        while time.perf_counter() - started < 300:
            status = client.get_run_status(run_id).name
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                break
            time.sleep(0.5)
        print(f"trigger -> run {status} in {time.perf_counter() - started:.1f} s")
        assert status == "SUCCESS", dagster.log_path.read_text()[-3000:] if dagster.log_path else status
        # What `make demo` shows next to a running job: the newest log line the worker sent through Pipes.
        message, cursor = latest_log_message(client, run_id, None)
        assert isinstance(message, str) and message, message
        assert latest_log_message(client, run_id, cursor) == (None, cursor)
    versions = MlflowClient(pipeline.mlflow_uri).search_model_versions(f"name = '{name}'")
    assert len(versions) == versions_before + 1
    assert dagster.process is None  # stopped with its process group
