"""Failures: STAC and network steps retry with backoff; what retrying cannot fix fails at once."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from pearl_pipelines.defs.imagery import STAC_RETRY, imagery_index
from pearl_pipelines.defs.resources import RasterStore, StacResource
from tests.conftest import free_port


def test_unreachable_stac_api_is_retried_with_backoff_then_fails(tmp_path: Path) -> None:
    assert STAC_RETRY.max_retries == 3 and STAC_RETRY.backoff == dg.Backoff.EXPONENTIAL
    result = dg.materialize(
        [imagery_index],
        partition_key="demo",
        resources={
            "stac": StacResource(url=f"http://127.0.0.1:{free_port()}"),
            "rasters": RasterStore(home=str(tmp_path)),
        },
        raise_on_error=False,
    )
    assert not result.success
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retries) == STAC_RETRY.max_retries
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert "STAC search for region demo failed" in str(
        failure.step_failure_data.error.cause or failure.step_failure_data.error
    )
