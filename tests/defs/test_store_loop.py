"""The Dagster loop with PEARL_STORAGE_URL: the run pod and the worker pod share only the object store.

Against a real S3-compatible server (SeaweedFS, tests/s3_local.py): `imagery_index` cuts the region's tiles in one
PEARL_HOME and publishes them; the real worker `predict` task runs (in process, a tiny model in place of the registered
one) in a second, empty PEARL_HOME, fetches the tiles it needs and publishes its per-tile predictions; `landcover_map`
fetches those and publishes the map. A third, empty PEARL_HOME then makes the same map from the store alone, without
the worker. `StoredFiles` itself: publish then fetch, a missing key, no store.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pytest
import rasterio

from pearl_pipelines.defs.imagery import imagery_index
from pearl_pipelines.defs.inference import predictions
from pearl_pipelines.defs.maps import landcover_map
from pearl_pipelines.defs.resources import GpuCompute, RasterStore, StacResource
from pearl_pipelines.geo.grid import aoi_to_tile_keys
from pearl_pipelines.layout import CLASSES_FILE, CONFIDENCE_FILE, PREDICTION_META, Layout, model_slug
from pearl_pipelines.settings import get_settings
from pearl_pipelines.storage import LocalStore, ObjectStore
from pearl_pipelines.stored_files import StoredFileMissing, StoredFiles
from pearl_pipelines.worker.contracts import PredictInput
from tests.defs.conftest import STARTER, FakeCompute, FakeInvocation
from tests.s3_local import S3Server

SLUG = model_slug(STARTER, 1)


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def storage_url(s3_env: S3Server) -> str:
    """A fresh prefix of the server's bucket: every test starts from an empty store."""
    return s3_env.url(f"loop-{uuid.uuid4().hex[:8]}")


# -- StoredFiles ---------------------------------------------------------------------------------------------------
def test_published_file_and_folder_are_fetched_into_another_home(tmp_path: Path, storage_url: str) -> None:
    writer = StoredFiles.open(storage_url, tmp_path / "a")
    reader = StoredFiles.open(storage_url, tmp_path / "b")
    assert writer.remote and reader.remote
    index = writer.layout.path(Layout.imagery_index("demo"))
    index.parent.mkdir(parents=True)
    index.write_bytes(b"parquet bytes \x00\x01")
    folder = writer.layout.path(Layout.tile_prediction(SLUG, "15-1-2"))
    folder.mkdir(parents=True)
    for name, data in ((CLASSES_FILE, b"c" * 1000), (CONFIDENCE_FILE, b"f" * 500), (PREDICTION_META, b"{}")):
        (folder / name).write_bytes(data)
    assert writer.publish(index) == 1
    assert writer.publish(folder, last=(PREDICTION_META,)) == 3

    got = reader.local(Layout.imagery_index("demo"))
    assert got == reader.layout.path(Layout.imagery_index("demo")) and got.read_bytes() == index.read_bytes()
    got_dir = reader.local(reader.layout.path(Layout.tile_prediction(SLUG, "15-1-2")), marker=PREDICTION_META)
    assert sorted(p.name for p in got_dir.iterdir()) == sorted(p.name for p in folder.iterdir())
    for path in folder.iterdir():
        assert (got_dir / path.name).read_bytes() == path.read_bytes()
    assert reader.exists(Layout.imagery_index("demo")) and not reader.exists(Layout.imagery_index("nowhere"))


def test_a_missing_key_names_the_key_and_the_store(tmp_path: Path, storage_url: str) -> None:
    reader = StoredFiles.open(storage_url, tmp_path / "b")
    with pytest.raises(StoredFileMissing, match=r"imagery_index/nowhere\.parquet is neither under .* nor in the store"):
        reader.local(Layout.imagery_index("nowhere"))
    with pytest.raises(FileNotFoundError, match=r"complete: with prediction\.json"):
        reader.local(Layout.tile_prediction(SLUG, "15-1-2"), marker=PREDICTION_META)
    assert reader.try_local(Layout.imagery_index("nowhere")) is None


def test_without_a_store_nothing_is_uploaded_or_fetched(tmp_path: Path, s3_env: S3Server) -> None:
    bucket_before = set(ObjectStore.open(s3_env.url(), tmp_path).list(""))
    for files in (StoredFiles.open(None, tmp_path), StoredFiles(Layout.at(tmp_path), LocalStore(tmp_path))):
        assert not files.remote
        path = files.layout.path(Layout.imagery_index("demo"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        assert files.publish(path) == 0
        missing = Layout.imagery_index("nowhere")
        assert files.local(missing) == files.layout.path(missing) and not files.layout.path(missing).exists()
    assert set(ObjectStore.open(s3_env.url(), tmp_path).list("")) == bucket_before
    assert RasterStore(home=str(tmp_path)).files.store is None  # the default resource: no store at all


def test_label_set_snapshot_is_published_and_read_by_key_elsewhere(
    tmp_path: Path, storage_url: str, project, label_store_resource
) -> None:
    from pearl_pipelines.defs import checks, labels

    rasters = RasterStore(home=str(tmp_path / "run-pod"), storage_url=storage_url)
    result = dg.materialize(
        [labels.label_set, checks.label_set_geometry_valid],
        resources={"label_store": label_store_resource, "rasters": rasters},
        run_config={"ops": {"label_set": {"config": {"project_id": project.project_id}}}},
    )
    assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
    key = Layout.label_set(project.project_id, project.store.label_set_digest(project.project_id))
    assert rasters.files.stored(key)
    elsewhere = StoredFiles.open(storage_url, tmp_path / "worker-pod").local(key)
    assert elsewhere.read_bytes() == rasters.files.path(key).read_bytes()


def test_worker_publishes_an_embedding_cache_that_another_pod_reads(
    tmp_path: Path, storage_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pearl_pipelines.ml.embeddings import EmbeddingCache
    from pearl_pipelines.worker import tasks
    from tests.storage.caches import random_cache

    written = random_cache(tmp_path / "embed-pod", 7, (40, 30, 5), seed=3)
    key = Layout.aoi_embeddings("starter-v1", 7)
    monkeypatch.setenv("PEARL_STORAGE_URL", storage_url)
    for home in ("embed-pod", "retrain-pod"):
        monkeypatch.setenv("PEARL_HOME", str(tmp_path / home))
        get_settings.cache_clear()
        if home == "embed-pod":
            tasks._publish_cache(tasks._path(key))
            # The run pod, with a PEARL_HOME of its own, sees the cache as ready in the store.
            assert RasterStore(home=str(tmp_path / "run-pod"), storage_url=storage_url).cache_ready(
                tmp_path / "run-pod" / key
            )
        else:
            read = EmbeddingCache.open(tasks._input_cache(key))
    get_settings.cache_clear()
    assert read.directory == tmp_path / "retrain-pod" / key
    np.testing.assert_array_equal(np.asarray(read.array), np.asarray(written.array))
    np.testing.assert_array_equal(np.asarray(read.valid), np.asarray(written.valid))
    assert not RasterStore(home=str(tmp_path / "run-pod")).cache_ready(tmp_path / "run-pod" / key)  # no store


# -- the loop --------------------------------------------------------------------------------------------------------
class _Log:
    def info(self, message: str) -> None: ...

    def warning(self, message: str) -> None: ...


class RecordingPipes:
    """What a worker task sends back through Dagster Pipes, kept in memory."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.checks: list[dict[str, Any]] = []
        self.materialization: dg.MaterializeResult | None = None
        self.log = _Log()

    def report_asset_materialization(self, metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.materialization = dg.MaterializeResult(metadata=metadata)

    def report_custom_message(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    def report_asset_check(self, **kwargs: Any) -> None:
        self.checks.append(kwargs)


def worker_pod(home: Path, storage_url: str, fetched: list[str] | None = None) -> Any:
    """A FakeCompute answer that runs the real worker task in process, as a pod with its own PEARL_HOME would: an
    empty one at the start, gone after the task (an emptyDir). `fetched` gets the keys the task found there at the
    end (what it fetched and wrote)."""
    import pearl_pipelines.ml.registry as registry
    import pearl_pipelines.ml.tracking as tracking
    from pearl_pipelines.worker.tasks import TASKS
    from tests.ml.conftest import tiny_model

    model = tiny_model("fcn", "chesapeake9")

    def respond(task: str, extras: dict[str, Any]) -> FakeInvocation:
        pipes = RecordingPipes()
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("PEARL_HOME", str(home))
            mp.setenv("PEARL_STORAGE_URL", storage_url)
            mp.setattr(registry, "load_registered", lambda *args, **kwargs: model)
            mp.setattr(tracking, "log_inference_run", lambda *args, **kwargs: "no-mlflow")
            get_settings.cache_clear()
            try:
                TASKS[task].function(pipes, TASKS[task].parse(extras))  # type: ignore[arg-type]
            finally:
                get_settings.cache_clear()
        if fetched is not None:
            fetched.extend(Layout.at(home).key(p) for p in home.rglob("*") if p.is_file())
        shutil.rmtree(home)
        get_settings.cache_clear()
        results = [
            dg.AssetCheckResult(check_name=c["check_name"], passed=c["passed"], asset_key=c["asset_key"])
            for c in pipes.checks
        ]
        return FakeInvocation(messages=pipes.messages, results=results, materialization=pipes.materialization)

    return respond


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


def _map(instance: dg.DagsterInstance, rasters: RasterStore, compute: GpuCompute, registry: Any) -> Any:
    result = dg.materialize(
        [landcover_map],
        partition_key="demo",
        instance=instance,
        resources={"rasters": rasters, "mlflow": registry, "compute": compute},
    )
    assert result.success
    (meta,) = [
        m.metadata
        for m in result.asset_materializations_for_node("landcover_map")
        if m.asset_key == dg.AssetKey("landcover_map")
    ]
    return meta


def test_loop_shares_only_the_object_store(
    tmp_path: Path,
    stac_server,
    small_catalog,
    storage_url: str,
    registry,
    instance: dg.DagsterInstance,
    label_store_resource,
) -> None:
    run_home, worker_home, other_home = tmp_path / "run-pod", tmp_path / "worker-pod", tmp_path / "other-run-pod"
    rasters = RasterStore(home=str(run_home), storage_url=storage_url)
    stac = StacResource(url=stac_server.url)
    result = dg.materialize(
        [imagery_index], partition_key="demo", instance=instance, resources={"stac": stac, "rasters": rasters}
    )
    assert result.success
    store = rasters.files.store
    assert store is not None and store.remote
    keys = set(store.list(""))
    region_keys = aoi_to_tile_keys(small_catalog.regions["demo"].geometry)
    tiles = [k for k in region_keys if rasters.tile_path(k).is_file()]
    assert tiles and Layout.imagery_index("demo") in keys
    assert {Layout.at(run_home).tile(k) for k in tiles} <= keys

    in_worker: list[str] = []
    compute = FakeCompute().answer(worker_pod(worker_home, storage_url, in_worker))
    meta = _map(instance, rasters, compute, registry)
    assert [task for task, _ in compute.calls] == ["predict"]
    assert meta["tiles_predicted"].value == len(tiles)
    # The worker's PEARL_HOME got the tiles from the store; its predictions went there, and the map after them.
    assert {Layout.at(worker_home).tile(k) for k in tiles} <= set(in_worker) and not worker_home.exists()
    keys = set(store.list(""))
    for k in tiles:
        folder = Layout.tile_prediction(SLUG, k)
        assert {f"{folder}/{name}" for name in (CLASSES_FILE, CONFIDENCE_FILE, PREDICTION_META)} <= keys
    map_key = Layout.region_map("demo", SLUG)
    map_files = {k[len(map_key) + 1 :] for k in keys if k.startswith(f"{map_key}/")}
    assert {"landcover.tif", "confidence.tif", "item.json", "preview.png"} <= map_files

    # Another run pod, empty PEARL_HOME, same bucket: the map from the store's predictions, no worker.
    other = RasterStore(home=str(other_home), storage_url=storage_url)
    idle = FakeCompute()
    other_meta = _map(instance, other, idle, registry)
    assert meta["total_ha"].value > 0
    assert idle.calls == [] and other_meta["tiles_reused"].value == len(tiles)
    assert (other_home / Layout.tile_prediction(SLUG, tiles[0]) / PREDICTION_META).is_file()
    assert not (other_home / Layout.tiles).exists()  # the tiles' imagery was not needed there
    for name in ("uri", "confidence_uri"):
        first, second = Path(meta[name].value), Path(other_meta[name].value)
        assert second.is_relative_to(other_home)
        with rasterio.open(first) as a, rasterio.open(second) as b:
            assert a.transform == b.transform and a.crs == b.crs
            np.testing.assert_array_equal(a.read(), b.read())

    # The predictions step in yet another pod: one tile's prediction is gone from the store, so the worker (a pod of
    # its own again) predicts it, and the step checks both COGs from the store, not from the worker's disk.
    assert store.delete(Layout.tile_prediction(SLUG, tiles[1])) == 3
    third = RasterStore(home=str(tmp_path / "predictions-pod"), storage_url=storage_url)
    compute = FakeCompute().answer(worker_pod(tmp_path / "worker-pod-2", storage_url))
    result = dg.materialize(
        [predictions],
        instance=instance,
        tags={"dagster/asset_partition_range_start": tiles[0], "dagster/asset_partition_range_end": tiles[1]},
        resources={
            "rasters": third,
            "mlflow": registry,
            "compute": compute,
            "stac": stac,
            "label_store": label_store_resource,
        },
    )
    assert result.success
    assert [[t.key for t in PredictInput.model_validate(x).tiles] for _, x in compute.calls] == [[tiles[1]]]
    modes = {m.partition: m.metadata["mode"].value for m in result.asset_materializations_for_node("predictions")}
    assert modes == {tiles[0]: "precomputed", tiles[1]: "full"}
    assert [e.passed for e in result.get_asset_check_evaluations()] == [True]
    assert store.exists(f"{Layout.tile_prediction(SLUG, tiles[1])}/{PREDICTION_META}")


def test_the_store_url_reaches_the_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pearl_pipelines.defs.resources import build_resources, gpu_compute

    monkeypatch.setenv("PEARL_HOME", str(tmp_path))
    monkeypatch.delenv("PEARL_STORAGE_URL", raising=False)
    get_settings.cache_clear()
    try:
        assert gpu_compute(get_settings()).env == {"PEARL_HOME": str(get_settings().home_abs)}  # as before
        assert build_resources(get_settings())["rasters"].storage_url is None
        monkeypatch.setenv("PEARL_STORAGE_URL", "s3://pearl/loop")
        get_settings.cache_clear()
        assert gpu_compute(get_settings()).env["PEARL_STORAGE_URL"] == "s3://pearl/loop"  # local workers
        assert build_resources(get_settings())["rasters"].storage_url == "s3://pearl/loop"
    finally:
        get_settings.cache_clear()
    # A pod reads it (and the store's keys) from the object store's Secret; with no claim, PEARL_HOME is its own.
    spec = GpuCompute(mode="k8s", pearl_home_claim="none").pod_spec()
    env = {e["name"]: e for e in spec["containers"][0]["env"]}
    assert env["PEARL_STORAGE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "pearl-object-store"
    assert spec["volumes"] == [{"name": "pearl-home", "emptyDir": {}}]
    claim = GpuCompute(mode="k8s").pod_spec()["volumes"]
    assert claim == [{"name": "pearl-home", "persistentVolumeClaim": {"claimName": "pearl-home"}}]


def test_embedding_caches_made_in_a_worker_pod_are_reused_by_another_run_pod(
    tmp_path: Path, stac_server, storage_url: str, registry, instance, project, label_store_resource
) -> None:
    from pearl_pipelines.defs.inference import embeddings

    def run(home: str, compute: GpuCompute) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [embeddings],
            instance=instance,
            run_config={"ops": {"embeddings": {"config": {"project_id": project.project_id}}}},
            resources={
                "rasters": RasterStore(home=str(tmp_path / home), storage_url=storage_url),
                "mlflow": registry,
                "compute": compute,
                "stac": StacResource(url=stac_server.url),
                "label_store": label_store_resource,
            },
        )

    in_worker: list[str] = []
    worker = FakeCompute().answer(worker_pod(tmp_path / "worker-pod", storage_url, in_worker))
    assert run("run-pod", worker).success
    assert [task for task, _ in worker.calls] == ["embed"]
    cache = Layout.aoi_embeddings(SLUG, project.aoi_id)
    store = ObjectStore.open(storage_url, tmp_path)
    assert store.exists(f"{cache}/embeddings.json") and store.exists(f"{cache}/chunks.json")
    assert {Layout.at(tmp_path).tile(k) for k in project.tile_keys} <= set(in_worker)  # fetched by the worker

    idle = FakeCompute()
    result = run("other-run-pod", idle)
    assert result.success and idle.calls == []
    (meta,) = [m.metadata for m in result.asset_materializations_for_node("embeddings")]
    assert meta["caches_reused"].value == 1 and meta["tiles_fetched"].value == 0
