"""The direct trigger's failure modes (the happy path, through `dagster dev`, is in test_e2e.py)."""

from __future__ import annotations

import pytest
from shapely.geometry import Point

from pearl_pipelines.classes import load_schema
from pearl_pipelines.trigger import TriggerError, submit_label_run
from tests.conftest import free_port
from tests.defs.conftest import Project


def test_unreachable_webserver_says_the_sensor_takes_over(project: Project) -> None:
    with pytest.raises(TriggerError, match=r"not reachable.*label_submission_sensor"):
        submit_label_run(project.project_id, port=free_port(), store=project.store)


def test_project_without_aoi_is_refused(label_store) -> None:
    bare = label_store.create_project("bare", {}, load_schema("chesapeake9"), "models:/x@starter")
    label_store.add_labels(bare.id, [("water", Point(-76.42, 38.97))])
    with pytest.raises(TriggerError, match="has no AOI"):
        submit_label_run(bare.id, port=free_port(), store=label_store)
