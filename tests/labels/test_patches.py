"""Map patches on the label store's database, SQLite and PostgreSQL: add, remove, undo in order, bounds filters,
in-force-at-a-time queries (a version's lineage), digests, and refusals that write nothing."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from shapely.geometry import Point

from pearl_pipelines.labels.accounts import Accounts
from pearl_pipelines.labels.patches import NewPatch, PatchStore
from pearl_pipelines.labels.store import LabelStore, LabelStoreError, ProjectRow
from tests.labels.conftest import square


def _user(store: LabelStore) -> int:
    return Accounts(store, "k" * 40).user("oidc:x#ada", "Ada").id


def test_add_remove_undo_in_reverse_order(store: LabelStore, project: ProjectRow) -> None:
    patches, ada = PatchStore(store), _user(store)
    fill = patches.add(project.id, NewPatch("fill", square(10, 10), class_index=2), ada)
    paint = patches.add(project.id, NewPatch("checkpoint", square(10.0005, 10), source_version=0), ada)
    assert [r.id for r in patches.live(project.id)] == [fill.id, paint.id]  # oldest first: newer paints over
    assert patches.get(project.id, fill.id).class_index == 2 and patches.get(project.id, fill.id).user_id == ada

    patches.remove(project.id, fill.id)
    assert [r.id for r in patches.live(project.id)] == [paint.id]
    with pytest.raises(KeyError, match="no patch"):
        patches.remove(project.id, fill.id)  # removed already

    undone = patches.undo(project.id)  # the removal: the fill is back
    assert undone is not None and undone.id == fill.id and undone.removed_at is None
    undone = patches.undo(project.id)  # then the checkpoint patch's add
    assert undone is not None and undone.id == paint.id and undone.removed_at is not None
    assert [r.id for r in patches.live(project.id)] == [fill.id]
    patches.undo(project.id)  # the fill's add
    assert patches.live(project.id) == [] and patches.undo(project.id) is None


def test_bounds_filter_time_travel_and_digest(store: LabelStore, project: ProjectRow) -> None:
    patches, ada = PatchStore(store), _user(store)
    near = patches.add(project.id, NewPatch("fill", square(10, 10), class_index=1), ada)
    far = patches.add(project.id, NewPatch("fill", square(20, 20), class_index=1), ada)
    assert [r.id for r in patches.live(project.id, bounds=(9.9, 9.9, 10.01, 10.01))] == [near.id]
    assert [r.id for r in patches.live(project.id, bounds=(19.0, 19.0, 21.0, 21.0))] == [far.id]

    both = patches.live(project.id)
    between = dt.datetime.now(dt.UTC)
    time.sleep(0.01)
    patches.remove(project.id, near.id)
    # In force at `between` (a version made then): both; now: only the far one.
    assert [r.id for r in patches.live(project.id, at=between)] == [near.id, far.id]
    assert [r.id for r in patches.live(project.id)] == [far.id]
    assert PatchStore.digest_of(patches.live(project.id, at=between)) == PatchStore.digest_of(both)
    assert PatchStore.digest_of(patches.live(project.id)) != PatchStore.digest_of(both)
    collection = PatchStore.geojson_of(patches.live(project.id))
    assert collection["features"][0]["properties"]["class_index"] == 1


def test_refusals_write_nothing(store: LabelStore, project: ProjectRow) -> None:
    patches, ada = PatchStore(store), _user(store)
    with pytest.raises(LabelStoreError, match="names a class"):
        patches.add(project.id, NewPatch("fill", square(10, 10)), ada)
    with pytest.raises(LabelStoreError, match="names a checkpoint"):
        patches.add(project.id, NewPatch("checkpoint", square(10, 10), class_index=1), ada)
    with pytest.raises(LabelStoreError, match="Polygon or MultiPolygon"):
        patches.add(project.id, NewPatch("fill", Point(10, 10), class_index=1), ada)
    with pytest.raises(KeyError, match="no project"):
        patches.add(project.id + 99, NewPatch("fill", square(10, 10), class_index=1), ada)
    with pytest.raises(KeyError, match="no patch"):
        patches.get(project.id, 2**40)  # beyond PostgreSQL's INTEGER: an unknown id, not a DataError
    assert patches.live(project.id) == [] and patches.undo(project.id) is None
