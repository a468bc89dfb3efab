"""The one raster reader of the app's tile routes and previews: GeoTIFFs only, never a VRT or another format that
GDAL would open (a VRT can read any file on the server), and no tile below MIN_ZOOM."""

from __future__ import annotations

from typing import Any

import attr
import rasterio
from rio_tiler.errors import TileOutsideBounds
from rio_tiler.io import Reader
from rio_tiler.models import ImageData

# Below this zoom a tile covers so much more than a project's rasters that rio-tiler's warp takes ~4x longer per
# level (z8 7 s, z6 31 s, z0 hours on the 1.2 km test mosaic): one request would pin a worker thread. The map
# asks for z11+ (imagery) and z12+ (predictions); lower tiles answer the uniform 404.
MIN_ZOOM = 10


@attr.s
class GTiffReader(Reader):
    """rio-tiler Reader that opens (Geo)TIFFs only: a VRT or any other format is refused even if GDAL knows it."""

    def __attrs_post_init__(self) -> None:
        if not self.dataset:
            self.dataset = self._ctx_stack.enter_context(rasterio.open(self.input, driver="GTiff"))
        super().__attrs_post_init__()

    def tile(self, tile_x: int, tile_y: int, tile_z: int, *args: Any, **kwargs: Any) -> ImageData:
        """Tiles below MIN_ZOOM are refused (TileOutsideBounds: the tile routes' uniform 404, errors.py)."""
        if tile_z < MIN_ZOOM:
            raise TileOutsideBounds(f"tile zoom {tile_z} is below {MIN_ZOOM}")
        return super().tile(tile_x, tile_y, tile_z, *args, **kwargs)
