"""Fixtures for the Dagster definitions: a label store with a project and AOI, fake compute and registry.

Fakes replace the resources whose real server is not the point of a unit test: `FakeCompute` answers a
worker task with the per-tile messages the real worker sends; `FakeRegistry` keeps registered versions
and aliases in memory. The end-to-end tests use the real ones.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from pydantic import Field
from shapely.geometry import Point, box

from pearl_pipelines.classes import load_schema
from pearl_pipelines.defs.resources import GpuCompute, LabelStoreResource, MlflowRegistry, RasterStore
from pearl_pipelines.geo.grid import aoi_to_tile_keys
from pearl_pipelines.labels.store import LabelStore, sqlite_url

STARTER = "pearl-starter-chesapeake9"
BASE_MODEL = f"models:/{STARTER}@starter"
# A 600 m x 550 m AOI in the north-west corner of the demo region (inside its imagery at any scale >= 0.25).
DEMO_AOI = box(-76.4290, 38.9770, -76.4230, 38.9820)


@dataclass
class FakeInvocation:
    """What `PipesClientCompletedInvocation` offers the assets: custom messages and results."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)
    materialization: dg.MaterializeResult | None = None

    def get_custom_messages(self) -> list[dict[str, Any]]:
        return self.messages

    def get_results(self) -> list[Any]:
        return self.results

    def get_materialize_result(self) -> dg.MaterializeResult:
        assert self.materialization is not None, "the fake worker reported no materialization"
        return self.materialization


# Dagster rebuilds resources from their config for each run, so a fake's state lives here, keyed by a field.
_STATE: dict[str, dict[str, Any]] = {}


def _state(key: str) -> dict[str, Any]:
    return _STATE.setdefault(key, {"calls": [], "respond": None, "versions": {}, "aliases": {}})


class FakeCompute(GpuCompute):
    """Records each task and its extras; answers through `respond(task, extras) -> FakeInvocation`."""

    state_key: str = Field(default_factory=lambda: uuid.uuid4().hex)

    def answer(self, respond: Callable[[str, dict[str, Any]], FakeInvocation]) -> FakeCompute:
        _state(self.state_key)["respond"] = respond
        return self

    @property
    def calls(self) -> list[tuple[str, dict[str, Any]]]:
        return _state(self.state_key)["calls"]

    def run(self, context: Any, task: str, extras: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Any:
        state = _state(self.state_key)
        state["calls"].append((task, dict(extras)))
        return state["respond"](task, dict(extras)) if state["respond"] else FakeInvocation()


@dataclass
class FakeVersion:
    name: str
    version: str
    tags: dict[str, str] = field(default_factory=dict)


class FakeRegistry(MlflowRegistry):
    """In-memory registered models: versions and aliases, no server."""

    state_key: str = Field(default_factory=lambda: uuid.uuid4().hex)

    def add_version(self, name: str, version: int, *aliases: str, **tags: str) -> FakeVersion:
        found = FakeVersion(name, str(version), dict(tags))
        _state(self.state_key)["versions"][(name, str(version))] = found
        for alias in aliases:
            self.set_alias(name, alias, version)
        return found

    def alias(self, name: str, alias: str) -> str | None:
        return _state(self.state_key)["aliases"].get((name, alias))

    def version_by_alias(self, name: str, alias: str) -> FakeVersion | None:
        version = self.alias(name, alias)
        return _state(self.state_key)["versions"][(name, version)] if version else None

    def set_alias(self, name: str, alias: str, version: str | int) -> None:
        _state(self.state_key)["aliases"][(name, alias)] = str(version)

    def model_version(self, name: str, version: str | int) -> FakeVersion:
        return _state(self.state_key)["versions"][(name, str(version))]

    def find_version(self, name: str, **tags: str) -> FakeVersion | None:
        found = [
            v
            for (n, _), v in _state(self.state_key)["versions"].items()
            if n == name and all(v.tags.get(k) == t for k, t in tags.items())
        ]
        return max(found, key=lambda v: int(v.version)) if found else None


@dataclass(frozen=True)
class Project:
    store: LabelStore
    project_id: int
    aoi_id: int
    tile_keys: list[str]


@pytest.fixture
def label_store(tmp_path: Path) -> LabelStore:
    store = LabelStore(sqlite_url(tmp_path))
    yield store
    store.engine.dispose()


def add_project(store: LabelStore, name: str, aoi=DEMO_AOI, n_labels: int = 12) -> Project:
    project = store.create_project(name, {"collections": ["demo"]}, load_schema("chesapeake9"), BASE_MODEL)
    keys = aoi_to_tile_keys(aoi)
    aoi_row = store.add_aoi(project.id, f"{name}-aoi", aoi, keys)
    classes = ["tree_canopy", "low_vegetation", "water"]
    minx, miny, maxx, maxy = aoi.bounds
    labels = [
        (
            classes[i % 3],
            Point(
                minx + (maxx - minx) * (i + 0.5) / n_labels,
                miny + (maxy - miny) * ((i * 7) % n_labels + 0.5) / n_labels,
            ),
        )
        for i in range(n_labels)
    ]
    if labels:
        store.add_labels(project.id, labels, aoi_id=aoi_row.id)
    return Project(store, project.id, aoi_row.id, keys)


@pytest.fixture
def project(label_store: LabelStore) -> Project:
    return add_project(label_store, "mapper-a")


@pytest.fixture
def rasters(tmp_path: Path) -> RasterStore:
    return RasterStore(home=str(tmp_path / "home"))


@pytest.fixture
def label_store_resource(label_store: LabelStore) -> LabelStoreResource:
    return LabelStoreResource(url=label_store.url)


@pytest.fixture
def registry() -> FakeRegistry:
    fake = FakeRegistry(tracking_uri="http://127.0.0.1:9")  # nothing listens there: fakes only
    fake.add_version(STARTER, 1, "starter", "champion")
    return fake


@pytest.fixture
def instance() -> dg.DagsterInstance:
    with dg.instance_for_test() as test_instance:
        yield test_instance
