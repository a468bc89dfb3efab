"""The front-end's API types are generated, never copied by hand (issue 22): the committed
review_app/frontend/openapi.json is the app's current OpenAPI schema (websocket events included), and the committed
review_app/frontend/src/api-types.ts is what the pinned openapi-typescript makes of it. Either one stale: run
`make types`. The strategies of the schema are the registry's (pearl_pipelines/ml/strategies.py).
"""

from __future__ import annotations

import json
import subprocess
import typing
from pathlib import Path
from typing import Any

import pytest

from pearl_pipelines.ml.strategies import STRATEGIES
from review_app.openapi import OPENAPI_JSON, app_schema, render
from review_app.schemas import WsEventModel

FRONTEND = OPENAPI_JSON.parent
API_TYPES = FRONTEND / "src" / "api-types.ts"
GENERATOR = FRONTEND / "node_modules" / ".bin" / "openapi-typescript"
FIX = "run `make types` (it rewrites review_app/frontend/openapi.json and src/api-types.ts) and commit both"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return app_schema()


def _differences(committed: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Which paths and components differ: a readable failure instead of a diff of thousands of lines."""

    def parts(schema: dict[str, Any]) -> dict[str, Any]:
        top = {f"top-level {k}": v for k, v in schema.items() if k not in ("paths", "components")}
        paths = {f"path {k}": v for k, v in schema.get("paths", {}).items()}
        components = {f"component {k}": v for k, v in schema.get("components", {}).get("schemas", {}).items()}
        return top | paths | components

    a, b = parts(committed), parts(current)
    return [name for name in sorted(set(a) | set(b)) if a.get(name) != b.get(name)]


def test_committed_openapi_json_is_the_apps_schema(schema: dict[str, Any]) -> None:
    assert OPENAPI_JSON.is_file(), f"{OPENAPI_JSON} is missing: {FIX}"
    committed_text = OPENAPI_JSON.read_text(encoding="utf-8")
    if committed_text != render(schema):
        changed = _differences(json.loads(committed_text), schema) or ["formatting only"]
        pytest.fail(f"{OPENAPI_JSON.name} is not the app's current OpenAPI schema ({', '.join(changed)}): {FIX}")


def test_committed_api_types_are_what_openapi_typescript_generates(tmp_path: Path) -> None:
    assert GENERATOR.exists(), (
        f"{GENERATOR} is missing: install the front-end's packages (`make install` or "
        f"`cd {FRONTEND} && npm ci`), then {FIX}"
    )
    generated = tmp_path / "api-types.ts"
    run = subprocess.run(
        [str(GENERATOR), str(OPENAPI_JSON), "-o", str(generated)],
        cwd=FRONTEND,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, f"openapi-typescript failed:\n{run.stdout}\n{run.stderr}"
    assert API_TYPES.is_file(), f"{API_TYPES} is missing: {FIX}"
    assert API_TYPES.read_text(encoding="utf-8") == generated.read_text(encoding="utf-8"), (
        f"src/{API_TYPES.name} is not what openapi-typescript generates from {OPENAPI_JSON.name}: {FIX}"
    )


def test_every_websocket_event_is_in_the_schema(schema: dict[str, Any]) -> None:
    """One component per event model, and the `WsEvent` union maps every `type` to its model."""
    components = schema["components"]["schemas"]
    models = typing.get_args(WsEventModel)
    mapping = components["WsEvent"]["discriminator"]["mapping"]
    assert components["WsEvent"]["discriminator"]["propertyName"] == "type"
    assert len(mapping) == len(models) == len(components["WsEvent"]["oneOf"])
    for model in models:
        event_type = model.model_fields["type"].default
        assert mapping[event_type] == f"#/components/schemas/{model.__name__}"
        assert components[model.__name__]["properties"]["type"]["const"] == event_type
        assert "type" in components[model.__name__]["required"]  # always sent: never optional in the types
    # Models the events share with the REST API keep their one component.
    assert components["HelloEvent"]["properties"]["active_jobs"]["items"] == {"$ref": "#/components/schemas/JobOut"}


def test_the_strategies_of_the_schema_are_the_registry(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    assert components["StrategyIn"]["properties"]["strategy"]["enum"] == list(STRATEGIES)
    assert components["StrategyOption"]["properties"]["name"]["enum"] == list(STRATEGIES)
    assert {"name", "title", "description"} <= set(components["StrategyOption"]["required"])
    for cls in STRATEGIES.values():
        assert cls.title and cls.description, f"strategy {cls.name!r} needs a title and a description"
