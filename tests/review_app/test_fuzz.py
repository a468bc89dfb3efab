"""Schemathesis over the review app's whole OpenAPI schema, as each role, on both label stores (SQLite and the
PostgreSQL server the tests start): no 5xx, no response that breaks its schema, no undocumented status code.

Three passes per operation:
- hostile (first, as the owner, whose requests reach every route's code): a request that succeeds as it is (a
  seed, for the operations that write; else the first case schemathesis generates) with one value at a time
  replaced by what broke the app before (`HOSTILE_*`: integers beyond 32 and 64 bits, negative and 0, one beyond
  a float; NUL, other control characters, a lone surrogate; 10 000 characters), in every body field (nested ones
  too, and the optional ones the request left out), every query and every path parameter. A write that gets a
  control character into a body field must also be refused: no such text is ever stored;
- positive: data that fits the schema (`EXAMPLES`), sent as every role;
- negative: data that breaks the schema (`EXAMPLES`), sent as every role.

Budget (2 cores, measured): about 70 s per store, 2 min 40 s for the file with both servers' start; 11 718
responses per store (10 064 positive and negative, 1 654 hostile). Uvicorn on loopback, personal API tokens stand
for the roles."""

from __future__ import annotations

import copy
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core import NOT_SET
from schemathesis.core.failures import FailureGroup
from schemathesis.errors import InvalidSchema
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from pearl_pipelines.labels.accounts import Accounts, Role
from pearl_pipelines.labels.store import LabelStore
from review_app.schemas import DEFAULT_BASE_MODEL
from tests.conftest import free_port
from tests.review_app.conftest import new_home, square
from tests.review_app.servers import ready_project, uvicorn

EXAMPLES = {GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 8}
# No parameter or body to break: the negative pass has nothing to send (the positive pass covers them).
NOTHING_TO_NEGATE = {
    "GET /api/projects",
    "GET /api/me",
    "GET /api/tokens",
    "GET /api/jobs/{job_id}",
    "GET /api/auth/config",
    "GET /api/imagery/local",
    "GET /api/imagery/stac",
    "GET /api/starters",
    "GET /api/uploads",
    "GET /api/public-maps",
    # A share link's token is any string (a wrong one gets the uniform 404, never a 422 that tells its shape).
    "GET /api/shares/{token}",
    "GET /api/shares/{token}/aois/{aoi_id}/areas.csv",
    "GET /api/shares/{token}/aois/{aoi_id}/classes.tif",
}
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance]
LAST = {"DELETE /api/tokens/{token_id}", "DELETE /api/projects/{project_id}/members/{user_id}"}
# A generated `confirm` may match a name a generated rename just gave project 1: deleting it goes last of all.
LAST |= {"DELETE /api/projects/{project_id}"}
SECRET = secrets.token_urlsafe(48)

# What the audit found 500s with: 64-bit overflows (OverflowError), NUL (PostgreSQL refuses it in text), other
# control characters, a lone surrogate (not encodable as UTF-8 on either store), strings longer than any column.
# 2**31: beyond PostgreSQL's INTEGER ids; 10**400: beyond a float too.
HOSTILE_INTS: list[Any] = [2**31, 2**63, 2**64 + 5, -(2**63) - 1, -1, 0, 10**400]
CONTROL = ["\x00", "name\x00", "\x1b[31m", "two\nlines", "c1\x85", "half\ud800"]
NEVER_STORED = {"\x00", "name\x00", "\x1b[31m", "c1\x85", "half\ud800"}  # a line break is fine in free text
HOSTILE_STRINGS: list[Any] = [*CONTROL, "x" * 10_000]
# Query and path parameters: fewer values (tile routes have a dozen parameters each), no surrogate (a URL cannot
# carry one), and 2 000 characters: longer than any bound, and a URL the server takes in well under a second.
HOSTILE_PARAMETERS: list[Any] = [2**31, 2**63, -1, "\x00", "\x1b[31m", "x" * 2_000]
SLOWEST = 3  # the slowest hostile requests, printed with the summary


@dataclass(frozen=True)
class Served:
    """The app under test: its URL, a token per role, and an AOI of project 1 with a point inside it."""

    url: str
    tokens: dict[str, str]
    aoi_id: int
    point: tuple[float, float]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(
    request: pytest.FixtureRequest, review_assets: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    home = new_home(tmp_path_factory, review_assets)
    if request.param == "postgresql":
        store_url = request.getfixturevalue("postgres_server").new_database()
    else:
        store_url = f"sqlite:///{home.home_abs / 'labels.db'}"
    port = free_port()
    with uvicorn(home, port, store_url=store_url, env={"PEARL_AUTH_SECRET": SECRET}):
        url = f"http://127.0.0.1:{port}"
        west, south, east, north = ready_project(url)["imagery"]["bounds"]
        lon, lat = (west + east) / 2, (south + north) / 2
        store = LabelStore(store_url)
        assert store.engine.dialect.name == request.param
        accounts = Accounts(store, SECRET)
        tokens = {}
        for name, role in (("owner", Role.owner), ("mapper", Role.mapper), ("viewer", Role.viewer), ("stranger", None)):
            user = accounts.user(f"fuzz:{name}", name)
            if role is not None:
                accounts.set_role(1, user, role)
            tokens[name] = accounts.issue_token(user, "fuzz", 1).token
        store.engine.dispose()
        aoi = httpx.post(
            f"{url}/api/projects/1/aois",
            json={"name": "fuzz seed", "geometry": square(lon, lat, 0.001)},
            headers={"Authorization": f"Bearer {tokens['owner']}"},
            timeout=30,
        )
        assert aoi.status_code == 201, aoi.text
        yield Served(url, tokens, aoi.json()["id"], (lon, lat))


@dataclass(frozen=True)
class Base:
    """A generated case's parameters and body: the hostile pass's starting point."""

    path_parameters: dict[str, Any] | None
    query: dict[str, Any] | None
    body: Any


@dataclass
class Run:
    """One store's run: where to send, as whom, and what came back."""

    url: str
    tokens: dict[str, str]
    spec: dict[str, Any]
    failures: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    hostile_statuses: dict[int, int] = field(default_factory=dict)
    unchecked: set[str] = field(default_factory=set)
    unnegatable: set[str] = field(default_factory=set)
    slowest: list[tuple[float, str]] = field(default_factory=list)

    def send(self, operation: Any, case: Any, role: str, what: str, counts: dict[int, int] | None = None) -> Any:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"}
        started = time.monotonic()
        try:
            try:
                response = case.call_and_validate(base_url=self.url, headers=headers, checks=CHECKS)
            except InvalidSchema:
                # titiler's Info model uses JSON Schema 2020-12 `prefixItems` (valid OpenAPI 3.1), which
                # schemathesis cannot validate a response against: these answers are checked for 5xx only.
                self.unchecked.add(operation.label)
                response = case.call_and_validate(base_url=self.url, headers=headers, checks=[not_a_server_error])
        except (Exception, FailureGroup) as exc:  # check failures: keep going, report them all at the end
            first = " | ".join(str(exc).strip().splitlines()[:6])[:600]
            self.failures.append(f"{role}: {what}: {operation.label}: {type(exc).__name__}: {first}")
            return None
        if counts is self.hostile_statuses:
            took = (time.monotonic() - started, f"{what}: {operation.label}")
            self.slowest = sorted([*self.slowest, took], reverse=True)[:SLOWEST]
        counts = self.statuses if counts is None else counts
        counts[response.status_code] = counts.get(response.status_code, 0) + 1
        return response


def _fuzz(run: Run, operation: Any, mode: GenerationMode) -> None:
    """`EXAMPLES[mode]` generated requests for one operation, each sent as every role."""
    derandomised = settings(
        max_examples=EXAMPLES[mode], deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )

    @derandomised
    @given(case=operation.as_strategy(mode))
    def fuzz(case: Any) -> None:
        for role in run.tokens:
            run.send(operation, case, role, str(mode))
        if "project_id" in (case.path_parameters or {}):  # random ids mostly miss: the same request on project 1
            case.path_parameters["project_id"] = 1
            for role in run.tokens:
                run.send(operation, case, role, str(mode))

    try:
        fuzz()
    except Unsatisfiable:
        if mode is not GenerationMode.NEGATIVE:
            raise
        run.unnegatable.add(operation.label)


# -- the hostile pass ---------------------------------------------------------------------------------------------
def _seeds(served: Served) -> dict[str, Base]:
    """Requests that succeed as they are, for the operations that write: one hostile value in any of their fields
    is then the only thing wrong, so it reaches the route's code and the store (a generated body mostly stops at
    an unknown class or a geometry off the imagery)."""
    lon, lat = served.point
    project = {"project_id": 1}
    custom = {
        "id": "custom",
        "title": "Custom",
        "description": "free text",
        "classes": [{"name": "water", "title": "Water", "color": "#0000ff", "from": ["water"]}],
    }
    bodies: dict[str, tuple[dict[str, Any] | None, dict[str, Any]]] = {
        "POST /api/projects": (
            None,
            {
                "name": "fuzz seed",
                "imagery": {"source": "local", "collection": "fuzz-missing"},  # no mosaic to build
                "class_schema": custom,
                "base_model": DEFAULT_BASE_MODEL,
            },
        ),
        "POST /api/projects/{project_id}/classes": (
            project,
            {"name": "fuzz_seed", "title": "Seed", "color": "#123456"},
        ),
        "PATCH /api/projects/{project_id}/classes/{name}": (
            {**project, "name": "water"},
            {"name": "water", "title": "Water", "color": "#0000ff"},
        ),
        "POST /api/projects/{project_id}/aois": (
            project,
            {"name": "fuzz seed", "geometry": square(lon, lat, 0.0005), "crs": "EPSG:4326"},
        ),
        "POST /api/projects/{project_id}/labels": (
            project,
            {
                "class_name": "water",
                "geometry": {"type": "Point", "coordinates": [lon, lat]},
                "aoi_id": served.aoi_id,
                "crs": "EPSG:4326",
            },
        ),
        "POST /api/projects/{project_id}/retrain": (project, {"aoi_id": served.aoi_id}),
        "PUT /api/projects/{project_id}/strategy": (project, {"strategy": "mlp"}),
        "POST /api/projects/{project_id}/checkpoints": (project, {"name": "fuzz seed"}),
        "PUT /api/projects/{project_id}/members": (
            project,
            {"subject": "fuzz:newcomer", "role": "viewer", "name": "Newcomer"},
        ),
        "POST /api/tokens": (None, {"name": "fuzz seed", "days": 1}),
    }
    return {label: Base(path, {}, body) for label, (path, body) in bodies.items()}


def _first_case(operation: Any) -> Base:
    """The first positive case schemathesis generates for the operation (derandomised), not sent."""
    found: list[Base] = []

    @settings(max_examples=1, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(GenerationMode.POSITIVE))
    def first(case: Any) -> None:
        if not found:
            body = None if case.body is NOT_SET else case.body
            found.append(copy.deepcopy(Base(case.path_parameters, case.query, body)))

    first()
    return found[0]


def _ref_path(ref: str) -> list[str]:
    return ref.removeprefix("#/").split("/")


def _deref(spec: dict[str, Any], schema: Any) -> Any:
    """`schema` with its local $ref followed (the app's schema has no other kind)."""
    while isinstance(schema, dict) and "$ref" in schema:
        target: Any = spec
        for part in _ref_path(schema["$ref"]):
            target = target[part]
        schema = target
    return schema


def _body_fields(spec: dict[str, Any], schema: Any) -> set[str]:
    """Top-level properties of a request body schema (through $ref, anyOf/oneOf: `X | None`, unions)."""
    schema = _deref(spec, schema)
    if not isinstance(schema, dict):
        return set()
    names = set(schema.get("properties", {}))
    for branch in schema.get("anyOf", []) + schema.get("oneOf", []):
        names |= _body_fields(spec, branch)
    return names


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every leaf of a JSON value (of a list, its first item: the others are more of the same)."""
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list) and value:
        yield from _leaves(value[0], (*path, 0))
    elif path:
        yield path, value


def _replaced(body: Any, path: tuple[Any, ...], value: Any) -> Any:
    body = copy.deepcopy(body)
    target = body
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return body


def _hostile_bodies(spec: dict[str, Any], operation_spec: dict[str, Any], base: Any) -> Iterator[tuple[str, Any]]:
    schema = operation_spec.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    if schema is None:
        return
    body = base if isinstance(base, dict) else {}
    seen = set()
    for path, value in _leaves(body):
        seen.add(path[0])
        if isinstance(value, str):
            values = HOSTILE_STRINGS
        elif isinstance(value, int | float) and not isinstance(value, bool):
            values = HOSTILE_INTS
        else:
            values = HOSTILE_INTS + HOSTILE_STRINGS
        for hostile in values:
            yield ".".join(map(str, path)), _replaced(body, path, hostile)
    for name in sorted(_body_fields(spec, schema) - seen):  # optional fields the case left out, and empty ones
        for hostile in HOSTILE_INTS + HOSTILE_STRINGS:
            yield name, {**body, name: hostile}


def _hostile(run: Run, operation: Any, base: Base) -> None:
    """The base case with one value at a time made hostile, as the owner."""
    method, path = operation.label.split(" ", 1)
    operation_spec = run.spec["paths"][path][method.lower()]
    path_parameters = dict(base.path_parameters or {})
    if "{project_id}" in path:
        path_parameters["project_id"] = 1  # the project the roles are members of: requests reach the route's code
    query = dict(base.query or {})
    has_body = "requestBody" in operation_spec
    body = base.body if has_body and base.body is not None else {}

    def case(path_parameters: Any = path_parameters, query: Any = query, **kwargs: Any) -> Any:
        if has_body:
            kwargs.setdefault("body", body)
            kwargs["media_type"] = "application/json"
        return operation.Case(path_parameters=path_parameters, query=query, **kwargs)

    for where, hostile_body in _hostile_bodies(run.spec, operation_spec, body):
        response = run.send(operation, case(body=hostile_body), "owner", f"hostile body {where}", run.hostile_statuses)
        planted = [v for _, v in _leaves(hostile_body) if isinstance(v, str) and v in NEVER_STORED]
        if response is not None and planted and method in ("POST", "PUT", "PATCH") and response.status_code < 300:
            run.failures.append(
                f"owner: hostile body {where}: {operation.label}: accepted {planted[0]!r} ({response.status_code})"
            )
    for parameter in operation_spec.get("parameters", []):
        name, location = parameter["name"], parameter["in"]
        if location not in ("query", "path"):
            continue
        for hostile in HOSTILE_PARAMETERS:
            what = f"hostile {location} {name}={str(hostile)[:12]!r}"
            if location == "query":
                run.send(operation, case(query={**query, name: hostile}), "owner", what, run.hostile_statuses)
            else:
                parameters = {**path_parameters, name: hostile}
                run.send(operation, case(path_parameters=parameters), "owner", what, run.hostile_statuses)


def test_every_operation_as_every_role(served: Served) -> None:
    """Each operation: the hostile values in every field and parameter, then each role x valid/invalid data,
    `EXAMPLES` generated requests (derandomised, so CI reruns the same ones)."""
    started = time.monotonic()
    loaded = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
    run = Run(served.url, served.tokens, httpx.get(f"{served.url}/openapi.json", timeout=10).json())
    operations = [result.ok() for result in loaded.get_all_operations()]
    seeds = _seeds(served)
    assert set(seeds) <= {operation.label for operation in operations}, set(seeds)
    # The hostile pass first: no generated request has revoked the owner's token or removed a member yet.
    for operation in operations:
        _hostile(run, operation, seeds.get(operation.label) or _first_case(operation))
    hostile_s = time.monotonic() - started
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    # Revoking a token or removing a member takes a role's credentials away for what follows: fuzz those last.
    runs = sorted(((op, mode) for mode in modes for op in operations), key=lambda run: run[0].label in LAST)
    for operation, mode in runs:
        _fuzz(run, operation, mode)
    hostile = sum(run.hostile_statuses.values())
    print(
        f"{len(operations)} operations x {len(run.tokens)} roles: responses by status "
        f"{dict(sorted(run.statuses.items()))}; hostile {hostile}: {dict(sorted(run.hostile_statuses.items()))}; "
        f"{hostile_s:.0f} s hostile, {time.monotonic() - started:.0f} s in all; slowest hostile: "
        + ", ".join(f"{s:.2f} s {what[:100]}" for s, what in run.slowest)
    )
    assert len(operations) > 40 and sum(run.statuses.values()) > len(operations) * len(run.tokens)
    assert hostile > 20 * len(operations) and 401 not in run.hostile_statuses  # the owner's token held throughout
    assert not run.failures, "\n".join(sorted(set(run.failures)))
    assert {label.rsplit("/", 1)[-1] for label in run.unchecked} <= {"info"}, run.unchecked  # only titiler's Info
    assert run.unnegatable <= NOTHING_TO_NEGATE, " | ".join(sorted(run.unnegatable - NOTHING_TO_NEGATE))
