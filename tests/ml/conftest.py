"""Fixtures for the ML engine: tiny models, small synthetic rasters, a real MLflow tracking server.

Models are untrained but have a spread-out random head, so their predictions vary across the image
(a trained model is only needed by the slow retrain-improves test, which trains its own).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from affine import Affine
from scipy import ndimage as ndi

from pearl_pipelines.classes import ClassSchema, load_schema
from pearl_pipelines.geo.cog import write_cog
from pearl_pipelines.ml.models import LandcoverModel, ModelSpec
from tests.conftest import free_port

CRS = "EPSG:32618"
# Origin deliberately not a multiple of any stride, so the global grid anchoring is exercised.
ORIGIN = (500_123.0, 4_400_457.0)


def tiny_model(arch: str = "fcn", schema_id: str = "chesapeake4", seed: int = 0) -> LandcoverModel:
    torch.manual_seed(seed)
    kwargs = {"base": 8} if arch == "unet" else {}
    model = LandcoverModel(ModelSpec(arch=arch, schema=load_schema(schema_id), embed_dim=16, arch_kwargs=kwargs)).eval()
    with torch.no_grad():
        for conv in model.backbone.modules():
            if isinstance(conv, torch.nn.Conv2d):  # variance-preserving init: live, varied embeddings
                torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                torch.nn.init.normal_(conv.bias, 0.0, 0.1)
        # Centre and scale the head on typical embeddings so that every class wins somewhere.
        emb = model.embed(torch.from_numpy(blob_image(64, 64, seed=seed))[None])[0].flatten(1).T
        k = len(model.spec.schema)
        weight = torch.randn(k, emb.shape[1])
        weight *= 3.0 / ((emb - emb.mean(dim=0)) @ weight.T).std()  # logits spread like a trained model's
        model.head.weight.copy_(weight.reshape(model.head.weight.shape))
        model.head.bias.copy_(-(emb.mean(dim=0) @ weight.T))
    return model


def blob_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(4, H, W) uint8: smooth random fields (~30 px features) plus a little noise."""
    rng = np.random.default_rng(seed)
    fields = ndi.gaussian_filter(rng.normal(size=(4, height, width)), sigma=(0, 8, 8))
    fields = (fields - fields.mean()) / fields.std()
    image = 128 + 45 * fields + rng.normal(0, 4, size=fields.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_image(path: Path, image: np.ndarray, origin: tuple[float, float] = ORIGIN) -> Path:
    return write_cog(path, image, crs=CRS, transform=Affine(1, 0, origin[0], 0, -1, origin[1]))


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny tensors: on a shared 2-core box, intra-op thread barriers cost more than the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def schema4() -> ClassSchema:
    return load_schema("chesapeake4")


@pytest.fixture(scope="session")
def fcn() -> LandcoverModel:
    return tiny_model("fcn")


@pytest.fixture(scope="session")
def unet() -> LandcoverModel:
    return tiny_model("unet")


@pytest.fixture(scope="session")
def image_array() -> np.ndarray:
    return blob_image(300, 380, seed=1)


@pytest.fixture(scope="session")
def image_path(tmp_path_factory: pytest.TempPathFactory, image_array: np.ndarray) -> Path:
    return write_image(tmp_path_factory.mktemp("imagery") / "image.tif", image_array)


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` (SQLite backend, local artifact store) for the session."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    exe = Path(sys.executable).with_name("mlflow")
    cmd = [
        str(exe), "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}: {(root / 'server.log').read_text()}")
            try:
                if httpx.get(f"{uri}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("mlflow server did not become healthy within 90 s")
            time.sleep(0.5)
        yield uri
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and its gunicorn/uvicorn workers
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def pixel_xy(rows: np.ndarray, cols: np.ndarray, origin: tuple[float, float] = ORIGIN) -> tuple[np.ndarray, np.ndarray]:
    """Map coordinates of pixel centres of an image written with `write_image`."""
    return origin[0] + np.asarray(cols) + 0.5, origin[1] - np.asarray(rows) - 0.5


def pixel_box(row0: int, col0: int, row1: int, col1: int, origin: tuple[float, float] = ORIGIN):
    """Polygon covering pixels [row0, row1) x [col0, col1)."""
    from shapely.geometry import box

    return box(origin[0] + col0, origin[1] - row1, origin[0] + col1, origin[1] - row0)


def labels_frame(geometries: list, names: list[str], crs: str = CRS):
    import geopandas as gpd

    return gpd.GeoDataFrame({"class_name": names, "label_id": range(len(names))}, geometry=geometries, crs=crs)
