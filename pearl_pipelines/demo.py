"""`make demo`: build the demo data, start the local services, run the main job, print the URLs.

Every service is started by this process and stopped by it on Ctrl-C (or SIGTERM), in reverse order.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time

from tqdm import tqdm

from pearl_pipelines.geo.grid import aoi_to_tile_keys
from pearl_pipelines.geo.regions import build_region, load_regions
from pearl_pipelines.geo.stac import StacCatalog
from pearl_pipelines.geo.stac_server import StacServer
from pearl_pipelines.geo.tiles import fetch_tile
from pearl_pipelines.settings import Settings

DEMO_REGION = "demo"


def ensure_regions(settings: Settings) -> None:
    """Generate every region of assets/regions that is not yet in the local catalog."""
    for region in load_regions(settings.assets_dir).values():
        if region.properties.synthetic is None:
            continue
        if not (settings.catalog_dir / region.name / "collection.json").exists():
            started = time.perf_counter()
            build_region(region, settings.catalog_dir, show_progress=True)
            print(f"  region {region.name} generated in {time.perf_counter() - started:.1f} s")


def demo_imagery_tiles(settings: Settings) -> int:
    """The main job until the Dagster pipeline runs it: demo-region imagery tiles via the STAC API."""
    region = load_regions(settings.assets_dir)[DEMO_REGION]
    catalog = StacCatalog.from_settings(settings, collections=[DEMO_REGION])
    keys = aoi_to_tile_keys(region.geometry)
    for key in tqdm(keys, desc="imagery tiles (COG)", unit="tile"):
        fetch_tile(catalog, key, settings.tiles_dir)
    return len(keys)


def run_demo(settings: Settings, keep_running: bool = True) -> None:
    settings.home_abs.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # SIGTERM unwinds the ExitStack like Ctrl-C
    print(f"PEARL_HOME = {settings.home_abs}")
    print("1/3 demo regions")
    ensure_regions(settings)
    with contextlib.ExitStack() as services:
        print("2/3 local services")
        stac = services.enter_context(StacServer(settings.catalog_dir, settings.stac_port))
        print(f"  STAC API     {stac.url}")
        print("3/3 main job")
        n_tiles = demo_imagery_tiles(settings)
        print(f"\nDemo ready: {n_tiles} imagery tiles under {settings.tiles_dir}")
        print(f"  STAC API     {stac.url}/collections/{DEMO_REGION}/items")
        if keep_running:
            print("Ctrl-C stops every service started here.")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                print("\nstopping services...")
