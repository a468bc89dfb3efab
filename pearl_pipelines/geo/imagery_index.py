"""The imagery index: STAC items as a GeoDataFrame (stored as GeoParquet), and the items under a tile."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import geopandas as gpd
from shapely.geometry import shape

from pearl_pipelines.geo.grid import tile_geometry


def index_frame(items: Sequence[Any], image_asset: str = "image") -> gpd.GeoDataFrame:
    """STAC items -> GeoDataFrame (EPSG:4326): id, collection, datetime, href, gsd, epsg, geometry."""
    rows = []
    for item in items:
        asset = item.assets.get(image_asset)
        rows.append(
            {
                "id": item.id,
                "collection": item.collection_id,
                "datetime": item.datetime.isoformat() if item.datetime else None,
                "href": asset.href if asset else None,
                "gsd": item.properties.get("gsd"),
                "epsg": item.properties.get("proj:epsg") or item.properties.get("proj:code"),
                "geometry": shape(item.geometry),
            }
        )
    return gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:4326")


def tile_sources(index: gpd.GeoDataFrame, key: str) -> list[tuple[str, str]]:
    """(item id, href) of the index items under a tile, newest first."""
    hits = index[index.intersects(tile_geometry(key)) & index["href"].notna()].sort_values("datetime", ascending=False)
    return list(zip(hits["id"], hits["href"], strict=True))
