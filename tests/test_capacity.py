"""bench/capacity.py: the capacity model's arithmetic, against figures worked out by hand."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import capacity

from pearl_pipelines.geo.grid import MAX_TILES_PER_AOI

SMALL = capacity.Inputs(
    tile_km2=1.0,
    cpu_km2_per_s=0.5,
    gpu_km2_per_s=10.0,
    host_s_per_km2=0.1,
    cores=2,
    gsd_m=1.0,
    pods=2,
    price_per_gpu_hour=2.5,
    pod_start_s=180.0,
    prediction_bytes_per_px=0.5,
    embedding_bytes_per_px=2.0,
    imagery_tile_bytes_per_px=4.0,
)


def test_a_z15_tile_is_1_496_km2_at_the_equator_and_a_quarter_of_that_at_60_degrees() -> None:
    # (40,075.016686 km / 2^15)^2 = 1.222992^2 = 1.495710 km^2; cos(60)^2 = 1/4.
    assert capacity.tile_area_km2(0, 15) == pytest.approx(1.495710, rel=1e-5)
    assert capacity.tile_area_km2(60, 15) == pytest.approx(1.495710 / 4, rel=1e-5)
    assert capacity.tile_area_km2(0, 16) == pytest.approx(1.495710 / 4, rel=1e-5)


def test_tiles_covering_counts_the_edge_row_and_column() -> None:
    assert capacity.tiles_covering(100, 1.0) == 121  # (10 + 1)^2
    assert capacity.tiles_covering(16, 1.0) == 25  # the demo region: 4 x 4 km on ~1 km tiles -> 5 x 5


def test_region_partitions_split_at_the_grid_cap_and_give_every_pod_one() -> None:
    assert capacity.MAX_TILES_PER_REGION == MAX_TILES_PER_AOI
    assert capacity.region_partitions(121, pods=2) == 2
    assert capacity.region_partitions(50_001, pods=2) == 3
    assert capacity.region_partitions(50_001, pods=8) == 8


def test_region_row_of_100_km2_by_hand() -> None:
    row = capacity.region_row(100.0, SMALL)
    assert row["tiles"] == 121 and row["tile_partitions"] == 121 and row["region_partitions"] == 2
    assert row["cpu_hours"] == pytest.approx(100 / 0.5 / 3600)  # 0.0556 h
    assert row["cpu_core_hours"] == pytest.approx(2 * 100 / 0.5 / 3600)
    # a pod: 1 / (1/10 + 0.1) = 5 km^2/s -> 20 s of pod time
    assert row["gpu_hours"] == pytest.approx(20 / 3600)
    assert row["pod_hours"] == pytest.approx(20 / 3600 + 2 * 180 / 3600)  # + two pod starts: 0.1056 h
    assert row["cost_usd"] == pytest.approx(0.263889, rel=1e-5)
    assert row["wall_hours"] == pytest.approx(10 / 3600 + 180 / 3600)
    assert row["pods_for_a_day"] == 1
    assert row["prediction_bytes"] == pytest.approx(5e7)  # 1e8 px x 0.5 B
    assert row["embedding_bytes"] == pytest.approx(2e8)
    assert row["imagery_tile_bytes"] == pytest.approx(4e8)
    assert row["naip_source_bytes_uncompressed"] == pytest.approx(4e8)


def test_a_finer_pixel_scales_time_and_bytes_by_the_pixel_count() -> None:
    row = capacity.region_row(100.0, replace(SMALL, gsd_m=0.5))
    assert row["tiles"] == 121  # the grid does not change
    assert row["cpu_hours"] == pytest.approx(400 / 0.5 / 3600)
    assert row["gpu_hours"] == pytest.approx(80 / 3600)
    assert row["prediction_bytes"] == pytest.approx(2e8)


def test_more_loops_per_pod_speed_a_pod_up_until_the_gpu_is_busy() -> None:
    assert capacity.pod_km2_per_s(SMALL) == pytest.approx(5.0)
    two = replace(SMALL, loops_per_pod=2)
    four = replace(SMALL, loops_per_pod=4)
    assert capacity.pod_km2_per_s(two) == pytest.approx(10.0)
    assert capacity.pod_km2_per_s(four) == pytest.approx(10.0)  # capped by the GPU's 10 km^2/s


def test_gpu_estimate_and_mappers_per_replica() -> None:
    assert capacity.gpu_km2_per_s_estimate(1e12, peak_tflops=1000, efficiency=0.1) == pytest.approx(100.0)
    mappers = capacity.mappers_per_replica(20.0, 11.3, labels_per_mapper_min=10, tiles_per_mapper_s=1)
    assert mappers == {"by_writes": 120.0, "by_tiles": 11.0, "mappers": 11.0}
