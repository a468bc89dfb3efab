"""`models:/` references to registered models: the one parser and formatter, and the starter models' names.

Light on purpose (no MLflow, no torch): Dagster definitions, the review app and the worker all read references.
A reference names a version (`models:/name/3`) or an alias (`models:/name@champion`); a bare `models:/name`
means its `champion`, the alias that serves maps (the one `ModelRegistry.load_model` and Dagster's champion gate
move), so a reference without a version never silently follows the newest, ungated, retrain.
"""

from __future__ import annotations

import re

PREFIX = "models:/"
CHAMPION_ALIAS = "champion"
DEFAULT_ALIAS = CHAMPION_ALIAS
CURRENT_ALIAS = "current"  # a project's newest version: the review app's current model, Dagster's latest retrain
CHECKPOINT_ALIAS_PREFIX = "checkpoint-"
# The tags of a registered version (its lineage) are `ml.lineage.Lineage`'s.


def model_uri(name: str, alias_or_version: str | int) -> str:
    """`models:/name@alias` for an alias, `models:/name/3` for a version number."""
    ref = str(alias_or_version)
    return f"{PREFIX}{name}/{ref}" if ref.isdigit() else f"{PREFIX}{name}@{ref}"


def parse_model_uri(ref: str) -> tuple[str, str]:
    """`models:/name@alias` -> (name, alias); `models:/name/3` -> (name, "3"); `models:/name` -> (name, "champion")."""
    if not ref.startswith(PREFIX):
        raise ValueError(f"model reference {ref!r} must look like models:/name@alias or models:/name/3")
    rest = ref.removeprefix(PREFIX)
    if "@" in rest:
        name, version = rest.split("@", 1)
    elif "/" in rest:
        name, _, version = rest.rpartition("/")
    else:
        name, version = rest, DEFAULT_ALIAS
    if not name or not version:
        raise ValueError(f"model reference {ref!r} must look like models:/name@alias or models:/name/3")
    return name, version


# A registered-model reference as a caller may give one (a project's base model): one of the two explicit forms, with
# names and aliases of letters, digits, `_` and `-` (MLflow's alias characters), so no reference names a path.
ACCEPTED_FORMS = "models:/<name>@<alias> or models:/<name>/<version>"
_NAME = r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}"
REGISTERED_REF = re.compile(rf"models:/({_NAME})(?:@({_NAME})|/([1-9][0-9]{{0,8}}))")
STARTER_PREFIX = "pearl-starter-"
PROJECT_PREFIX = "pearl-project-"


def parse_registered_ref(ref: str) -> tuple[str, str]:
    """(name, alias or version) of `models:/name@alias` or `models:/name/3`, strictly: ValueError for anything else
    (a path, a URL, a bare `models:/name`, `..`). The message never repeats the value, which may be a path."""
    match = REGISTERED_REF.fullmatch(ref) if isinstance(ref, str) else None
    if match is None:
        raise ValueError(f"not a registered model reference: expected {ACCEPTED_FORMS}")
    return match[1], match[2] or match[3]


def starter_model_name(schema_id: str) -> str:
    """Registered-model name of a schema's starter family (the review app's default base model)."""
    return f"{STARTER_PREFIX}{schema_id}"


def project_model_name(project_id: int) -> str:
    """The one registered-model name of a project's versions, for the review app and the Dagster loop alike."""
    return f"{PROJECT_PREFIX}{int(project_id)}"


def starter_schema_of(name: str) -> str | None:
    """The schema id of a starter family's registered name (`pearl-starter-<schema>`), else None."""
    schema_id = name.removeprefix(STARTER_PREFIX)
    return schema_id if schema_id != name and schema_id else None


def project_id_of(name: str) -> int | None:
    """The project id of a project's registered name, exactly as `project_model_name` writes it, else None."""
    digits = name.removeprefix(PROJECT_PREFIX)
    if digits == name or not digits.isascii() or not digits.isdigit():
        return None
    return int(digits) if project_model_name(int(digits)) == name else None


def checkpoint_alias(checkpoint_name: str) -> str:
    """MLflow alias of a named checkpoint (aliases allow letters, digits, `_` and `-`)."""
    return CHECKPOINT_ALIAS_PREFIX + (re.sub(r"[^a-z0-9_]+", "-", checkpoint_name.lower()).strip("-") or "unnamed")
