"""Where a tile key's files live: one folder per tile, `z/x/y` under a root.

Free of heavy imports on purpose: the worker's file layout and the Dagster resources import it.
"""

from __future__ import annotations

from pathlib import Path

TILE_IMAGE = "image.tif"


def tile_dir(root: Path, key: str) -> Path:
    """The folder of tile `key` ("z-x-y") under `root`: root/z/x/y."""
    z, x, y = key.split("-")
    return Path(root) / z / x / y


def tile_path(tiles_dir: Path, key: str) -> Path:
    """The imagery COG of tile `key` under the imagery tiles folder."""
    return tile_dir(tiles_dir, key) / TILE_IMAGE
