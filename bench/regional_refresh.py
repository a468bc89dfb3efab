"""Regional refresh through Dagster vs the same work called directly: wall time and tiles per minute.

Region `demo` (16 km^2 at 1 m, full scale). Both paths do the same work: STAC search of the region, every
imagery tile cut again (COG), every tile predicted by the champion with full inference (the worker's
`predict_tile_list`, over a mosaic of the tiles), the mosaic COG, confidence COG, STAC item and areas.
- Dagster: `regional_refresh_job[demo]` submitted through `dagster dev` (imagery_index -> landcover_map,
  the worker as a Pipes subprocess, MLflow inference run, asset checks);
- direct: the same functions in this process, no Dagster, no Pipes, no MLflow.
The JSON line reports {"tiles_per_min", "overhead_ratio" (Dagster wall / direct wall), ..., "model", "machine"};
target ratio <= 1.25. The champion is the registered starter `pearl-starter-chesapeake9` (`--proxy-fcn`: a bench FCN).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from _dagster import STARTER, arguments, bench_services, emit, log, median, run_info

REGION = "demo"
ROUNDS = 2  # each round runs both paths, in alternating order (page cache, machine load); medians reported


class LocalPipes:
    """Stands in for the Pipes context when the worker's prediction loop is called directly."""

    class _Log:
        def info(self, message: str) -> None:
            pass

    log = _Log()

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def report_custom_message(self, payload: dict[str, Any]) -> None:
        self.messages.append(payload)


def direct_refresh(home: Path, stac_url: str, mlflow_uri: str, version: str) -> tuple[float, int]:
    """The regional refresh without Dagster; returns (seconds, tiles predicted)."""
    from pearl_pipelines.defs.models import ModelRef
    from pearl_pipelines.defs.resources import RasterStore
    from pearl_pipelines.geo.grid import aoi_to_tile_keys
    from pearl_pipelines.geo.imagery_index import index_frame, tile_sources
    from pearl_pipelines.geo.maps import write_region_map
    from pearl_pipelines.geo.regions import load_regions
    from pearl_pipelines.geo.stac import StacCatalog
    from pearl_pipelines.geo.tiles import cut_tiles
    from pearl_pipelines.layout import CLASSES_FILE, CONFIDENCE_FILE
    from pearl_pipelines.ml.registry import load_registered
    from pearl_pipelines.worker.contracts import Tile
    from pearl_pipelines.worker.tasks import predict_tile_list

    started = time.perf_counter()
    rasters = RasterStore(home=str(home))
    region = load_regions()[REGION]
    keys = aoi_to_tile_keys(region.geometry)
    catalog = StacCatalog(url=stac_url, collections=[REGION])
    frame = index_frame(catalog.search(intersects=region.geometry))
    list(cut_tiles(keys, lambda k: tile_sources(frame, k), rasters.tile_path, force=True))
    keys = [k for k in keys if rasters.tile_path(k).is_file()]
    model_ref = ModelRef(STARTER, version)
    model = load_registered(mlflow_uri, STARTER, version, home / "models" / "registry-cache")
    tiles = [
        Tile(key=k, tile_path=str(rasters.tile_path(k)), out_dir=str(rasters.predictions_dir(model_ref.slug, k)))
        for k in keys
    ]
    predict_tile_list(LocalPipes(), model, model_ref.uri, tiles)  # type: ignore[arg-type]
    predicted = [rasters.predictions_dir(model_ref.slug, k) for k in keys]
    write_region_map(
        region,
        class_paths=[d / CLASSES_FILE for d in predicted],
        confidence_paths=[d / CONFIDENCE_FILE for d in predicted],
        out_dir=rasters.map_dir(region.name, model_ref.slug),
        model_uri=model_ref.uri,
        model_slug=model_ref.slug,
    )
    return time.perf_counter() - started, len(keys)


def main() -> None:
    from mlflow import MlflowClient

    from pearl_pipelines.settings import get_settings

    args = arguments(__doc__.splitlines()[0])
    with bench_services("regional_refresh", proxy=args.proxy_fcn) as bench:
        info = run_info(bench, args.proxy_fcn)
        settings = get_settings()
        champion = MlflowClient(bench.mlflow_uri).get_model_version_by_alias(STARTER, "champion").version
        log(f"champion: models:/{STARTER}/{champion}")
        config = {
            "ops": {
                "imagery_index": {"config": {"refetch_tiles": True}},
                "landcover_map": {"config": {"repredict": True}},
            }
        }
        direct_times: list[float] = []
        dagster_times: list[float] = []
        tiles = 0

        def run_direct(round_: int) -> None:
            nonlocal tiles
            seconds, tiles = direct_refresh(
                settings.home_abs / "direct", settings.resolved_stac_url, bench.mlflow_uri, champion
            )
            direct_times.append(seconds)
            log(f"round {round_}: direct  {seconds:6.1f} s  ({tiles} tiles, {60 * tiles / seconds:.1f} tiles/min)")

        def run_dagster(round_: int) -> None:
            submitted = time.time()
            run = bench.wait(
                bench.submit("regional_refresh_job", run_config=config, tags={"dagster/partition": REGION})
            )
            seconds = time.time() - submitted
            dagster_times.append(seconds)
            log(
                f"round {round_}: Dagster {seconds:6.1f} s  ({60 * tiles / seconds:.1f} tiles/min; "
                f"launch {run['startTime'] - submitted:.1f} s)"
            )

        for round_ in range(1, ROUNDS + 1):
            order = (run_direct, run_dagster) if round_ % 2 else (run_dagster, run_direct)
            if not tiles:
                order = (run_direct, run_dagster)  # the direct run counts the tiles first
            for step in order:
                step(round_)
        direct_s, dagster_s = median(direct_times), median(dagster_times)
        ratio = dagster_s / direct_s
        log(f"overhead ratio {ratio:.3f} (Dagster {dagster_s:.1f} s / direct {direct_s:.1f} s); target <= 1.25")
        emit(
            {
                "tiles_per_min": 60 * tiles / dagster_s,
                "overhead_ratio": ratio,
                "dagster_s": dagster_s,
                "direct_s": direct_s,
                "direct_tiles_per_min": 60 * tiles / direct_s,
                "tiles": tiles,
                "region_km2": 16.0,
                **info,
            }
        )


if __name__ == "__main__":
    main()
