"""Concurrent writers on both backends: threads and forked processes, each with its own store, like the review
app, the Dagster daemon and workers. No errors, no lost or duplicated rows; startups race through one migration."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from shapely.geometry import Point
from sqlalchemy import func, select, text

from pearl_pipelines.classes import load_schema
from pearl_pipelines.labels import migrate
from pearl_pipelines.labels.store import LabelEventRow, LabelStore, LabelStoreError

WRITERS = 4
BATCHES = 10
PER_BATCH = 3


def _write(url: str, project_id: int, writer: int, start: Callable[[], object]) -> list[int]:
    """One writer: its own store (own engine and pool), BATCHES add_labels calls of PER_BATCH labels each."""
    start()
    store = LabelStore(url)
    ids = []
    try:
        for batch in range(BATCHES):
            labels = [("water", Point(writer, batch * PER_BATCH + i)) for i in range(PER_BATCH)]
            ids += [row.id for row in store.add_labels(project_id, labels)]
    finally:
        store.engine.dispose()
    return ids


def _fork_writer(url: str, project_id: int, writer: int, barrier) -> None:
    _write(url, project_id, writer, lambda: barrier.wait(60))


def _fork_startup(url: str, writer: int, barrier) -> None:
    barrier.wait(60)
    store = LabelStore(url)  # every process migrates the fresh database at once
    project = store.create_project(f"p{writer}", {}, load_schema("chesapeake9"), "m:/x")
    store.add_labels(project.id, [("water", Point(writer, 0))])
    store.engine.dispose()


def _assert_all_written(store: LabelStore, project_id: int, ids: list[int] | None = None) -> None:
    rows = store.list_labels(project_id)
    assert len(rows) == WRITERS * BATCHES * PER_BATCH
    assert len({r.id for r in rows}) == len(rows)
    coords = sorted(tuple(r.geometry["coordinates"]) for r in rows)
    expected = sorted((float(w), float(i)) for w in range(WRITERS) for i in range(BATCHES * PER_BATCH))
    assert coords == expected  # every label of every writer, once
    if ids is not None:
        assert sorted(ids) == sorted(r.id for r in rows)
    with store.session() as s:
        events = list(s.scalars(select(LabelEventRow.label_id).where(LabelEventRow.project_id == project_id)))
    assert sorted(events) == sorted(r.id for r in rows)  # one add event per label
    assert store.max_event_id(project_id) == len(events)


def _new_project(url: str) -> int:
    store = LabelStore(url)
    project_id = store.create_project("shared", {}, load_schema("chesapeake9"), "m:/x").id
    store.engine.dispose()  # nothing pooled survives into a fork
    return project_id


def test_threads_add_labels_at_once(store_url: str) -> None:
    project_id = _new_project(store_url)
    barrier = threading.Barrier(WRITERS)
    with ThreadPoolExecutor(WRITERS) as pool:
        futures = [pool.submit(_write, store_url, project_id, w, lambda: barrier.wait(60)) for w in range(WRITERS)]
        ids = [i for f in futures for i in f.result()]
    store = LabelStore(store_url)
    _assert_all_written(store, project_id, ids)
    store.engine.dispose()


def test_processes_add_labels_at_once(store_url: str) -> None:
    project_id = _new_project(store_url)
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(WRITERS)
    procs = [ctx.Process(target=_fork_writer, args=(store_url, project_id, w, barrier)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    store = LabelStore(store_url)
    _assert_all_written(store, project_id)
    store.engine.dispose()


def test_processes_starting_at_once_migrate_once(store_url: str) -> None:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(WRITERS)
    procs = [ctx.Process(target=_fork_startup, args=(store_url, w, barrier)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    store = LabelStore(store_url)
    with store.engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM alembic_version")) == 1
        assert migrate.current_revision(conn) == migrate.head_revision()
    assert sorted(p.name for p in store.list_projects()) == [f"p{w}" for w in range(WRITERS)]
    assert store.max_label_id() == WRITERS
    store.engine.dispose()


def test_racing_project_names_give_one_project(store_url: str) -> None:
    """The name check and the insert are separate statements: the loser must get LabelStoreError, not a 500."""
    LabelStore(store_url).engine.dispose()
    barrier = threading.Barrier(WRITERS)

    def create(_: int) -> str:
        store = LabelStore(store_url)
        barrier.wait(60)
        try:
            store.create_project("same", {}, load_schema("chesapeake9"), "m:/x")
            return "created"
        except LabelStoreError:
            return "refused"
        finally:
            store.engine.dispose()

    with ThreadPoolExecutor(WRITERS) as pool:
        outcomes = sorted(pool.map(create, range(WRITERS)))
    assert outcomes == ["created"] + ["refused"] * (WRITERS - 1)
    store = LabelStore(store_url)
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(store.list_projects()[0].__table__)) == 1
    store.engine.dispose()


@pytest.mark.parametrize("undos", [WRITERS])
def test_concurrent_undos_revert_distinct_actions(store_url: str, undos: int) -> None:
    """Each undo must revert a different action: two undos racing must not both revert the newest one."""
    store = LabelStore(store_url)
    project_id = store.create_project("u", {}, load_schema("chesapeake9"), "m:/x").id
    added = store.add_labels(project_id, [("water", Point(i, 0)) for i in range(undos)])
    store.engine.dispose()
    barrier = threading.Barrier(undos)

    def undo(_: int) -> int | None:
        own = LabelStore(store_url)
        barrier.wait(60)
        try:
            row = own.undo(project_id)
            return None if row is None else row.id
        finally:
            own.engine.dispose()

    with ThreadPoolExecutor(undos) as pool:
        reverted = list(pool.map(undo, range(undos)))
    assert sorted(i for i in reverted if i is not None) == sorted(r.id for r in added)
    store = LabelStore(store_url)
    assert store.list_labels(project_id) == []
    store.engine.dispose()


def test_classes_added_at_once_are_all_kept(store_url: str) -> None:
    """add_class is read-modify-write of the project's schema JSON: racing adds must not overwrite each other."""
    store = LabelStore(store_url)
    project_id = store.create_project("c", {}, load_schema("chesapeake9"), "m:/x").id
    barrier = threading.Barrier(WRITERS)

    def add(writer: int) -> None:
        own = LabelStore(store_url)
        barrier.wait(60)
        try:
            own.add_class(project_id, f"extra_{writer}", f"Extra {writer}", "#00ff00")
        finally:
            own.engine.dispose()

    with ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(add, range(WRITERS)))
    names = store.schema(project_id).names
    assert names[:9] == load_schema("chesapeake9").names
    assert sorted(names[9:]) == [f"extra_{w}" for w in range(WRITERS)]
    store.engine.dispose()


@pytest.mark.parametrize("action", ["demote", "remove"])
def test_owners_demoting_each_other_at_once_leave_one_owner(store_url: str, action: str) -> None:
    """Two owners each demote (or remove) the other at the same moment: one wins, the project keeps an owner.
    The owner check and the write share a transaction that holds the project's lock."""
    from pearl_pipelines.labels.accounts import Accounts, Role

    key = "k" * 40
    store = LabelStore(store_url)
    project_id = store.create_project("owners", {}, load_schema("chesapeake9"), "m:/x").id
    accounts = Accounts(store, key)
    owners = [accounts.user(f"oidc:x#owner{i}", f"Owner {i}") for i in range(2)]
    barrier = threading.Barrier(2)  # cyclic: one wait per round
    for rounds in range(5):  # a few rounds: the race window is small
        for user in owners:
            accounts.set_role(project_id, user, Role.owner)

        def demote(i: int) -> str:
            own = Accounts(LabelStore(store_url), key)
            barrier.wait(60)
            try:
                if action == "demote":
                    own.set_role(project_id, owners[1 - i], Role.viewer)
                else:
                    own.remove_member(project_id, owners[1 - i])
                return "done"
            except LabelStoreError:
                return "refused"
            finally:
                own.store.engine.dispose()

        with ThreadPoolExecutor(2) as pool:
            outcomes = sorted(pool.map(demote, range(2)))
        assert outcomes == ["done", "refused"], (rounds, outcomes)
        assert [r for _, r in accounts.members(project_id)].count(Role.owner) == 1, rounds
    store.engine.dispose()
