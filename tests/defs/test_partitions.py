"""Tile-key partition ranges: the smallest range covering a set of keys, in the instance's key order."""

from __future__ import annotations

import pytest

from pearl_pipelines.defs.partitions import covering_range, keys_to_add, range_tags, region_names
from pearl_pipelines.settings import REPO_ROOT


def test_covering_range_spans_the_wanted_keys_in_partition_order() -> None:
    order = ["15-1-1", "15-1-2", "15-2-1", "15-2-2", "15-3-3"]
    key_range = covering_range(order, ["15-2-2", "15-1-2"])
    assert (key_range.start, key_range.end) == ("15-1-2", "15-2-2")
    assert range_tags(key_range) == {
        "dagster/asset_partition_range_start": "15-1-2",
        "dagster/asset_partition_range_end": "15-2-2",
    }
    single = covering_range(order, ["15-3-3"])
    assert single.start == single.end == "15-3-3"


def test_covering_range_refuses_unregistered_keys() -> None:
    with pytest.raises(KeyError, match="15-9-9"):
        covering_range(["15-1-1"], ["15-1-1", "15-9-9"])
    with pytest.raises(ValueError, match="no tile keys"):
        covering_range(["15-1-1"], [])


def test_keys_to_add_keeps_order_and_drops_known_and_repeated_keys() -> None:
    assert keys_to_add(["a", "b"], ["c", "a", "d", "c"]) == ["c", "d"]


def test_region_partitions_come_from_region_file_names() -> None:
    assert region_names(REPO_ROOT / "assets") == sorted(
        p.stem for p in (REPO_ROOT / "assets/regions").glob("*.geojson")
    )
