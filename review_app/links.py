"""The TileJSON links of a project's layers: URLs made of ids only (tiles.py maps the ids to files)."""

from __future__ import annotations

from review_app.schemas import TileJsonLinks

TMS = "WebMercatorQuad"


def imagery_links(project_id: int) -> TileJsonLinks:
    base = f"/tiles/imagery/{project_id}/{TMS}/tilejson.json?minzoom=11"
    return TileJsonLinks(true_color=f"{base}&bidx=1&bidx=2&bidx=3", false_color=f"{base}&bidx=4&bidx=1&bidx=2")


def prediction_links(project_id: int, aoi_id: int, version: int) -> TileJsonLinks:
    tail = f"{project_id}/{aoi_id}/{version}/{TMS}/tilejson.json"
    return TileJsonLinks(
        classes=f"/tiles/predictions/{tail}?tile_format=png&minzoom=12",
        confidence=f"/tiles/confidence/{tail}?tile_format=png&minzoom=12",
    )
