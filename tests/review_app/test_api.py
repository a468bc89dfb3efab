"""The REST API and websocket along a mapper's loop: AOI, inference, labels, classes, retrain, checkpoints, exports."""

from __future__ import annotations

import io
import time
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from fastapi.testclient import TestClient

from pearl_pipelines.labels.store import LabelStore
from pearl_pipelines.ml.versions import ModelVersion
from pearl_pipelines.settings import Settings
from tests.review_app.conftest import wait_job
from tests.review_app.data import class_places


def _bounds(aoi: dict[str, Any]) -> tuple[float, float, float, float]:
    ring = aoi["geometry"]["coordinates"][0]
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    return min(xs), min(ys), max(xs), max(ys)


def _point(xy: tuple[float, float]) -> dict[str, Any]:
    return {"type": "Point", "coordinates": list(xy)}


def test_openapi_documents_every_route(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/api/projects",
        "/api/projects/{project_id}/aois",
        "/api/projects/{project_id}/labels",
        "/api/projects/{project_id}/labels/undo",
        "/api/projects/{project_id}/labels/export.gpkg",
        "/api/projects/{project_id}/retrain",
        "/api/projects/{project_id}/checkpoints/compare",
        "/api/projects/{project_id}/metrics",
        "/api/projects/{project_id}/aois/{aoi_id}/export/areas.csv",
        "/tiles/predictions/{project_id}/{aoi_id}/{version}/tiles/{tileMatrixSetId}/{z}/{x}/{y}",
    ):
        assert path in paths, path
    tile = paths["/tiles/imagery/{project_id}/tiles/{tileMatrixSetId}/{z}/{x}/{y}"]["get"]
    names = {p["name"] for p in tile["parameters"]}
    assert "project_id" in names and not names & {"url", "expression", "algorithm"}
    assert not any(
        "expression" in {p["name"] for p in op.get("parameters", [])} for v in paths.values() for op in v.values()
    )


def test_demo_project_created_at_startup(project: dict[str, Any]) -> None:
    assert project["name"].startswith("Demo")
    assert project["imagery_source"] == {"source": "local", "collection": "demo"}
    assert project["class_schema_id"] == "chesapeake9"
    assert [c["name"] for c in project["classes"]][:2] == ["water", "emergent_wetlands"]
    assert project["model"]["ready"] and project["model"]["current_version"] == 0
    assert project["imagery"]["tilejson"]["false_color"].endswith("bidx=4&bidx=1&bidx=2")


def test_inference_writes_a_prediction_layer(client: TestClient, aoi: dict[str, Any]) -> None:
    layer = aoi["prediction"]
    assert layer["version"] == 1 and layer["embeddings"]
    tilejson = client.get(layer["tilejson"]["classes"]).json()
    assert tilejson["tiles"][0].endswith(".png?tilesize=512")
    west, south, east, north = tilejson["bounds"]
    assert west < east and south < north


def test_labels_crud_undo_and_exports(client: TestClient, settings: Settings, aoi: dict[str, Any]) -> None:
    water = class_places(settings, _bounds(aoi), "water", n=2)
    store = LabelStore(settings.resolved_label_store_url)
    before = len(store.list_labels(1))
    first = client.post("/api/projects/1/labels", json={"class_name": "water", "geometry": _point(water[0][0])})
    assert first.status_code == 201, first.text
    assert first.json()["properties"]["aoi_id"] == aoi["id"]  # found the AOI that contains it
    assert len(store.list_labels(1)) == before + 1  # committed before the response

    assert client.delete(f"/api/projects/1/labels/{first.json()['id']}").status_code == 200
    assert len(store.list_labels(1)) == before
    undo = client.post("/api/projects/1/labels/undo").json()
    assert undo["restored"] and undo["undone"]["id"] == first.json()["id"]
    assert len(store.list_labels(1)) == before + 1

    geojson = client.get("/api/projects/1/labels/export.geojson")
    assert geojson.headers["content-type"] == "application/geo+json"
    assert first.json()["id"] in [f["id"] for f in geojson.json()["features"]]
    gpkg = client.get("/api/projects/1/labels/export.gpkg")
    assert gpkg.status_code == 200 and gpkg.content[:16] == b"SQLite format 3\x00"
    frame = gpd.read_file(io.BytesIO(gpkg.content), layer="labels")
    assert frame.crs.to_epsg() == 4326 and "water" in set(frame["class_name"])


def test_classes_add_recolour_rename(client: TestClient, settings: Settings) -> None:
    added = client.post("/api/projects/1/classes", json={"name": "solar_panels", "color": "#FF7F0E"})
    assert added.status_code == 201, added.text
    assert added.json()[-1] == {
        "index": 9,
        "name": "solar_panels",
        "title": "Solar panels",
        "color": "#ff7f0e",
        "label_count": 0,
    }
    recoloured = client.patch("/api/projects/1/classes/solar_panels", json={"color": "#123456"}).json()
    assert recoloured[-1]["color"] == "#123456"
    renamed = client.patch("/api/projects/1/classes/solar_panels", json={"name": "solar", "title": "Solar"}).json()
    assert renamed[-1]["name"] == "solar" and renamed[-1]["index"] == 9
    assert LabelStore(settings.resolved_label_store_url).schema(1).names[-1] == "solar"


def test_retrain_updates_layer_metrics_and_checkpoints(
    client: TestClient, settings: Settings, aoi: dict[str, Any]
) -> None:
    bounds = _bounds(aoi)
    for name, n in (("water", 3), ("tree_canopy", 3), ("structures", 2)):
        for place in class_places(settings, bounds, name, n=n):
            r = client.post("/api/projects/1/labels", json={"class_name": name, "geometry": _point(place[0])})
            assert r.status_code == 201, r.text
    (square,) = class_places(settings, bounds, "tree_canopy", n=1, size_px=12)
    polygon = {"type": "Polygon", "coordinates": [[list(p) for p in square]]}
    assert (
        client.post("/api/projects/1/labels", json={"class_name": "tree_canopy", "geometry": polygon}).status_code
        == 201
    )

    with client.websocket_connect("/api/projects/1/ws") as ws:
        assert ws.receive_json()["type"] == "hello"
        started = time.perf_counter()
        job = client.post("/api/projects/1/retrain", json={"aoi_id": aoi["id"]})
        assert job.status_code == 202, job.text
        events = []
        while True:
            event = ws.receive_json()
            events.append(event)
            if event["type"] == "prediction_updated":
                updated_after = time.perf_counter() - started
            if event["type"] == "job" and event["state"] in ("done", "failed"):
                break
    assert event["state"] == "done", event
    update = next(e for e in events if e["type"] == "prediction_updated")
    assert update["aoi_id"] == aoi["id"] and update["version"] == aoi["prediction"]["version"] + 1
    assert updated_after < 5.0  # live: head-only re-prediction from cached embeddings
    assert any(e["type"] == "job" and 0 < e["progress"] < 1 for e in events)  # progress came over the socket

    metrics = client.get("/api/projects/1/metrics").json()
    assert metrics["model_version"] == update["model_version"] == 1
    assert {"water", "tree_canopy", "structures"} <= set(metrics["classes"])
    assert len(metrics["confusion"]) == len(metrics["classes"])
    assert all(0 <= c["f1"] <= 1 for c in metrics["per_class"])

    saved = client.post("/api/projects/1/checkpoints", json={"name": "first pass"})
    assert saved.status_code == 201 and saved.json()["current"] and saved.json()["name"] == "first pass"
    ids = [c["id"] for c in client.get("/api/projects/1/checkpoints").json()]
    assert ids == [1, 0]
    compare = client.get("/api/projects/1/checkpoints/compare", params={"a": 0, "b": 1}).json()
    assert {r["class_name"] for r in compare["rows"]} >= {"water", "tree_canopy"}
    assert any(r["f1_a"] is not None and r["f1_b"] is not None for r in compare["rows"])

    restore = client.post("/api/projects/1/checkpoints/0/restore").json()
    assert wait_job(client, restore["id"])["state"] == "done"
    assert client.get("/api/projects/1").json()["model"]["current_version"] == 0
    current = [c for c in client.get("/api/projects/1/checkpoints").json() if c["current"]]
    assert [c["id"] for c in current] == [0]


def test_exports_of_the_classified_map(client: TestClient, aoi: dict[str, Any]) -> None:
    cog = client.get(f"/api/projects/1/aois/{aoi['id']}/export/classes.tif")
    assert cog.status_code == 200
    with rasterio.MemoryFile(cog.content) as memfile, memfile.open() as src:
        assert src.dtypes[0] == "uint8" and src.nodata == 255 and src.colormap(1)[0][:3] == (31, 95, 214)
        data = src.read(1)
        assert (data != 255).any() and (data == 255).any()  # AOI pixels classified, bbox corners outside it
    csv = client.get(f"/api/projects/1/aois/{aoi['id']}/export/areas.csv")
    assert csv.headers["content-type"].startswith("text/csv")
    rows = [line.split(",") for line in csv.text.strip().splitlines()]
    assert rows[0] == ["class_index", "class_name", "title", "pixels", "area_m2", "area_ha", "percent"]
    percent = sum(float(r[-1]) for r in rows[1:])
    assert percent == pytest.approx(100, abs=0.1)
    assert int(np.sum([int(r[3]) for r in rows[1:]])) == int((data != 255).sum())


def test_second_project_from_another_collection(client: TestClient) -> None:
    created = client.post(
        "/api/projects",
        json={
            "name": "Train A",
            "imagery": {"source": "local", "collection": "train-a"},
            "class_schema": "chesapeake4",
        },
    )
    assert created.status_code == 201, created.text
    project_id = created.json()["id"]
    assert [c["name"] for c in created.json()["classes"]] == ["water", "tree_canopy", "field", "built"]
    deadline = time.monotonic() + 60
    while (project := client.get(f"/api/projects/{project_id}").json())["imagery"]["state"] != "ready":
        assert project["imagery"]["state"] in ("missing", "building"), project["imagery"]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert project["imagery"]["bounds"] != client.get("/api/projects/1").json()["imagery"]["bounds"]
    listed = {p["name"]: p for p in client.get("/api/projects").json()}
    train = listed["Train A"]
    assert (train["id"], train["class_count"], train["role"]) == (project_id, 4, "owner")
    assert client.post("/api/projects", json={"name": "Train A", "imagery": {"collection": "demo"}}).status_code == 422


def test_retrain_strategy_is_chosen_per_project(client: TestClient, settings: Settings, aoi: dict[str, Any]) -> None:
    got = client.get("/api/projects/1/strategy").json()
    assert got["strategy"] == "logistic_regression"
    assert {o["name"] for o in got["available"]} == {"logistic_regression", "mlp", "spatial_ensemble"}
    bad = client.put("/api/projects/1/strategy", json={"strategy": "svm"})
    assert bad.status_code == 422 and "mlp" in bad.text  # says what is accepted
    assert client.get("/api/projects/1/strategy").json()["strategy"] == "logistic_regression"  # nothing changed

    bounds = _bounds(aoi)
    for name in ("water", "tree_canopy"):  # enough labels for the mlp whatever ran before
        for place in class_places(settings, bounds, name, n=3):
            client.post("/api/projects/1/labels", json={"class_name": name, "geometry": _point(place[0])})
    for strategy in ("mlp", "spatial_ensemble"):
        assert client.put("/api/projects/1/strategy", json={"strategy": strategy}).json()["strategy"] == strategy
        job = client.post("/api/projects/1/retrain", json={"aoi_id": aoi["id"]}).json()
        assert wait_job(client, job["id"])["state"] == "done"
        number = client.get("/api/projects/1").json()["model"]["current_version"]
        version = ModelVersion.load(settings.home_abs / "review" / "projects" / "1" / "models" / f"v{number}")
        assert version.strategy == strategy
        assert client.get("/api/projects/1/metrics").json()["model_version"] == number
    assert client.put("/api/projects/1/strategy", json={"strategy": "logistic_regression"}).status_code == 200
