"""Read-only share links through the real app: create, list, open, tiles, download, frozen after a retrain and a
recolour, expire, revoke, the public-maps list, and a share token that opens nothing else."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pearl_pipelines.labels.shares import ShareRow
from review_app.auth.guard import app_routes
from review_app.auth.rules import rule_for
from tests.review_app.conftest import center, square, wait_job
from tests.review_app.data import class_places

TILE = "/tiles/WebMercatorQuad/{z}/{x}/{y}.png"


def _bounds(aoi: dict[str, Any]) -> tuple[float, float, float, float]:
    ring = aoi["geometry"]["coordinates"][0]
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    return min(xs), min(ys), max(xs), max(ys)


def _tile_of(lon: float, lat: float, z: int) -> tuple[int, int, int]:
    import morecantile

    t = morecantile.tms.get("WebMercatorQuad").tile(lon, lat, z)
    return t.z, t.x, t.y


def _share(client: TestClient, aoi_ids: list[int], **more: Any) -> dict[str, Any]:
    body = {"title": "Farm survey", "aoi_ids": aoi_ids, "days": 7, **more}
    made = client.post("/api/projects/1/shares", json=body)
    assert made.status_code == 201, made.text
    return made.json()


def _token(share: dict[str, Any]) -> str:
    return share["token"]


@pytest.fixture(scope="module")
def second_aoi(client: TestClient, project: dict[str, Any]) -> dict[str, Any]:
    """A second predicted AOI, east of the first one (the `aoi` fixture sits at the imagery's centre)."""
    lon, lat = center(project)
    created = client.post(
        "/api/projects/1/aois", json={"name": "east field", "geometry": square(lon + 0.005, lat, 0.0015)}
    )
    assert created.status_code == 201, created.text
    job = client.post(f"/api/projects/1/aois/{created.json()['id']}/inference").json()
    assert wait_job(client, job["id"])["state"] == "done"
    return client.get(f"/api/projects/1/aois/{created.json()['id']}").json()


def test_share_opens_its_frozen_maps_tiles_legend_areas_and_cog(
    client: TestClient, aoi: dict[str, Any], second_aoi: dict[str, Any]
) -> None:
    share = _share(client, [aoi["id"], second_aoi["id"], aoi["id"]], listed=True)
    token = _token(share)
    assert token.startswith("pearl_share_") and len(token) > 50
    assert share["url"] == f"/share/{token}" and share["aoi_ids"] == [aoi["id"], second_aoi["id"]]
    assert share["state"] == "live" and share["area_ha"] > 0

    view = client.get(f"/api/shares/{token}")
    assert view.status_code == 200, view.text
    body = view.json()
    assert body["title"] == "Farm survey"
    assert [m["aoi_id"] for m in body["maps"]] == [aoi["id"], second_aoi["id"]]
    classes = client.get("/api/projects/1").json()["classes"]
    assert [(c["name"], c["color"]) for c in body["legend"]] == [(c["name"], c["color"]) for c in classes]
    first = body["maps"][0]
    assert first["model_version"] == aoi["prediction"]["model_version"]
    assert first["layer_version"] == aoi["prediction"]["version"]
    # The area table matches the project's own CSV of the same map, to the hectare's fourth decimal.
    csv_rows = client.get(f"/api/projects/1/aois/{aoi['id']}/export/areas.csv").text.strip().splitlines()[1:]
    own = {r.split(",")[1]: float(r.split(",")[5]) for r in csv_rows}
    assert {a["class_name"]: a["area_ha"] for a in first["areas"]} == own
    assert round(sum(a["area_ha"] for m in body["maps"] for a in m["areas"]), 4) == share["area_ha"]
    # Nothing of the project beyond the maps: no labels, members, other versions, project id or name.
    text = view.text
    for absent in ("labels", "members", "checkpoint", "project", "Demo"):
        assert absent not in text

    # The COG download is the map as it was shared (the project's own export today).
    cog = client.get(first["download"])
    assert cog.status_code == 200 and cog.headers["content-type"].startswith("image/tiff")
    assert cog.content == client.get(f"/api/projects/1/aois/{aoi['id']}/export/classes.tif").content
    areas_csv = client.get(first["areas_csv"])
    assert areas_csv.status_code == 200 and areas_csv.text.startswith("class_index,class_name")

    # Map tiles (the frozen legend's colours) and imagery tiles (only inside the AOIs' boxes).
    west, south, east, north = _bounds(aoi)
    z, x, y = _tile_of((west + east) / 2, (south + north) / 2, 16)
    tile = client.get(f"/tiles/shares/{token}/maps/{aoi['id']}" + TILE.format(z=z, x=x, y=y))
    assert tile.status_code == 200, tile.text
    rgba = np.asarray(Image.open(io.BytesIO(tile.content)).convert("RGBA"))
    colours = {"#{:02x}{:02x}{:02x}".format(*p[:3]) for p in rgba[rgba[..., 3] > 0].reshape(-1, 4)}
    assert colours and colours <= {c["color"].lower() for c in body["legend"]}
    imagery = client.get(f"/tiles/shares/{token}/imagery" + TILE.format(z=z, x=x, y=y) + "?bidx=1&bidx=2&bidx=3")
    assert imagery.status_code == 200, imagery.text
    alpha = np.asarray(Image.open(io.BytesIO(imagery.content)).convert("RGBA"))[..., 3]
    assert alpha.any()
    # A z16 tile is ~600 m across; the AOI's box ~450 m: part of the tile is transparent (outside the box).
    z14 = _tile_of((west + east) / 2, (south + north) / 2, 14)
    wide = client.get(f"/tiles/shares/{token}/imagery" + TILE.format(z=z14[0], x=z14[1], y=z14[2]))
    wide_alpha = np.asarray(Image.open(io.BytesIO(wide.content)).convert("RGBA"))[..., 3]
    assert 0 < (wide_alpha > 0).mean() < 0.5
    # Far from the AOIs: the uniform 404, though the project's imagery is there.
    far = _tile_of(west - 0.01, south - 0.01, 16)
    assert client.get(f"/tiles/shares/{token}/imagery" + TILE.format(z=far[0], x=far[1], y=far[2])).status_code == 404
    # The TileJSON's bounds are the AOIs' union, not the imagery's.
    tilejson = client.get(body["imagery_tilejson"]).json()
    assert tilejson["bounds"] == pytest.approx(body["bounds"], abs=1e-6)
    # The page is served for the link; the public list links it.
    page = client.get(f"/share/{token}")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    listed = client.get("/api/public-maps").json()
    assert {"title": "Farm survey", "url": f"/share/{token}"}.items() <= listed[0].items()


def test_share_stays_frozen_after_a_retrain_and_a_recolour(
    client: TestClient, settings: Any, aoi: dict[str, Any]
) -> None:
    share = _share(client, [aoi["id"]])
    token = _token(share)
    before = client.get(f"/api/shares/{token}").json()
    cog_before = hashlib.sha256(client.get(before["maps"][0]["download"]).content).hexdigest()
    bounds = _bounds(aoi)
    for name in ("water", "tree_canopy", "structures"):
        for place in class_places(settings, bounds, name, n=2):
            label = {"class_name": name, "geometry": {"type": "Point", "coordinates": list(place[0])}}
            assert client.post("/api/projects/1/labels", json=label).status_code == 201
    job = client.post("/api/projects/1/retrain", json={"aoi_id": aoi["id"]})
    assert job.status_code == 202, job.text
    assert wait_job(client, job.json()["id"])["state"] == "done"
    now = client.get(f"/api/projects/1/aois/{aoi['id']}").json()["prediction"]
    assert now["version"] > before["maps"][0]["layer_version"]  # the project's map moved on (old layer deleted)
    recolour = client.patch("/api/projects/1/classes/water", json={"color": "#ff00ff"})
    assert recolour.status_code == 200, recolour.text

    after = client.get(f"/api/shares/{token}").json()
    assert after == before
    assert hashlib.sha256(client.get(after["maps"][0]["download"]).content).hexdigest() == cog_before
    water = next(c for c in after["legend"] if c["name"] == "water")
    assert water["color"].lower() != "#ff00ff"


def test_owner_lists_and_revokes_and_expired_links_are_404(client: TestClient, aoi: dict[str, Any]) -> None:
    share = _share(client, [aoi["id"]], title="to revoke")
    token = _token(share)
    listed = client.get("/api/projects/1/shares").json()
    mine = next(s for s in listed if s["id"] == share["id"])
    assert mine["state"] == "live" and "token" not in mine and mine["url"] is None  # not listed: link shown once
    with client.app.state.services.shares.shares.store.session() as s:  # type: ignore[attr-defined]
        assert token not in s.get(ShareRow, share["id"]).digest  # stored as an HMAC only

    revoked = client.delete(f"/api/projects/1/shares/{share['id']}")
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    paths = client.app.state.services.states.paths(1)  # type: ignore[attr-defined]
    assert not paths.share_dir(share["id"]).exists()  # its copy is gone
    assert client.delete("/api/projects/1/shares/987654").status_code == 404

    expired = _share(client, [aoi["id"]], title="old", listed=True)
    with client.app.state.services.store.session() as s:  # type: ignore[attr-defined]
        s.get(ShareRow, expired["id"]).expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    states = {s["id"]: s["state"] for s in client.get("/api/projects/1/shares").json()}
    assert states[expired["id"]] == "expired"
    assert all(m["title"] != "old" for m in client.get("/api/public-maps").json())

    # Revoked, expired, unknown and malformed links: the same bare 404 on every share route.
    z, x, y = _tile_of(*center(client.get("/api/projects/1").json()), 16)
    for bad in (token, _token(expired), "pearl_share_" + "A" * 43, "nope", "x" * 500):
        for path in (
            f"/share/{bad}",
            f"/api/shares/{bad}",
            f"/api/shares/{bad}/aois/{aoi['id']}/classes.tif",
            f"/api/shares/{bad}/aois/{aoi['id']}/areas.csv",
            f"/tiles/shares/{bad}/imagery" + TILE.format(z=z, x=x, y=y),
            f"/tiles/shares/{bad}/maps/{aoi['id']}" + TILE.format(z=z, x=x, y=y),
        ):
            got = client.get(path)
            assert (got.status_code, got.json()) == (404, {"detail": "Not Found"}), (path, got.text)


def test_share_requests_that_are_wrong_say_what_is_accepted(
    client: TestClient, aoi: dict[str, Any], settings: Any
) -> None:
    cases = [
        ({"title": "x", "aoi_ids": [aoi["id"]], "days": settings.share_max_days + 1}, 422, "PEARL_SHARE_MAX_DAYS"),
        ({"title": "", "aoi_ids": [aoi["id"]]}, 422, "title"),
        ({"title": "x", "aoi_ids": []}, 422, "aoi_ids"),
        ({"title": "x", "aoi_ids": [987654]}, 404, "987654"),
        ({"title": "bad\x00", "aoi_ids": [aoi["id"]]}, 422, "control character"),
    ]
    for body, code, words in cases:
        got = client.post("/api/projects/1/shares", json=body)
        assert got.status_code == code and words in got.json()["detail"], (body, got.text)
    lon, lat = center(client.get("/api/projects/1").json())
    fresh = client.post("/api/projects/1/aois", json={"name": "unmapped", "geometry": square(lon - 0.004, lat, 0.001)})
    got = client.post("/api/projects/1/shares", json={"title": "x", "aoi_ids": [fresh.json()["id"]]})
    assert got.status_code == 409 and "predict it first" in got.json()["detail"]
    assert not list((client.app.state.services.states.paths(1).root / "shares").glob(".new-*"))  # type: ignore[attr-defined]


def test_a_share_token_grants_nothing_else(client: TestClient, aoi: dict[str, Any]) -> None:
    """Local mode signs loopback callers in without a token; a share token sent as one is refused (401) everywhere
    but the share routes (the every-route x every-role test in test_auth.py covers oidc mode, query parameter too)."""
    token = _token(_share(client, [aoi["id"]], title="scoped"))
    bearer = {"authorization": f"Bearer {token}"}
    checked = 0
    for method, template in app_routes(client.app):  # type: ignore[arg-type]
        rule = rule_for(method, template)
        if method != "GET" or rule is None or rule.scope in ("public", "share") or "{" in template:
            continue
        got = client.get(template, headers=bearer)
        assert got.status_code == 401, (template, got.text)
        checked += 1
    assert checked >= 4
    assert client.get("/api/projects/1/labels", headers=bearer).status_code == 401
    z, x, y = _tile_of(*center(client.get("/api/projects/1").json()), 15)
    tile = f"/tiles/imagery/1/tiles/WebMercatorQuad/{z}/{x}/{y}.png?access_token={token}"
    assert client.get(tile).status_code == 401


def test_share_links_never_reach_a_log_line() -> None:
    """The token rides in the link's path (uvicorn's access log repeats it): its `pearl_` shape is redacted."""
    from pearl_pipelines.labels.shares import SHARE_TOKEN_PREFIX
    from review_app.log_redaction import redact

    token = SHARE_TOKEN_PREFIX + "Zm9vYmFyYmF6cXV4cXV1eF9zb21lX3JhbmRvbV9ieXRlcw"
    for line in (
        f'127.0.0.1:5000 - "GET /share/{token} HTTP/1.1" 200',
        f'"GET /tiles/shares/{token}/imagery/tiles/WebMercatorQuad/16/1/2.png HTTP/1.1" 404',
        f"GET /api/shares/{token.replace('_', '%5F')}",
    ):
        assert token not in redact(line) and token[len(SHARE_TOKEN_PREFIX) :] not in redact(line), redact(line)
