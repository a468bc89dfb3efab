"""Per-user quotas (audit item 4): a user who creates projects or AOIs in a loop is stopped by a 403 that names the
quota, nothing past the quota is stored, and the server's disk and memory stay bounded while they try."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from pearl_pipelines.settings import Settings
from review_app.services.quotas import tree_bytes
from tests.conftest import free_port
from tests.review_app.conftest import center, new_home, square, wait_job, wait_ready
from tests.review_app.servers import log_path, ready_project, uvicorn


def new_project(name: str = "mine") -> dict[str, Any]:
    return {"name": name, "imagery": {"source": "local", "collection": "demo"}}


def _quota_client(settings: Settings, **quotas: int) -> TestClient:
    from review_app.main import create_app

    return TestClient(create_app(settings.model_copy(update=quotas)))


def test_project_quota_stops_a_loop_and_names_the_quota(
    review_assets: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with _quota_client(new_home(tmp_path_factory, review_assets), quota_projects=3) as client:
        answers = [client.post("/api/projects", json=new_project(f"mine {i}")) for i in range(6)]
        assert [a.status_code for a in answers] == [201, 201, 201, 403, 403, 403]
        assert "PEARL_QUOTA_PROJECTS" in answers[3].json()["detail"] and "3" in answers[3].json()["detail"]
        names = [p["name"] for p in client.get("/api/projects").json()]
        assert sorted(n for n in names if n.startswith("mine")) == ["mine 0", "mine 1", "mine 2"]  # none past it


def _my_project(client: TestClient) -> dict[str, Any]:
    """A project the caller created (so the caller owns it and its bytes are charged to them), ready."""
    created = client.post("/api/projects", json=new_project())
    assert created.status_code == 201, created.text
    return wait_ready(client, created.json()["id"])


def test_aoi_quota(review_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    with _quota_client(new_home(tmp_path_factory, review_assets), quota_aois=2) as client:
        project = _my_project(client)
        lon, lat = center(project)
        path = f"/api/projects/{project['id']}/aois"
        codes = [client.post(path, json={"geometry": square(lon, lat, 0.001)}).status_code for _ in range(3)]
        assert codes == [201, 201, 403]
        assert len(client.get(path).json()) == 2


def test_byte_quota_counts_layers_caches_and_imagery(
    review_assets: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    settings = new_home(tmp_path_factory, review_assets)
    with _quota_client(settings) as client:
        project = _my_project(client)
        services = client.app.state.services  # type: ignore[attr-defined]
        before = services.quotas.bytes_of([project["id"]])
        assert before >= tree_bytes(services.states.imagery_path(project["id"])) > 0  # the mosaic is charged
        lon, lat = center(project)
        aoi = client.post(f"/api/projects/{project['id']}/aois", json={"geometry": square(lon, lat, 0.002)}).json()
        job = client.post(f"/api/projects/{project['id']}/aois/{aoi['id']}/inference").json()
        assert wait_job(client, job["id"])["state"] == "done"
        after = services.quotas.bytes_of([project["id"]])
        assert after > before  # the prediction layer and the embedding cache
    # The same home with a quota just under what it holds now: more work is refused, reading still works.
    with _quota_client(settings, quota_bytes=max(after - 1, 1 << 20)) as client:
        path = f"/api/projects/{project['id']}/aois"
        refused = client.post(path, json={"geometry": square(lon, lat, 0.001)})
        assert refused.status_code == 403 and "PEARL_QUOTA_BYTES" in refused.json()["detail"], refused.text
        again = client.post(f"{path}/{aoi['id']}/inference")
        assert again.status_code == 403 and "PEARL_QUOTA_BYTES" in again.json()["detail"]
        refused_project = client.post("/api/projects", json=new_project("another"))
        assert refused_project.status_code == 403 and "PEARL_QUOTA_BYTES" in refused_project.json()["detail"]
        assert client.get(f"{path}/{aoi['id']}").status_code == 200


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_a_project_loop_on_a_real_server_stays_bounded(
    review_assets: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The audit's loop (52 projects: 5.4 GB on disk, 3.8 GB of memory), against uvicorn: the quota stops it,
    the projects share one imagery mosaic and one base model, so disk and memory barely move per project."""
    settings = new_home(tmp_path_factory, review_assets)
    port, quota = free_port(), 8
    with uvicorn(settings, port, env={"PEARL_QUOTA_PROJECTS": str(quota)}) as process:
        url = f"http://127.0.0.1:{port}"
        ready_project(url, process=process, log=log_path(settings, port))
        review = settings.home_abs / "review"
        first_rss, first_disk = _rss_mb(process.pid), tree_bytes(review)
        codes, ids = [], []
        with httpx.Client(base_url=url, timeout=60) as client:
            for i in range(quota + 4):
                answer = client.post("/api/projects", json=new_project(f"loop {i}"))
                codes.append(answer.status_code)
                if answer.status_code == 201:
                    ids.append(answer.json()["id"])
                else:
                    assert "PEARL_QUOTA_PROJECTS" in answer.json()["detail"]
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                states = [client.get(f"/api/projects/{i}").json() for i in ids]
                if all(p["imagery"]["state"] == "ready" and p["model"]["ready"] for p in states):
                    break
                time.sleep(0.5)
            else:
                raise AssertionError(f"projects not ready: {states}")
        assert codes == [201] * quota + [403] * 4
        mosaics = sorted(review.rglob("mosaic.tif"))
        assert len(mosaics) == 1, mosaics  # one imagery mosaic for nine projects of the same source
        grown_disk = tree_bytes(review) - first_disk
        grown_rss = _rss_mb(process.pid) - first_rss
        print(
            f"quota loop: {len(ids)} projects, disk +{grown_disk / 1e3:.0f} kB, RSS +{grown_rss:.0f} MB"
        )  # -s: figures
        # Each project adds its state and the base head as version 0 (kilobytes), not a mosaic or a model copy.
        assert grown_disk < quota * 200_000, grown_disk
        assert grown_rss < 150, grown_rss
