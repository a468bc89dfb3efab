"""Imagery a new project can be made of: the local catalog's collections, and a search of a configured STAC API
with a small thumbnail of each item found.

Nothing here goes to a place a request names: STAC APIs by the operator's id (`StacCatalog.for_api`), items by the
id that API gives, image hrefs through `checked_href` (http(s) URLs, or files inside the local catalog), opened by
the GTiff driver only. Thumbnails are rendered here, so the page (whose CSP allows images of its own origin only)
never loads a remote image; reads are bounded in size (`THUMB_PX`, overviews) and time (GDAL's HTTP timeouts).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import pystac
import rasterio
from rasterio.enums import Resampling
from rio_tiler.utils import render

from pearl_pipelines.geo.catalog import collection_files
from pearl_pipelines.geo.stac import IMAGE_ASSET, StacCatalog, StacError
from pearl_pipelines.settings import DEFAULT_STAC_API, Settings
from review_app.schemas import LocalCollectionOut, StacApiOut, StacItemOut, StacSearchOut
from review_app.services.uploads import may_use_collection

log = logging.getLogger(__name__)
THUMB_PX = 256  # longest side of a thumbnail
MAX_UNTILED_PIXELS = 64_000_000  # an image without overviews larger than this gets no thumbnail (a full read)
MAX_SEARCH_ITEMS = 50
MAX_SEARCH_DEGREES = 2.0  # a search box wider or taller than this is refused: zoom in
GDAL_HTTP = {
    "GDAL_HTTP_TIMEOUT": "20",
    "GDAL_HTTP_CONNECTTIMEOUT": "10",
    "GDAL_HTTP_MAX_RETRY": "1",
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF",
}
_THUMBS_KEPT = 128
_thumbs: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()
_thumbs_lock = threading.Lock()


class ThumbnailError(LookupError):
    """No thumbnail for this item (404): unknown item, no image, or too large to read whole."""


# -- the local catalog ------------------------------------------------------------------------------------------
def local_collections(settings: Settings, user_id: int) -> list[LocalCollectionOut]:
    """The local catalog's collections the user may use (an upload is its uploader's only: `may_use_collection`),
    read from their collection.json (items are counted, not opened)."""
    out = []
    for path in collection_files(settings.catalog_dir):
        if not may_use_collection(path.parent.name, user_id):
            continue
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("local collection %s unreadable: %s", path, exc)
            continue
        extent = doc.get("extent") or {}
        bbox = ((extent.get("spatial") or {}).get("bbox") or [None])[0]
        interval = ((extent.get("temporal") or {}).get("interval") or [[None, None]])[0]
        out.append(
            LocalCollectionOut(
                id=str(doc.get("id") or path.parent.name),
                title=str(doc.get("title") or doc.get("id") or path.parent.name),
                description=str(doc.get("description") or ""),
                item_count=sum(1 for link in doc.get("links", []) if link.get("rel") == "item"),
                bbox=tuple(bbox[:4]) if isinstance(bbox, list) and len(bbox) >= 4 else None,
                start=interval[0] if interval else None,
                end=interval[1] if interval and len(interval) > 1 else None,
            )
        )
    return out


# -- configured STAC APIs -----------------------------------------------------------------------------------------
def stac_apis(settings: Settings) -> list[StacApiOut]:
    return [StacApiOut(id=api, default=api == DEFAULT_STAC_API) for api in settings.resolved_stac_apis]


def _catalog(settings: Settings, api: str, collections: Sequence[str] | None = None) -> StacCatalog:
    if api not in settings.resolved_stac_apis:
        known = ", ".join(sorted(settings.resolved_stac_apis))
        raise KeyError(f"no STAC API {api[:64]!r} is configured; the configured ones are: {known}")
    return StacCatalog.for_api(api, settings, collections=collections)


def api_collections(settings: Settings, api: str) -> list[str]:
    return _catalog(settings, api).collection_ids()


def check_bbox(bbox: Sequence[float]) -> tuple[float, float, float, float]:
    """A lon/lat search box the server accepts; ValueError (422) saying what is accepted."""
    if len(bbox) != 4:
        raise ValueError(f"bbox needs 4 numbers (west,south,east,north in degrees), got {len(bbox)}")
    west, south, east, north = (float(v) for v in bbox)
    if not all(np.isfinite([west, south, east, north])):
        raise ValueError("bbox: the numbers must be finite")
    if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
        raise ValueError("bbox must be west,south,east,north in degrees with west < east and south < north")
    if east - west > MAX_SEARCH_DEGREES or north - south > MAX_SEARCH_DEGREES:
        raise ValueError(f"the search box is larger than {MAX_SEARCH_DEGREES} degrees on a side: zoom in")
    return west, south, east, north


def search(
    settings: Settings,
    api: str,
    *,
    collections: Sequence[str],
    bbox: Sequence[float],
    datetime: str | None,
    limit: int,
) -> StacSearchOut:
    """Items of `collections` of the configured API `api` in `bbox` (lon/lat) and the `datetime` range, newest
    first, at most `limit` (`more` says whether more matched)."""
    box = check_bbox(bbox)
    catalog = _catalog(settings, api, collections)
    items = catalog.search(bbox=box, datetime=datetime, max_items=limit + 1)
    found = [
        StacItemOut(
            id=item.id,
            collection=item.collection_id or (collections[0] if collections else ""),
            datetime=item.datetime.isoformat() if item.datetime else item.properties.get("start_datetime"),
            bbox=(item.bbox[0], item.bbox[1], item.bbox[2], item.bbox[3]) if item.bbox and len(item.bbox) >= 4 else box,
            geometry=item.geometry,
            thumbnail=f"/api/imagery/stac/{api}/items/{item.collection_id or collections[0]}/{item.id}/thumbnail.png",
        )
        for item in items[:limit]
    ]
    return StacSearchOut(api=api, items=found, more=len(items) > limit)


def _rgb_indexes(item: pystac.Item) -> list[int]:
    """Band numbers of red, green and blue by the asset's eo:bands common names; else 1, 2, 3."""
    bands = item.assets[IMAGE_ASSET].extra_fields.get("eo:bands") or []
    names = [str((b or {}).get("common_name", "")) for b in bands]
    if all(c in names for c in ("red", "green", "blue")):
        return [names.index(c) + 1 for c in ("red", "green", "blue")]
    return [1, 2, 3]


def _stretch(data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Bands to uint8 by their 2-98 % range over valid pixels (imagery of any bit depth looks like imagery)."""
    out = np.zeros(data.shape, dtype=np.uint8)
    for i, band in enumerate(data.astype("float64")):
        values = band[valid]
        if values.size == 0:
            continue
        low, high = np.percentile(values, (2, 98))
        scale = 255.0 / (high - low) if high > low else 0.0
        out[i] = np.clip((band - low) * scale, 0, 255).astype(np.uint8)
    return out


def _render(href: str, indexes: list[int]) -> bytes:
    with rasterio.Env(**GDAL_HTTP), rasterio.open(href, driver="GTiff") as src:
        if src.count < 3:
            indexes = [1, 1, 1]
        if not src.overviews(1) and src.width * src.height > MAX_UNTILED_PIXELS:
            raise ThumbnailError("the image has no overviews and is too large to read for a thumbnail")
        scale = THUMB_PX / max(src.width, src.height)
        shape = (len(indexes), max(1, round(src.height * min(scale, 1))), max(1, round(src.width * min(scale, 1))))
        data = src.read(indexes, out_shape=shape, resampling=Resampling.average, masked=True)
    valid: np.ndarray = np.logical_not(np.ma.getmaskarray(data).any(axis=0))
    rgb = _stretch(np.ma.getdata(data), valid)
    mask: np.ndarray = np.where(valid, 255, 0).astype(np.uint8)
    return render(rgb, mask=mask, img_format="PNG")


def thumbnail(settings: Settings, api: str, collection: str, item_id: str) -> bytes:
    """A PNG (longest side THUMB_PX) of the item's image, looked up again by id at the configured API."""
    key = (api, collection, item_id)
    with _thumbs_lock:
        if key in _thumbs:
            _thumbs.move_to_end(key)
            return _thumbs[key]
    catalog = _catalog(settings, api, [collection])
    try:
        found = list(catalog.client.search(ids=[item_id], collections=[collection], max_items=1).items())
    except Exception as exc:  # the API's own answer: an error that names the API only (geo/stac.py)
        raise catalog._error("item lookup", exc) from None
    if not found:
        raise ThumbnailError(f"the STAC API {api!r} has no item {item_id[:80]!r} in {collection[:64]!r}")
    item = found[0]
    if IMAGE_ASSET not in item.assets:
        raise ThumbnailError(f"item {item_id[:80]!r} has no {IMAGE_ASSET!r} asset")
    _, href = next(catalog.image_hrefs([item]))  # checked: http(s), or a file inside the local catalog
    try:
        png = _render(href, _rgb_indexes(item))
    except rasterio.errors.RasterioError as exc:
        log.warning("thumbnail of %s/%s/%s (%s): %s", api, collection, item_id, href, exc)
        raise StacError(f"the image of item {item_id[:80]!r} could not be read for a thumbnail") from None
    with _thumbs_lock:
        _thumbs[key] = png
        while len(_thumbs) > _THUMBS_KEPT:
            _thumbs.popitem(last=False)
    return png
