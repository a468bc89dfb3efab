"""Imagery uploads through the API (issue 24 item 2): chunks and resume, the size limit and the byte quota, every
bad file with its message, nothing half-written in the catalog, ingest into the uploader's collection, ownership."""

from __future__ import annotations

import io
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from fastapi.testclient import TestClient
from PIL import Image
from rasterio.transform import from_origin

from pearl_pipelines.settings import Settings
from review_app.services.uploads import STAGING_DIR, UPLOADS_KEY
from tests.review_app.conftest import new_home, oidc, wait_ready
from tests.review_app.idp import Issuer

ROTTERDAM = (594000.0, 5752000.0)  # EPSG:32631, near the solaris test images


def geotiff(
    path: Path,
    *,
    bands: int = 4,
    size: int = 96,
    crs: str | None = "EPSG:32631",
    dtype: str = "uint16",
    descriptions: tuple[str, ...] | None = None,
    fill: int | None = None,
) -> bytes:
    """A small GeoTIFF whose bands are gradients in four directions (down, right, up, left, then again), so which
    source band became which output band shows in the pixels even after a per-band stretch."""
    rows, cols = np.mgrid[0:size, 0:size]
    patterns = (rows, cols, size - rows, size - cols)
    data = np.stack([1000 * (k + 1) + patterns[k % 4] for k in range(bands)]).astype(dtype)
    if fill is not None:
        data[:] = fill
    profile = {"driver": "GTiff", "width": size, "height": size, "count": bands, "dtype": dtype}
    profile |= {"transform": from_origin(*ROTTERDAM, 1.0, 1.0)}
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for k, text in enumerate(descriptions or (), start=1):
            dst.set_band_description(k, text)
    return path.read_bytes()


def upload(client: TestClient, name: str, content: bytes, chunk: int = 16_000, **headers: str) -> dict[str, Any]:
    """Announce and send a file in chunks the way the page does; the last answer."""
    made = client.post("/api/uploads", json={"filename": name, "size": len(content)}, headers=headers)
    assert made.status_code == 201, made.text
    state = made.json()
    for start in range(0, len(content), chunk):
        piece = content[start : start + chunk]
        rng = f"bytes {start}-{start + len(piece) - 1}/{len(content)}"
        sent = client.put(f"/api/uploads/{state['id']}", content=piece, headers={"content-range": rng, **headers})
        assert sent.status_code == 200, sent.text
        state = sent.json()
    return state


def wait_ingest(
    client: TestClient, ingest_id: str, timeout: float = 60.0, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/uploads/ingests/{ingest_id}", headers=headers).json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise TimeoutError(job)


def unique(name: str) -> str:
    return f"{name} {secrets.token_hex(3)}"  # a name per ingest: a taken one is refused (409)


def catalog_entries(settings: Settings) -> set[str]:
    return {p.name for p in settings.catalog_dir.iterdir()}


def home_of_its_own(tmp_path_factory: pytest.TempPathFactory, review_assets: Path) -> Settings:
    """A test home whose catalog is a folder of its own: new_home links the session's shared catalog, which uploads
    must not change under other test modules' feet. It has no demo collection (the demo project's imagery is missing,
    which these tests do not need)."""
    settings = new_home(tmp_path_factory, review_assets)
    (settings.home_abs / "catalog").unlink()
    (settings.home_abs / "catalog").mkdir()
    return settings


@pytest.fixture(scope="module")
def settings(review_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return home_of_its_own(tmp_path_factory, review_assets)


@pytest.fixture(scope="module")
def app(settings: Settings) -> Iterator[TestClient]:
    from review_app.main import create_app

    with TestClient(create_app(settings.model_copy(update={"upload_max_bytes": 4 << 20}))) as client:
        yield client


def test_chunked_upload_resumes_previews_and_ingests_into_a_project(
    app: TestClient, settings: Settings, tmp_path: Path
) -> None:
    content = geotiff(tmp_path / "scene.tif", descriptions=("blue", "green", "red", "nir"))
    made = app.post("/api/uploads", json={"filename": "My scene.tif", "size": len(content)}).json()
    assert made["state"] == "receiving" and made["received"] == 0 and made["chunk_bytes"] == settings.max_body_bytes
    path, half = f"/api/uploads/{made['id']}", len(content) // 2
    first = app.put(path, content=content[:half], headers={"content-range": f"bytes 0-{half - 1}/{len(content)}"})
    assert first.status_code == 200 and first.json()["received"] == half
    # The connection "dropped": the page asks how much arrived and resumes there; a wrong offset is refused.
    assert app.get(path).json()["received"] == half
    again = app.put(path, content=content[:half], headers={"content-range": f"bytes 0-{half - 1}/{len(content)}"})
    assert again.status_code == 409 and f"starts at byte {half}" in again.json()["detail"]
    rest = f"bytes {half}-{len(content) - 1}/{len(content)}"
    done = app.put(path, content=content[half:], headers={"content-range": rest}).json()
    assert done["state"] == "ready" and done["received"] == len(content)
    inspection = done["inspection"]
    assert inspection["count"] == 4 and inspection["crs"] == "EPSG:32631"
    assert inspection["band_map"] == [3, 2, 1, 4]  # the descriptions say B, G, R, NIR
    assert [u["id"] for u in app.get("/api/uploads").json()] == [made["id"]]

    png = app.get(f"{path}/preview.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    picture = np.asarray(Image.open(io.BytesIO(png.content)))
    assert picture.shape[:2] == (96, 96) and picture[..., :3].std() > 10  # a stretched gradient, not a flat image
    assert app.get(f"{path}/preview.png?bands=9,1,1").status_code == 400

    name = unique("My scene")
    started = app.post("/api/uploads/ingests", json={"name": name, "files": [{"upload_id": made["id"]}]})
    assert started.status_code == 202, started.text
    job = wait_ingest(app, started.json()["id"])
    assert job["state"] == "done", job
    collection = job["collection"]
    assert collection.startswith("upload-") and name.split()[-1] in collection
    image = settings.catalog_dir / collection / "My-scene" / "image.tif"
    with rasterio.open(image) as cog:
        red, green, blue, nir = (cog.read(k).astype(int) for k in (1, 2, 3, 4))
        assert cog.descriptions == ("red", "green", "blue", "nir")
    # Source bands: 1 grows down (blue), 2 grows right (green), 3 grows up (red), 4 grows left (nir).
    assert red[0].mean() > 200 > 50 > red[-1].mean() and blue[0].mean() < 50 < 200 < blue[-1].mean()
    assert green[:, 0].mean() < 50 < 200 < green[:, -1].mean() and nir[:, 0].mean() > 200 > 50 > nir[:, -1].mean()
    assert app.get(path).status_code == 404  # the raw upload is gone once ingested (it only cost quota)
    assert not any((settings.catalog_dir / STAGING_DIR).glob("*"))

    created = app.post("/api/projects", json={"name": "from my upload", "imagery": {"collection": collection}})
    assert created.status_code == 201, created.text
    project = wait_ready(app, created.json()["id"])
    west, south, east, north = project["imagery"]["bounds"]
    assert 4.36 < west < east < 4.37 and 51.90 < south < north < 51.92  # Rotterdam


def test_bands_the_file_does_not_name_are_chosen_by_the_user(app: TestClient, tmp_path: Path) -> None:
    state = upload(app, "five.tif", geotiff(tmp_path / "five.tif", bands=5))
    inspection = state["inspection"]
    assert inspection["count"] == 5 and inspection["band_map"] is None and "5 band" in inspection["band_note"]
    name = unique("five bands")
    refused = app.post("/api/uploads/ingests", json={"name": name, "files": [{"upload_id": state["id"]}]})
    assert refused.status_code == 400 and "choose the band for each (1..5)" in refused.json()["detail"]
    same = {"name": name, "files": [{"upload_id": state["id"], "band_map": [1, 1, 2, 3]}]}
    assert app.post("/api/uploads/ingests", json=same).status_code == 422
    out_of_range = {"name": name, "files": [{"upload_id": state["id"], "band_map": [1, 2, 3, 6]}]}
    assert "between 1 and 5" in app.post("/api/uploads/ingests", json=out_of_range).json()["detail"]
    mapped = {"name": name, "files": [{"upload_id": state["id"], "band_map": [5, 4, 3, 2]}]}
    job = wait_ingest(app, app.post("/api/uploads/ingests", json=mapped).json()["id"])
    assert job["state"] == "done", job
    again = app.post("/api/uploads/ingests", json={"name": name, "files": [{"upload_id": state["id"]}]})
    assert again.status_code in (404, 409)  # ingested uploads are gone; the name is taken either way


def _not_a_raster(tmp_path: Path) -> bytes:
    return b"<html>this is a web page saved as .tif</html>\n" * 50


def _no_crs(tmp_path: Path) -> bytes:
    return geotiff(tmp_path / "f.tif", crs=None)


def _one_band(tmp_path: Path) -> bytes:
    return geotiff(tmp_path / "f.tif", bands=1)


def _truncated(tmp_path: Path) -> bytes:
    whole = geotiff(tmp_path / "f.tif", size=300)
    return whole[: len(whole) * 2 // 3]


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (_not_a_raster, "is not a GeoTIFF"),
        (_no_crs, "has no coordinate reference system"),
        (_one_band, "has 1 band(s)"),
        (_truncated, "is truncated or damaged"),
    ],
)
def test_bad_files_are_refused_with_a_message_and_leave_nothing(
    app: TestClient, settings: Settings, tmp_path: Path, make: Any, problem: str
) -> None:
    before = catalog_entries(settings)
    state = upload(app, "bad.tif", make(tmp_path))
    assert state["state"] == "rejected", state
    assert problem in state["error"] and "accepted: GeoTIFF files" in state["error"]
    assert state["inspection"] is None
    folder = settings.layout.path(UPLOADS_KEY)
    assert not list(folder.glob(f"*/{state['id']}/*.tif"))  # the bad bytes are deleted at once
    assert app.get(f"/api/uploads/{state['id']}/preview.png").status_code == 409
    refused = app.post("/api/uploads/ingests", json={"name": unique("bad"), "files": [{"upload_id": state["id"]}]})
    assert refused.status_code == 409 and problem in refused.json()["detail"]
    assert catalog_entries(settings) == before


def test_a_file_of_more_pixels_than_a_project_maps_is_refused(
    app: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("review_app.services.uploads.MAX_PIXELS", 90 * 90)
    state = upload(app, "wide.tif", geotiff(tmp_path / "wide.tif"))  # 96 x 96 px
    assert state["state"] == "rejected" and "96 x 96 px" in state["error"] and "crop it" in state["error"]


def test_empty_too_big_and_wrong_kind_are_refused_when_announced(app: TestClient) -> None:
    empty = app.post("/api/uploads", json={"filename": "empty.tif", "size": 0})
    assert empty.status_code == 400 and "is empty (0 bytes)" in empty.json()["detail"]
    big = app.post("/api/uploads", json={"filename": "huge.tif", "size": 5 << 20})
    assert big.status_code == 413
    assert "PEARL_UPLOAD_MAX_BYTES allows files up to 4.0 MiB" in big.json()["detail"]
    jpeg = app.post("/api/uploads", json={"filename": "photo.jpg", "size": 100})
    assert jpeg.status_code == 400 and "not a .tif or .tiff file" in jpeg.json()["detail"]


def test_chunks_must_fit_their_range_and_the_body_limit(app: TestClient, settings: Settings) -> None:
    made = app.post("/api/uploads", json={"filename": "x.tif", "size": 1000}).json()
    path = f"/api/uploads/{made['id']}"
    assert "Content-Range" in app.put(path, content=b"a" * 10).json()["detail"]
    assert app.put(path, content=b"a" * 10, headers={"content-range": "bytes 0-9/999"}).status_code == 400
    longer = app.put(path, content=b"a" * 20, headers={"content-range": "bytes 0-9/1000"})
    assert longer.status_code == 400 and "longer than its Content-Range" in longer.json()["detail"]
    assert app.get(path).json()["received"] == 0  # nothing beyond the announced range is kept
    oversized = b"a" * (settings.max_body_bytes + 1)
    too_big = app.put(path, content=oversized, headers={"content-range": f"bytes 0-{len(oversized) - 1}/1000"})
    assert too_big.status_code == 413
    assert app.delete(path).status_code == 204 and app.get(path).status_code == 404


def test_a_file_that_fails_in_ingest_leaves_no_collection(app: TestClient, settings: Settings, tmp_path: Path) -> None:
    good = upload(app, "good.tif", geotiff(tmp_path / "good.tif"))
    black = upload(app, "black.tif", geotiff(tmp_path / "black.tif", fill=0))  # readable, but every pixel nodata
    assert good["state"] == black["state"] == "ready"
    before = catalog_entries(settings)
    files = [{"upload_id": good["id"]}, {"upload_id": black["id"]}]
    job = wait_ingest(app, app.post("/api/uploads/ingests", json={"name": unique("half"), "files": files}).json()["id"])
    assert job["state"] == "failed" and "every pixel is nodata" in job["error"]
    assert catalog_entries(settings) == before  # the good file was not left behind as a half collection
    assert not any((settings.catalog_dir / STAGING_DIR).glob("*"))
    assert app.get(f"/api/uploads/{good['id']}").json()["state"] == "ready"  # still there: fix and retry


def test_the_byte_quota_counts_uploads(review_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    from review_app.main import create_app

    settings = home_of_its_own(tmp_path_factory, review_assets).model_copy(update={"quota_bytes": 3 << 20})
    with TestClient(create_app(settings)) as client:
        assert client.post("/api/uploads", json={"filename": "a.tif", "size": 2 << 20}).status_code == 201
        second = client.post("/api/uploads", json={"filename": "b.tif", "size": 2 << 20})
        assert second.status_code == 403 and "PEARL_QUOTA_BYTES" in second.json()["detail"]


def test_uploads_and_their_collections_are_their_owners_only(
    review_assets: Path, tmp_path_factory: pytest.TempPathFactory, issuer: Issuer, tmp_path: Path
) -> None:
    from review_app.main import create_app

    settings = oidc(home_of_its_own(tmp_path_factory, review_assets), issuer)
    alice = {"authorization": f"Bearer {issuer.token('alice')}"}
    bob = {"authorization": f"Bearer {issuer.token('bob')}"}
    with TestClient(create_app(settings)) as client:
        content = geotiff(tmp_path / "alice.tif")
        made = client.post("/api/uploads", json={"filename": "alice.tif", "size": len(content)}, headers=alice).json()
        path, most = f"/api/uploads/{made['id']}", len(content) - 100
        first = {"content-range": f"bytes 0-{most - 1}/{len(content)}", **alice}
        assert client.put(path, content=content[:most], headers=first).json()["received"] == most
        assert client.get(path, headers=bob).status_code == 404
        assert client.get("/api/uploads", headers=bob).json() == []
        rng = f"bytes {len(content) - 100}-{len(content) - 1}/{len(content)}"
        assert client.put(path, content=content[-100:], headers={"content-range": rng, **bob}).status_code == 404
        assert client.delete(path, headers=bob).status_code == 404
        done = client.put(path, content=content[-100:], headers={"content-range": rng, **alice}).json()
        assert done["state"] == "ready"
        assert client.get(f"{path}/preview.png", headers=bob).status_code == 404
        body = {"name": unique("alice's"), "files": [{"upload_id": made["id"]}]}
        assert client.post("/api/uploads/ingests", json=body, headers=bob).status_code == 404
        started = client.post("/api/uploads/ingests", json=body, headers=alice).json()
        assert client.get(f"/api/uploads/ingests/{started['id']}", headers=bob).status_code == 404
        job = wait_ingest(client, started["id"], headers=alice)
        assert job["state"] == "done", job
        new = {"name": "bob's", "imagery": {"collection": job["collection"]}}
        refused = client.post("/api/projects", json=new, headers=bob)
        assert refused.status_code == 404 and job["collection"] in refused.json()["detail"]
        assert client.post("/api/projects", json=new | {"name": "alice's"}, headers=alice).status_code == 201


def test_several_files_with_their_own_band_maps_make_one_collection(
    app: TestClient, settings: Settings, tmp_path: Path
) -> None:
    first = upload(app, "north.tif", geotiff(tmp_path / "north.tif", descriptions=("blue", "green", "red", "nir")))
    second = upload(app, "south.tif", geotiff(tmp_path / "south.tif", bands=5))
    files = [{"upload_id": first["id"]}, {"upload_id": second["id"], "band_map": [3, 2, 1, 4]}]
    job = wait_ingest(app, app.post("/api/uploads/ingests", json={"name": unique("two"), "files": files}).json()["id"])
    assert job["state"] == "done", job
    collection = settings.catalog_dir / job["collection"]
    assert sorted(p.name for p in collection.iterdir() if p.is_dir()) == ["north", "south"]
    for item in ("north", "south"):  # both mapped B, G, R, NIR -> R, G, B, NIR: red grows up, blue grows down
        with rasterio.open(collection / item / "image.tif") as cog:
            red, blue = cog.read(1).astype(int), cog.read(3).astype(int)
        assert red[0].mean() > red[-1].mean() + 150 and blue[-1].mean() > blue[0].mean() + 150


def test_the_preview_of_a_file_whose_nir_is_flagged_alpha_is_not_blank(app: TestClient, tmp_path: Path) -> None:
    path = tmp_path / "rgba.tif"
    profile = {"driver": "GTiff", "width": 64, "height": 64, "count": 4, "dtype": "uint8", "crs": "EPSG:3857"}
    with rasterio.open(
        path, "w", transform=from_origin(0, 640, 10, 10), photometric="RGB", alpha="YES", **profile
    ) as dst:
        dst.write(np.stack([np.full((64, 64), v, np.uint8) for v in (200, 40, 40, 120)]))
        dst.write(np.full((64, 32), 10, np.uint8), 1, window=rasterio.windows.Window(32, 0, 32, 64))
    state = upload(app, "rgba.tif", path.read_bytes())
    assert state["inspection"]["band_map"] is None and "alpha" in state["inspection"]["band_note"]
    picture = np.asarray(Image.open(io.BytesIO(app.get(f"/api/uploads/{state['id']}/preview.png").content)))
    assert (picture[..., 3] == 255).all()  # band 4 (NIR, flagged alpha) does not hide the picture
    assert picture[32, 8, 0] == 255 and picture[32, 56, 0] == 0  # red west half, dark east half
