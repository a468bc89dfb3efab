"""A project's imagery: its STAC items mosaicked once into one RGBN COG that the tile routes and inference read.

One COG per imagery source keeps tile reads as cheap as plain titiler on a single file (one open, one
window read per tile) and gives inference a single raster in the imagery's native CRS and grid.
Items on another grid are warped onto the grid of the newest item; overlaps go to the newest
(the mosaic is `pearl_pipelines.geo.mosaic`'s).

Projects share mosaics: the mosaic of a source lives at `Layout.shared_imagery(source_digest(source))`, built once
(`shared_mosaic`) for every project of that source (same local collection; or same STAC API id, collections, bbox
and datetime). A STAC source names one of the operator's APIs by id (`Settings.resolved_stac_apis`), never a URL.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import rasterio
from rasterio.warp import transform_bounds

from pearl_pipelines.geo.catalog import collection_files, image_sources
from pearl_pipelines.geo.cog import write_rgbn_cog
from pearl_pipelines.geo.mosaic import Grid, open_sources, read_mosaic, union_bounds
from pearl_pipelines.geo.stac import StacCatalog
from pearl_pipelines.settings import DEFAULT_STAC_API, Settings

MAX_MOSAIC_PIXELS = 64_000_000  # 64 km^2 at 1 m: the live-mapping scale; regional maps belong to Dagster jobs
MOSAIC_VERSION = 1  # part of every source digest: bump it when mosaics are built differently (new files, no reuse)
Progress = Callable[[int, int], None]


class ImageryError(RuntimeError):
    """The project's imagery cannot be found or mosaicked; the message says what to do."""


class UnknownStacApi(ImageryError):
    """A STAC API id (or, in projects of before, a URL) that is not among the operator's configured APIs."""


def _accepted(settings: Settings) -> str:
    return ", ".join(sorted(settings.resolved_stac_apis))


def resolve_source(imagery: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    """The canonical form of a project's imagery source (what its digest is of), its STAC API named by id.

    UnknownStacApi: an `api` id the operator has not configured, or a stored `url` (projects made before API ids)
    that is no configured API's URL: such a source is an error, never a request to that URL.
    """
    if imagery.get("source", "local") == "local":
        return {"source": "local", "collection": str(imagery.get("collection", ""))}
    apis = settings.resolved_stac_apis
    api = imagery.get("api")
    if api is None:  # stored before STAC APIs were chosen by id: a URL, or none for the default API
        url = imagery.get("url")
        api = DEFAULT_STAC_API if not url else next((i for i, u in apis.items() if _same_url(u, str(url))), None)
        if api is None:
            raise UnknownStacApi(
                "the imagery source is no longer configured: this project names its STAC API by a URL that is not "
                f"one of the configured APIs ({_accepted(settings)}); create a project with one of those"
            )
    elif api not in apis:
        raise UnknownStacApi(f"unknown STAC API {str(api)[:64]!r}; the configured ones are: {_accepted(settings)}")
    return {
        "source": "stac",
        "api": api,
        "collections": sorted({str(c) for c in imagery.get("collections") or []}),
        "bbox": [float(v) for v in imagery["bbox"]],
        "datetime": imagery.get("datetime"),
    }


def shown_source(imagery: Mapping[str, Any]) -> dict[str, Any]:
    """A project's imagery source as responses show it: a URL that projects of before stored (an API's address is
    the operator's configuration, never shown) is left out; the API's id says which one it is."""
    return {key: value for key, value in imagery.items() if key != "url"}


def _same_url(a: str, b: str) -> bool:
    return a.strip().rstrip("/") == b.strip().rstrip("/")


def source_digest(source: Mapping[str, Any]) -> str:
    """sha256 of a canonical source's JSON (keys sorted, no spaces): the name of its shared mosaic."""
    canonical = json.dumps({**source, "mosaic_version": MOSAIC_VERSION}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def imagery_sources(source: Mapping[str, Any], settings: Settings) -> list[tuple[str, str]]:
    """(item id, image href) of a canonical source's items (resolve_source), newest first; every href checked
    (pearl_pipelines.geo.stac.checked_href) before anything opens it."""
    if source["source"] == "local":
        collection = source["collection"]
        try:
            sources = image_sources(settings.catalog_dir, collection)
        except KeyError:
            known = ", ".join(p.parent.name for p in collection_files(settings.catalog_dir)) or "none"
            raise ImageryError(
                f"no local collection {collection!r} (known: {known}). "
                f"Generate it with `pearl generate --regions {collection}` (or `make demo`)"
            ) from None
        if not sources:
            raise ImageryError(f"local collection {collection!r} has no items")
        return sources
    catalog = StacCatalog.for_api(source["api"], settings, collections=source["collections"])
    items = catalog.search(bbox=source["bbox"], datetime=source.get("datetime"))
    if not items:
        raise ImageryError(f"the STAC API {catalog.name!r} found no items in {tuple(source['bbox'])}")
    return [(item.id, href) for item, href in catalog.image_hrefs(items)]


_build_locks: dict[Path, threading.Lock] = {}
_build_locks_guard = threading.Lock()


def shared_mosaic(dst: Path, build: Callable[[Path], object]) -> bool:
    """Make the shared mosaic `dst` once: True if this call built it, False if it was there (built for another
    project, or by a concurrent job that got the lock first).

    Concurrent builds of one mosaic (threads or processes) wait on a lock beside it; the builder writes a temporary
    file (`build(tmp)`) that is renamed onto `dst`, so a reader never sees a partial mosaic.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    with _build_locks_guard:
        thread_lock = _build_locks.setdefault(dst, threading.Lock())
    with thread_lock, open(dst.parent / ".lock", "a+b") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)  # other processes (app workers) building the same mosaic
        try:
            if dst.is_file():
                return False
            tmp = dst.with_name(f".{dst.stem}-{os.getpid()}-{threading.get_ident()}.tmp.tif")
            try:
                build(tmp)
                tmp.replace(dst)
            finally:
                tmp.unlink(missing_ok=True)
            return True
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def build_mosaic(
    sources: Sequence[tuple[str, str]],
    dst: Path,
    *,
    clip_lonlat: Sequence[float] | None = None,
    progress: Progress | None = None,
) -> Path:
    """Mosaic RGBN sources (newest first) into one masked COG on the newest source's grid."""
    items = open_sources(sources)
    for item in items:
        if item.count < 4:
            raise ImageryError(f"item {item.id} has {item.count} bands; RGBN imagery (4 bands) is required")
    crs, grid = items[0].crs, items[0].transform
    west, south, east, north = union_bounds(items, crs)
    if clip_lonlat is not None:
        cw, cs, ce, cn = transform_bounds("EPSG:4326", crs, *clip_lonlat, densify_pts=21)
        west, south, east, north = max(west, cw), max(south, cs), min(east, ce), min(north, cn)
        if east <= west or north <= south:
            raise ImageryError("the items found do not overlap the requested bbox")
    mosaic_grid = Grid.covering((west, south, east, north), crs, grid)
    width, height = mosaic_grid.width, mosaic_grid.height
    if width * height > MAX_MOSAIC_PIXELS:
        raise ImageryError(
            f"the imagery covers {width * height / 1e6:.0f} Mpx; the review app mosaics at most "
            f"{MAX_MOSAIC_PIXELS / 1e6:.0f} Mpx: choose a smaller bbox"
        )
    mosaic = read_mosaic(items, mosaic_grid, bands=4, progress=progress)
    if not mosaic.valid.any():
        raise ImageryError("the items hold no valid pixels")
    return write_rgbn_cog(
        dst,
        mosaic.data,
        mosaic.valid,
        crs=crs,
        transform=mosaic_grid.transform,
        tags={"pearl:sources": ",".join(s[0] for s in sources)[:4000]},
    )


def lonlat_bounds(path: str | Path) -> tuple[float, float, float, float]:
    with rasterio.open(path) as src:
        return tuple(transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21))  # type: ignore[return-value]
