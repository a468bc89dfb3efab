"""Session state and jobs on the label store (pearl_pipelines/labels/app_state.py), on SQLite and PostgreSQL: what
lets any number of review-app processes serve one project. Two StateStores/JobRunners stand for two processes."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from pathlib import Path

import pytest

from pearl_pipelines.labels.app_state import AppState, JobRow
from pearl_pipelines.labels.store import LabelStore, ProjectRow
from review_app.events import EventHub
from review_app.jobs import JobRunner
from review_app.schemas import MetricsOut
from review_app.workspace import ModelVersionInfo, ProjectState, StateStore


def test_a_change_through_one_process_is_read_by_another(
    store: LabelStore, project: ProjectRow, tmp_path: Path
) -> None:
    one, two = StateStore(tmp_path, store), StateStore(tmp_path, LabelStore(store.url))
    with one.change(project.id) as change:
        change.put_version(ModelVersionInfo(id=3, engine_id="abc", kind="retrain", n_labels=7))
        change.state.current_model = 3
    seen = two.get(project.id)
    assert seen.current_model == 3
    info = two.current_version(project.id)
    assert info is not None and info.engine_id == "abc" and info.n_labels == 7


def test_racing_updates_from_two_processes_lose_nothing(store: LabelStore, project: ProjectRow, tmp_path: Path) -> None:
    stores = [StateStore(tmp_path, store), StateStore(tmp_path, LabelStore(store.url))]

    def bump(states: StateStore) -> None:
        for _ in range(25):
            with states.update(project.id) as state:
                state.next_model_id += 1

    threads = [threading.Thread(target=bump, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stores[0].get(project.id).next_model_id == 50


def test_a_failed_change_is_not_saved(store: LabelStore, project: ProjectRow, tmp_path: Path) -> None:
    states = StateStore(tmp_path, store)
    with pytest.raises(RuntimeError), states.update(project.id) as state:
        state.strategy = "changed"
        raise RuntimeError("the job failed half-way")
    assert states.get(project.id).strategy == ProjectState().strategy


def test_a_state_json_of_before_is_adopted(store: LabelStore, project: ProjectRow, tmp_path: Path) -> None:
    states = StateStore(tmp_path, store)
    legacy = ProjectState(current_model=2, next_model_id=3, strategy="legacy-strategy")
    path = states.paths(project.id).state
    path.parent.mkdir(parents=True)
    path.write_text(legacy.model_dump_json())
    assert states.get(project.id).current_model == 2
    with states.update(project.id) as state:  # the first change writes it to the database
        state.next_model_id += 1
    path.unlink()
    assert states.get(project.id).next_model_id == 4 and states.get(project.id).strategy == "legacy-strategy"


def _wait_finished(runner: JobRunner, job_id: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while runner.get(job_id).state not in ("done", "failed"):
        assert time.monotonic() < deadline, f"job {job_id} still {runner.get(job_id).state} after {timeout} s"
        threading.Event().wait(0.02)


def test_many_jobs_of_one_project_in_one_process_all_run(store: LabelStore, project: ProjectRow) -> None:
    """More jobs than pool threads: each waits for the older ones, none for a younger one (no deadlock)."""
    runner = JobRunner(EventHub(), AppState(store), workers=2)
    try:
        jobs = [
            runner.submit(project.id, "restore", lambda ctx: threading.Event().wait(0.01) or "ok") for _ in range(8)
        ]
        for job in jobs:
            _wait_finished(runner, job.id)
        assert [runner.get(j.id).state for j in jobs] == ["done"] * 8
        started = [runner.db.job(j.id).started_at for j in jobs]
        assert started == sorted(started)
    finally:
        runner.shutdown()


def test_jobs_of_a_project_run_one_at_a_time_across_processes(store: LabelStore, project: ProjectRow) -> None:
    runners = [JobRunner(EventHub(), AppState(store)), JobRunner(EventHub(), AppState(LabelStore(store.url)))]
    running, overlaps = [0], []
    guard = threading.Lock()

    def body(ctx: object) -> str:
        with guard:
            running[0] += 1
            overlaps.append(running[0])
        threading.Event().wait(0.05)
        with guard:
            running[0] -= 1
        return "ok"

    try:
        jobs = [runners[n % 2].submit(project.id, "restore", body) for n in range(6)]
        for n, job in enumerate(jobs):
            _wait_finished(runners[n % 2], job.id)
        assert [runners[0].get(j.id).state for j in jobs] == ["done"] * 6  # read through either process
        assert max(overlaps) == 1
        started = [runners[0].db.job(j.id).started_at for j in jobs]
        assert started == sorted(started)  # oldest first
    finally:
        for runner in runners:
            runner.shutdown()


def test_a_dead_process_job_is_failed_and_the_next_one_runs(store: LabelStore, project: ProjectRow) -> None:
    db = AppState(store)
    with store.session() as s:  # a job of a process that stopped beating a minute ago
        old = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
        s.add(
            JobRow(
                id="dead00000000",
                project_id=project.id,
                kind="retrain",
                state="running",
                owner="gone:1:x",
                heartbeat_at=old,
            )
        )
    runner = JobRunner(EventHub(), db)
    try:
        job = runner.submit(project.id, "retrain", lambda ctx: "after")  # not joined to, nor queued behind, the dead
        _wait_finished(runner, job.id)
        assert runner.get(job.id).state == "done"
        dead = runner.get("dead00000000")
        assert dead.state == "failed" and dead.error == "the app process running this retrain stopped; start it again"
    finally:
        runner.shutdown()


def test_a_stopping_process_fails_its_unfinished_jobs(store: LabelStore, project: ProjectRow) -> None:
    runner = JobRunner(EventHub(), AppState(store))
    release = threading.Event()
    first = runner.submit(project.id, "retrain", lambda ctx: str(release.wait(5)))
    second = runner.submit(project.id, "retrain", lambda ctx: "never")
    runner.shutdown()
    rows = [AppState(store).job(j.id) for j in (first, second)]
    release.set()
    assert [r.state if r else None for r in rows] == ["failed", "failed"]
    assert all("stopped before this job finished" in (r.error or "") for r in rows if r)


def test_a_burst_through_several_processes_claims_one_label_run(
    store: LabelStore, project: ProjectRow, tmp_path: Path
) -> None:
    """Each process debounces its own clicks; the first to fire after a change submits the label run, the others see
    that it covers the same labels (review_app/label_runs.py)."""
    from shapely.geometry import Point

    from review_app.label_runs import claim_label_run

    one, two = StateStore(tmp_path, store), StateStore(tmp_path, LabelStore(store.url))
    store.add_labels(project.id, [("water", Point(4.47, 51.92)), ("tree_canopy", Point(4.471, 51.921))])
    assert claim_label_run(project.id, store, one) is True
    assert claim_label_run(project.id, store, two) is False
    assert claim_label_run(project.id, store, one) is False
    store.add_labels(project.id, [("water", Point(4.472, 51.922))])  # a later burst: one run more
    assert [claim_label_run(project.id, store, s) for s in (two, one)] == [True, False]
    with one.change(project.id) as change:  # a retrain's version reached MLflow: the run that adopts it is due
        change.put_version(ModelVersionInfo(id=1, engine_id="v1", kind="retrain", mlflow_version="4"))
    assert [claim_label_run(project.id, store, s) for s in (one, two)] == [True, False]


def test_model_versions_are_rows_beside_a_small_session_document(
    store: LabelStore, project: ProjectRow, tmp_path: Path
) -> None:
    """A project's versions do not grow the document every request reads: 300 retrains later it is as small as
    before, and each list reads what it needs (entries without documents, checkpoints only, one version)."""
    states = StateStore(tmp_path, store)
    with states.update(project.id) as state:
        state.strategy = "before"
    small = len(json.dumps(AppState(store).document(project.id)))
    for number in range(300):
        with states.change(project.id) as change:
            metrics = MetricsOut.empty(number, n_labels=number, message="")
            info = ModelVersionInfo(id=number, engine_id=f"e{number}", kind="retrain", parent=number - 1)
            logged = str(number) if 0 < number < 5 else None
            change.put_version(info.model_copy(update={"metrics": metrics, "mlflow_version": logged}))
            change.state.current_model = number
    document = AppState(store).document(project.id)
    assert document is not None and "models" not in document
    assert len(json.dumps(document)) <= small + 4  # current_model's digits only
    other = StateStore(tmp_path, LabelStore(store.url))  # another process
    assert list(other.versions(project.id)) == list(range(300))
    entries = other.version_entries(project.id)
    assert [e.number for e in entries] == list(range(300)) and all(e.final for e in entries)
    assert [e.number for e in entries if e.mlflow_version] == [1, 2, 3, 4]
    current = other.current_version(project.id)
    assert current is not None and (current.id, current.engine_id, current.parent) == (299, "e299", 298)
    assert other.version(project.id, 300) is None and other.version(project.id, -1) is None
    assert other.versions(project.id, named=True) == {}
    with other.change(project.id) as change:
        named = change.version(7)
        assert named is not None
        change.put_version(named.model_copy(update={"name": "seven"}))
        assert [e.number for e in change.version_entries() if e.name] == [7]  # what the change put, read back
    assert list(states.versions(project.id, named=True)) == [7]
    assert states.version(project.id, 7).name == "seven"  # type: ignore[union-attr]


def test_a_failed_change_writes_no_version(store: LabelStore, project: ProjectRow, tmp_path: Path) -> None:
    states = StateStore(tmp_path, store)
    with pytest.raises(RuntimeError), states.change(project.id) as change:
        change.put_version(ModelVersionInfo(id=1, engine_id="half", kind="retrain"))
        change.state.current_model = 1
        raise RuntimeError("the retrain failed before the map showed it")
    assert states.version(project.id, 1) is None and states.get(project.id).current_model is None


def test_a_state_json_of_before_brings_its_model_versions(
    store: LabelStore, project: ProjectRow, tmp_path: Path
) -> None:
    states = StateStore(tmp_path, store)
    path = states.paths(project.id).state
    path.parent.mkdir(parents=True)
    versions = {n: ModelVersionInfo(id=n, engine_id=f"old{n}", kind="base" if n == 0 else "retrain") for n in (0, 1)}
    models = {str(n): v.model_dump(mode="json") for n, v in versions.items()}
    legacy = {"current_model": 1, "next_model_id": 2, "models": models}
    path.write_text(json.dumps(legacy))
    assert states.current_version(project.id) == versions[1]  # the first read adopts it
    path.unlink()
    assert StateStore(tmp_path, LabelStore(store.url)).versions(project.id) == versions
