"""PEARL review app: FastAPI + titiler tiles + websocket events + the MapLibre front-end.

VRT: the tile reader opens files with GDAL's GTiff driver only (gtiff_reader.GTiffReader), so a VRT (or any
other format) is never read through a tile route, whatever its name. `GDAL_SKIP=VRT` is *not* set:
rasterio builds in-memory VRTs for its own work (`calculate_default_transform`, boundless window
reads), which rio-tiler uses for every reprojected tile; with the driver skipped those fail.
"""
