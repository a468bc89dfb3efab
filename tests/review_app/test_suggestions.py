"""GET /api/projects/{id}/aois/{aoi_id}/suggestions: "label here next" points over a predicted AOI, real HTTP bodies."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from scipy.spatial.distance import cdist, pdist
from shapely.geometry import Point, shape

from pearl_pipelines.layout import ProjectPaths
from pearl_pipelines.ml.embeddings import EmbeddingCache
from pearl_pipelines.settings import Settings
from review_app.geometry import inside
from tests.review_app.conftest import center, square


def _url(aoi_id: int, project_id: int = 1) -> str:
    return f"/api/projects/{project_id}/aois/{aoi_id}/suggestions"


def _pixels(body: dict[str, Any]) -> np.ndarray:
    return np.array([[f["properties"]["row"], f["properties"]["col"]] for f in body["features"]], np.float64)


def test_n_points_inside_the_aoi_most_uncertain_first(
    client: TestClient, settings: Settings, project: dict[str, Any], aoi: dict[str, Any]
) -> None:
    response = client.get(_url(aoi["id"]), params={"n": 12})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["type"] == "FeatureCollection" and body["aoi_id"] == aoi["id"]
    assert body["model_version"] == 0 and body["method"] == "margin"
    features = body["features"]
    assert len(features) == 12
    area = shape(aoi["geometry"])
    names = {c["name"] for c in project["classes"]}
    for rank, feature in enumerate(features, start=1):
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Point"
        assert inside(area, Point(feature["geometry"]["coordinates"]))
        props = feature["properties"]
        assert props["rank"] == rank and 0 <= props["score"] <= 1 and props["predicted_class"] in names
    scores = [f["properties"]["score"] for f in features]
    assert scores == sorted(scores, reverse=True)
    assert pdist(_pixels(body)).min() >= body["spacing_px"] > 1
    # The pixels named are inside the AOI's cached area too (valid), where inference put embeddings.
    cache = EmbeddingCache.open(ProjectPaths.of(settings.home_abs, 1).embeddings_dir(aoi["id"]))
    rows, cols = _pixels(body).astype(int).T
    assert cache.valid[rows, cols].all()
    # Deterministic: the same request gives the same points; the default asks for 20.
    assert client.get(_url(aoi["id"]), params={"n": 12}).json() == body
    assert len(client.get(_url(aoi["id"])).json()["features"]) == 20


def test_entropy_and_classes_added_since_the_last_retrain(client: TestClient, aoi: dict[str, Any]) -> None:
    added = client.post("/api/projects/1/classes", json={"name": "solar_panels", "color": "#ff7f0e"})
    assert added.status_code == 201, added.text
    body = client.get(_url(aoi["id"]), params={"n": 8, "method": "entropy"}).json()
    assert body["method"] == "entropy" and len(body["features"]) == 8
    # A class nobody has labelled yet has no head row: the model never predicts it, so it never shows up here.
    assert all(f["properties"]["predicted_class"] != "solar_panels" for f in body["features"])


def test_a_labelled_place_is_not_suggested_again(client: TestClient, aoi: dict[str, Any]) -> None:
    before = client.get(_url(aoi["id"]), params={"n": 10}).json()
    first = before["features"][0]
    label = client.post(
        "/api/projects/1/labels",
        json={"class_name": "water", "geometry": first["geometry"], "aoi_id": aoi["id"]},
    )
    assert label.status_code == 201, label.text
    after = client.get(_url(aoi["id"]), params={"n": 10}).json()
    labelled = np.array([[first["properties"]["row"], first["properties"]["col"]]], np.float64)
    assert cdist(_pixels(after), labelled).min() >= after["spacing_px"]
    assert first["geometry"]["coordinates"] not in [f["geometry"]["coordinates"] for f in after["features"]]


def test_bad_requests_say_what_is_accepted(client: TestClient, project: dict[str, Any], aoi: dict[str, Any]) -> None:
    for n in (0, 501, "many"):
        response = client.get(_url(aoi["id"]), params={"n": n})
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == "query.n"
    assert "500" in client.get(_url(aoi["id"]), params={"n": 501}).json()["detail"]
    wrong = client.get(_url(aoi["id"]), params={"method": "random"})
    assert wrong.status_code == 422 and "'margin' or 'entropy'" in wrong.json()["detail"]
    assert client.get(_url(999)).status_code == 404
    assert client.get(_url(aoi["id"], project_id=99)).status_code == 404

    lon, lat = center(project)
    fresh = client.post("/api/projects/1/aois", json={"name": "not predicted", "geometry": square(lon, lat, 0.001)})
    assert fresh.status_code == 201, fresh.text
    conflict = client.get(_url(fresh.json()["id"]))
    assert conflict.status_code == 409
    assert "run inference" in conflict.json()["detail"]


def test_the_route_is_documented(client: TestClient) -> None:
    route = client.get("/openapi.json").json()["paths"]["/api/projects/{project_id}/aois/{aoi_id}/suggestions"]["get"]
    assert {p["name"] for p in route["parameters"]} == {"project_id", "aoi_id", "n", "method"}
    assert {"404", "409", "422"} <= set(route["responses"])
