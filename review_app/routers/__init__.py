"""REST + websocket routers, one domain per module, all under /api."""
