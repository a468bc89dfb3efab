"""`models:/` references: the one parser every caller (Dagster, the review app, the worker) uses."""

from __future__ import annotations

import pytest

from pearl_pipelines.ml.refs import DEFAULT_ALIAS, model_uri, parse_model_uri, starter_model_name


@pytest.mark.parametrize(
    ("ref", "parsed"),
    [
        ("models:/pearl-starter-chesapeake9@starter", ("pearl-starter-chesapeake9", "starter")),
        ("models:/m/3", ("m", "3")),
        ("models:/m", ("m", "champion")),  # no version or alias: the champion, the alias that serves maps
        ("models:/team/m/3", ("team/m", "3")),
    ],
)
def test_parse_model_uri(ref: str, parsed: tuple[str, str]) -> None:
    assert parse_model_uri(ref) == parsed


@pytest.mark.parametrize("ref", ["m@champion", "runs:/abc/model", "models:/", "models:/@champion", "models:/m/"])
def test_parse_model_uri_refuses_what_is_not_a_model_reference(ref: str) -> None:
    with pytest.raises(ValueError, match="must look like"):
        parse_model_uri(ref)


def test_model_uri_is_the_inverse() -> None:
    assert model_uri("m", "starter") == "models:/m@starter" and model_uri("m", 2) == "models:/m/2"
    for ref in ("models:/m@starter", "models:/m/2", f"models:/m@{DEFAULT_ALIAS}"):
        assert model_uri(*parse_model_uri(ref)) == ref
    assert starter_model_name("chesapeake9") == "pearl-starter-chesapeake9"
