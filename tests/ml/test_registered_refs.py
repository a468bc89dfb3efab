"""The strict reader of a caller's `models:/` reference: the two explicit forms, nothing that could name a path."""

from __future__ import annotations

import pytest

from pearl_pipelines.ml.refs import parse_registered_ref, project_id_of, project_model_name, starter_schema_of


@pytest.mark.parametrize(
    ("ref", "parsed"),
    [
        ("models:/pearl-starter-chesapeake9@starter", ("pearl-starter-chesapeake9", "starter")),
        ("models:/pearl-project-12/3", ("pearl-project-12", "3")),
        ("models:/m_1@checkpoint-first_run", ("m_1", "checkpoint-first_run")),
    ],
)
def test_the_two_forms_parse(ref: str, parsed: tuple[str, str]) -> None:
    assert parse_registered_ref(ref) == parsed


@pytest.mark.parametrize(
    "ref",
    [
        "/srv/pearl/models/x/model.pt",
        "x/model.pt",
        "../model.pt",
        "file:///tmp/model.pt",
        "models:/m",  # bare: a caller names the alias or version
        "models:/team/m/3",
        "models:/../m@x",
        "models:/m@../../x",
        "models:/m@x/y",
        "models:/m/0",
        "models:/m/3a",
        "models:/m@",
        "models:/@x",
        " models:/m@x",
        "models:/m@x\n",
        "models:/" + "m" * 129 + "@x",
        "",
    ],
)
def test_anything_else_is_refused_without_repeating_it(ref: str) -> None:
    with pytest.raises(ValueError, match=r"expected models:/<name>@<alias> or models:/<name>/<version>") as info:
        parse_registered_ref(ref)
    assert not ref.strip() or ref.strip() not in str(info.value)


def test_starter_and_project_names() -> None:
    assert starter_schema_of("pearl-starter-chesapeake4") == "chesapeake4"
    assert starter_schema_of("pearl-starter-") is None and starter_schema_of("pearl-project-1") is None
    assert project_id_of(project_model_name(12)) == 12
    for name in ("pearl-project-012", "pearl-project-", "pearl-project-1x", "pearl-project-١", "pearl-starter-x"):
        assert project_id_of(name) is None, name
