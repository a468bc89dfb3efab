"""Published AOI maps in the object store: uploaded when published (review_app/tasks._store_map), and served by the
real titiler tile routes (review_app/tiles.py) from /vsis3/ with GDAL's range requests, pixel for pixel the tiles of
the local files, fetching a small part of the COG."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import morecantile
import numpy as np
import pytest
import rasterio
from affine import Affine
from fastapi import FastAPI
from fastapi.testclient import TestClient
from rasterio.warp import transform as warp_transform
from titiler.core.dependencies import BidxParams

from pearl_pipelines.geo.cog import write_cog
from pearl_pipelines.layout import ProjectPaths
from pearl_pipelines.storage import ObjectStore, S3Store
from review_app import tasks
from review_app.gtiff_reader import GTiffReader
from review_app.tiles import classes_path, confidence_path, store_gdal_env, tile_factory
from tests.s3_local import CountingProxy, S3Server

SIZE = 4096  # 1 m pixels: a 4 km map, a z17 tile covers ~240 m of it
ORIGIN = (500_000.0, 4_400_000.0)  # EPSG:32618, near 39.7 N 75 W
TMS = morecantile.tms.get("WebMercatorQuad")


class FakeStates:
    """What the tile routes and `_store_map` ask of review_app.workspace.StateStore: paths of a project, the store."""

    def __init__(self, home: Path, objects: ObjectStore | None) -> None:
        self.home, self.objects = home, objects

    def paths(self, project_id: int) -> ProjectPaths:
        return ProjectPaths.of(self.home, project_id)


def write_map(out_dir: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, 9, size=(SIZE, SIZE), dtype=np.uint8)
    classes[:, :64] = 255  # some nodata
    confidence = rng.integers(30, 256, size=(SIZE, SIZE), dtype=np.uint8)
    transform = Affine(1.0, 0, ORIGIN[0], 0, -1.0, ORIGIN[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    write_cog(out_dir / "classes.tif", classes, crs="EPSG:32618", transform=transform, nodata=255)
    write_cog(out_dir / "confidence.tif", confidence, crs="EPSG:32618", transform=transform, nodata=0)


def centre_tile(zoom: int) -> morecantile.Tile:
    xs, ys = warp_transform("EPSG:32618", "EPSG:4326", [ORIGIN[0] + SIZE / 2], [ORIGIN[1] - SIZE / 2])
    return TMS.tile(xs[0], ys[0], zoom)


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("home")
    for version in (1, 2, 3, 4):
        write_map(ProjectPaths.of(home, 1).prediction_dir(2, version), seed=version)
    return home


def publish(home: Path, objects: ObjectStore, version: int) -> None:
    ws = SimpleNamespace(states=FakeStates(home, objects), paths=ProjectPaths.of(home, 1))
    tasks._store_map(ws, 2, version)  # type: ignore[arg-type]


def app_for(home: Path, objects: ObjectStore | None) -> TestClient:
    app = FastAPI()
    app.state.services = SimpleNamespace(states=FakeStates(home, objects))
    for prefix, dependency in (
        ("/p/{project_id}/{aoi_id}/{version}", classes_path),
        ("/c/{project_id}/{aoi_id}/{version}", confidence_path),
    ):
        factory = tile_factory(prefix, dependency, None, BidxParams, environment_dependency=store_gdal_env)
        app.include_router(factory.router, prefix=prefix)
    return TestClient(app)


def test_publish_uploads_the_map_and_drops_old_versions(s3_env: S3Server, home: Path, tmp_path: Path) -> None:
    store = ObjectStore.open(s3_env.url(f"publish-{tmp_path.name}"), home)
    prefix = "review/projects/1/aois/2/predictions"
    for version in (1, 2, 3):
        publish(home, store, version)
    assert sorted(store.list(prefix)) == [
        f"{prefix}/v{v}/{n}" for v in (1, 2, 3) for n in ("classes.tif", "confidence.tif")
    ]
    local = ProjectPaths.of(home, 1).classes_path(2, 3)
    assert store.get_bytes(f"{prefix}/v3/classes.tif") == local.read_bytes()
    publish(home, store, 4)  # KEEP_LAYER_VERSIONS = 3: v1 goes, as its local folder does
    assert sorted({k.split("/")[-2] for k in store.list(prefix)}) == ["v2", "v3", "v4"]
    # A local store holds the files in place: publishing copies nothing.
    publish(home, ObjectStore.open(None, home), 4)


def test_tile_route_reads_the_map_from_the_store(s3_env: S3Server, home: Path, tmp_path: Path) -> None:
    store = ObjectStore.open(s3_env.url(f"tiles-{tmp_path.name}"), home)
    publish(home, store, 3)
    local_client, s3_client = app_for(home, None), app_for(home, store)
    for zoom in (14, 17):
        tile = centre_tile(zoom)
        for layer in ("p", "c"):
            url = f"/{layer}/1/2/3/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.npy"
            local, remote = local_client.get(url), s3_client.get(url)
            assert local.status_code == 200 and remote.status_code == 200, remote.text
            assert remote.content == local.content  # the same pixels and mask, byte for byte
            png = f"/{layer}/1/2/3/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png"
            assert s3_client.get(png).content == local_client.get(png).content
    # A version that is not in the store is the uniform 404, even though its local file exists (v2 not published).
    tile = centre_tile(17)
    assert s3_client.get(f"/p/1/2/2/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png").status_code == 404
    assert local_client.get(f"/p/1/2/2/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png").status_code == 200


def test_a_tile_fetches_a_small_part_of_the_cog_by_range_requests(
    s3_env: S3Server, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = f"ranges-{tmp_path.name}/classes.tif"  # a key GDAL has not cached yet
    local_path = ProjectPaths.of(home, 1).classes_path(2, 4)
    size = local_path.stat().st_size
    tile = centre_tile(17)
    started = time.perf_counter()
    with GTiffReader(str(local_path)) as reader:
        expected = reader.tile(tile.x, tile.y, tile.z)
    local_s = time.perf_counter() - started
    with CountingProxy(s3_env.port) as proxy:
        store = S3Store("pearl", "", endpoint_url=proxy.endpoint)
        store.put_file(local_path, key)
        proxy.requests.clear()
        started = time.perf_counter()
        with rasterio.Env(**store.gdal_env()), GTiffReader(store.gdal_path(key)) as reader:
            image = reader.tile(tile.x, tile.y, tile.z)
        remote_s = time.perf_counter() - started
    np.testing.assert_array_equal(image.array.data, expected.array.data)
    np.testing.assert_array_equal(image.array.mask, expected.array.mask)
    gets = [r for r in proxy.requests if r[0] == "GET" and key in r[1]]
    fetched = proxy.bytes_for(key)
    assert gets and all(r[2] is not None and r[2].startswith("bytes=") for r in gets), proxy.requests
    assert fetched < size / 10, (fetched, size)
    with capsys.disabled():
        print(
            f"\nz17 tile of a {size / 1e6:.1f} MB COG: {len(gets)} range GETs, {fetched / 1e3:.0f} kB fetched "
            f"({100 * fetched / size:.1f}%), {remote_s * 1000:.0f} ms from S3 (first open), "
            f"{local_s * 1000:.0f} ms local"
        )
