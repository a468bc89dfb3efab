"""The local STAC catalog under PEARL_HOME: one collection per region (or ingest batch), COG assets.

Items carry the projection extension and per-band names (common_name nir for band 4), so the same
reader works for them and for NAIP from Planetary Computer.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pystac
import rasterio
from pystac.extensions.eo import Band, EOExtension
from pystac.extensions.projection import ProjectionExtension
from rasterio.warp import transform_bounds, transform_geom
from shapely.geometry import box, mapping, shape

from pearl_pipelines.geo.stac import IMAGE_ASSET, StacError, UnsafeHref, checked_href

COG_MEDIA_TYPE = pystac.MediaType.COG
RGBN_BANDS = [
    Band.create(name="red", common_name="red", center_wavelength=0.635),
    Band.create(name="green", common_name="green", center_wavelength=0.56),
    Band.create(name="blue", common_name="blue", center_wavelength=0.456),
    Band.create(name="nir", common_name="nir", center_wavelength=0.86),
]


@dataclass(frozen=True)
class AssetFile:
    """A file to attach to an item: its path, STAC roles and title."""

    path: Path
    roles: tuple[str, ...]
    title: str


def collection_files(catalog_dir: Path) -> list[Path]:
    return sorted(Path(catalog_dir).glob("*/collection.json"))


def item_from_raster(
    item_id: str,
    image_path: Path,
    *,
    datetime: dt.datetime,
    extra_assets: Mapping[str, AssetFile] | None = None,
    properties: Mapping[str, object] | None = None,
) -> pystac.Item:
    """A STAC item whose geometry, bbox and projection come from the image COG itself."""
    with rasterio.open(image_path) as src:
        crs, bounds, shape_, transform = src.crs, src.bounds, (src.height, src.width), src.transform
    footprint = transform_geom(crs, "EPSG:4326", mapping(box(*bounds)))
    item = pystac.Item(
        id=item_id,
        geometry=footprint,
        bbox=list(transform_bounds(crs, "EPSG:4326", *bounds, densify_pts=21)),
        datetime=datetime,
        properties=dict(properties or {}),
    )
    item.add_asset(
        IMAGE_ASSET,
        pystac.Asset(
            href=str(Path(image_path).resolve()), media_type=COG_MEDIA_TYPE, roles=["data"], title="RGBN image"
        ),
    )
    for key, asset in (extra_assets or {}).items():
        item.add_asset(
            key,
            pystac.Asset(
                href=str(asset.path.resolve()), media_type=COG_MEDIA_TYPE, roles=list(asset.roles), title=asset.title
            ),
        )
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    proj.epsg = crs.to_epsg()
    proj.wkt2 = None if crs.to_epsg() else crs.to_wkt()
    proj.shape = list(shape_)
    proj.transform = list(transform)[:6]
    proj.bbox = list(bounds)
    EOExtension.ext(item.assets[IMAGE_ASSET], add_if_missing=True).bands = RGBN_BANDS
    return item


def save_collection(
    catalog_dir: Path, collection_id: str, description: str, items: list[pystac.Item], *, title: str | None = None
) -> pystac.Collection:
    """(Re)write `catalog_dir/<collection_id>/collection.json` with absolute hrefs (what rustac needs)."""
    collection_dir = Path(catalog_dir).resolve() / collection_id
    extent = pystac.Extent(
        pystac.SpatialExtent([_union_bbox(items)]),
        pystac.TemporalExtent([[min(i.datetime for i in items), max(i.datetime for i in items)]]),  # type: ignore[type-var]
    )
    collection = pystac.Collection(
        id=collection_id, description=description, extent=extent, title=title, license="other"
    )
    for item in items:
        item.collection_id = collection_id
        collection.add_item(item)
    collection.normalize_hrefs(str(collection_dir))
    collection.save(catalog_type=pystac.CatalogType.ABSOLUTE_PUBLISHED)
    return collection


def load_collection_items(catalog_dir: Path, collection_id: str) -> list[pystac.Item]:
    """Items of a local collection read straight from disk (no API needed)."""
    path = Path(catalog_dir) / collection_id / "collection.json"
    if not path.is_file():
        known = ", ".join(p.parent.name for p in collection_files(catalog_dir)) or "none"
        raise KeyError(f"no local collection {collection_id!r} under {catalog_dir}; known: {known}")
    return list(pystac.Collection.from_file(str(path)).get_items())


def image_sources(catalog_dir: Path, collection_id: str) -> list[tuple[str, str]]:
    """(item id, image href) of a local collection's items, newest first, each href checked to be a file inside the
    catalog (`checked_href`) before anything opens it. KeyError: no such collection; StacError: an item without an
    image, or with an href elsewhere."""
    items = load_collection_items(catalog_dir, collection_id)
    items.sort(key=lambda it: it.datetime.isoformat() if it.datetime else "", reverse=True)
    sources = []
    for item in items:
        asset = item.assets.get(IMAGE_ASSET)
        if asset is None:
            raise StacError(f"item {item.id} of local collection {collection_id!r} has no {IMAGE_ASSET!r} asset")
        try:
            href = checked_href(asset.get_absolute_href() or asset.href, local_root=catalog_dir)
        except UnsafeHref as exc:
            raise UnsafeHref(
                f"item {item.id} of local collection {collection_id!r} has an image href that is {exc}; "
                "it was not opened"
            ) from None
        sources.append((item.id, href))
    return sources


def _union_bbox(items: list[pystac.Item]) -> list[float]:
    geoms = [shape(i.geometry) for i in items if i.geometry]
    minx = min(g.bounds[0] for g in geoms)
    miny = min(g.bounds[1] for g in geoms)
    maxx = max(g.bounds[2] for g in geoms)
    maxy = max(g.bounds[3] for g in geoms)
    return [minx, miny, maxx, maxy]
