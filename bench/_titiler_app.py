"""Plain titiler (the baseline of bench/tiles.py): `TilerFactory` at /cog reading `?url=`, nothing else."""

from fastapi import FastAPI
from titiler.core.errors import DEFAULT_STATUS_CODES, add_exception_handlers
from titiler.core.factory import TilerFactory

app = FastAPI(title="plain titiler")
cog = TilerFactory(router_prefix="/cog")
app.include_router(cog.router, prefix="/cog")
add_exception_handlers(app, DEFAULT_STATUS_CODES)
