"""A real HTTP listener on 127.0.0.1 that records every request it gets, and answers as a test tells it: nothing
reached it unless its log says so (the SSRF tests), or it plays a small STAC API (landing page + /search)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = tuple[int, dict[str, str], bytes]  # status, headers, body
Responder = Callable[["Listener", str, str], Answer]  # (listener, method, path) -> answer

SEARCH_CONFORMANCE = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/item-search",
]


def not_found(_: Listener, __: str, ___: str) -> Answer:
    return 404, {"Content-Type": "application/json"}, b'{"code": "NotFound"}'


@dataclass
class Listener:
    """Where it listens (`url`, no trailing slash), what it got, and how it answers (`respond`, settable)."""

    url: str = ""
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path with query)
    respond: Responder = not_found

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


def _handler(listener: Listener) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            listener.requests.append((self.command, self.path))
            status, headers, body = listener.respond(listener, self.command, self.path)
            self.send_response(status)
            for name, value in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_POST = do_HEAD = _answer

    return Handler


@contextmanager
def listening(respond: Responder = not_found) -> Iterator[Listener]:
    listener = Listener(respond=respond)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(listener))
    listener.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield listener
    finally:
        server.shutdown()
        server.server_close()


def redirect_to(target: str) -> Responder:
    """Answers everything with a 302 to `target` (+ the path asked for)."""

    def respond(_: Listener, __: str, path: str) -> Answer:
        return 302, {"Location": f"{target}{path}"}, f"moved to {target}{path}".encode()

    return respond


def failing(status: int, body: bytes) -> Responder:
    def respond(_: Listener, __: str, ___: str) -> Answer:
        return status, {"Content-Type": "application/json"}, body

    return respond


def stac_item(item_id: str, href: str, bbox: Sequence[float]) -> dict[str, Any]:
    west, south, east, north = bbox
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "collection": "fake",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "bbox": list(bbox),
        "properties": {"datetime": "2021-07-16T00:00:00Z"},
        "links": [],
        "assets": {"image": {"href": href, "type": "image/tiff; application=geotiff", "roles": ["data"]}},
    }


def stac_api(hrefs: Sequence[str], bbox: Sequence[float], *, search_url: str | None = None) -> Responder:
    """A STAC API whose search finds one item per href (image asset = that href). `search_url`: where the landing
    page says searches go (default: this API's /search)."""

    def respond(listener: Listener, method: str, path: str) -> Answer:
        route = path.split("?", 1)[0].rstrip("/") or "/"
        if route == "/":
            search = search_url or f"{listener.url}/search"
            body: dict[str, Any] = {
                "type": "Catalog",
                "id": "fake",
                "stac_version": "1.0.0",
                "description": "a fake STAC API",
                "conformsTo": SEARCH_CONFORMANCE,
                "links": [
                    {"rel": "self", "href": f"{listener.url}/", "type": "application/json"},
                    {"rel": "root", "href": f"{listener.url}/", "type": "application/json"},
                    {"rel": "search", "href": search, "type": "application/geo+json", "method": "POST"},
                    {"rel": "search", "href": search, "type": "application/geo+json", "method": "GET"},
                ],
            }
        elif route == "/search":
            features = [stac_item(f"item-{n}", href, bbox) for n, href in enumerate(hrefs)]
            body = {"type": "FeatureCollection", "features": features, "links": []}
        else:
            return not_found(listener, method, path)
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()

    return respond
