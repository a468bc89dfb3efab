"""PEARL review app: FastAPI + titiler tiles + websocket events + the MapLibre front-end.

GDAL reads `GDAL_SKIP` once, when it registers its drivers (at the first dataset opened), so VRT is
switched off here, before anything in this package can import rasterio. The tile reader also opens
files with the GTiff driver only, which holds even when GDAL was initialised earlier in the process.
"""

import os

_skip = os.environ.get("GDAL_SKIP", "").split()
if "VRT" not in _skip:
    os.environ["GDAL_SKIP"] = " ".join([*_skip, "VRT"])
