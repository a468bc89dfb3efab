"""Browser policy and request limits of the review app: security headers, a body size cap, CORS closed by default.

Pure ASGI middleware (no BaseHTTPMiddleware), so websocket and streaming responses pass untouched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import FastAPI, HTTPException
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from review_app import log_redaction


# The front-end is one bundle served from here; MapLibre draws from blob: workers and data:/blob: images,
# and talks to this origin only (REST, tiles, websocket). With OpenID Connect sign-in, the page also calls the
# identity provider's discovery document and token endpoint (fetch), and nothing else of it.
def content_security_policy(connect_origins: Sequence[str] = ()) -> str:
    return "; ".join(
        (
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data: blob:",
            "worker-src 'self' blob:",
            " ".join(("connect-src 'self' ws: wss:", *connect_origins)),
            "font-src 'self' data:",
            "object-src 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
            "form-action 'self'",
        )
    )


CONTENT_SECURITY_POLICY = content_security_policy()
SECURITY_HEADERS = {
    b"content-security-policy": CONTENT_SECURITY_POLICY.encode(),
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"no-referrer",
    b"cross-origin-opener-policy": b"same-origin",
    b"permissions-policy": b"camera=(), microphone=(), geolocation=()",
}


ORIGIN_HOST = re.compile(r"[A-Za-z0-9.\-]+(:\d+)?|\[[0-9A-Fa-f:.]+\](:\d+)?")  # host[:port], nothing else


def issuer_origin(issuer: str) -> str:
    """scheme://host[:port] of the OIDC issuer, the one source the page's sign-in fetches from."""
    parts = urlsplit(issuer)
    host = parts.netloc.rpartition("@")[2]
    if parts.scheme not in ("http", "https") or not ORIGIN_HOST.fullmatch(host):
        raise ValueError(f"PEARL_OIDC_ISSUER must be an http(s) URL, not {issuer!r}")
    return f"{parts.scheme}://{host}"


class SecurityHeadersMiddleware:
    """Adds the security headers to every HTTP response that does not set them itself."""

    def __init__(self, app: ASGIApp, headers: dict[bytes, bytes] = SECURITY_HEADERS) -> None:
        self.app, self.headers = app, headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in self.headers.items() if k not in present]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)


@dataclass(frozen=True)
class FileRoute:
    """A write route that takes a file, not JSON: the only exception to the JSON-only rule of
    RequestPolicyMiddleware (for `method` on paths matching `path`, with one of `content_types`), with its own
    body limit `max_bytes` (a Setting) instead of PEARL_MAX_BODY_BYTES. The Origin checks still apply."""

    method: str
    path: re.Pattern[str]
    content_types: frozenset[str]
    max_bytes: int
    setting: str  # the setting that names `max_bytes`, for the 413 message

    def matches(self, scope: Scope) -> bool:
        return scope.get("method") == self.method and self.path.fullmatch(scope.get("path", "")) is not None


def _file_route(scope: Scope, routes: Sequence[FileRoute]) -> FileRoute | None:
    return next((r for r in routes if r.matches(scope)), None)


class BodySizeLimitMiddleware:
    """413 for a body over `max_bytes` (a file route's own limit on its path), by its Content-Length or, when
    chunked, as it streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int, file_routes: Sequence[FileRoute] = ()) -> None:
        self.app, self.max_bytes, self.file_routes = app, max_bytes, tuple(file_routes)
        self.message = f"request body too large: at most {self.max_bytes} bytes are accepted"

    async def _reject(self, send: Send) -> None:
        body = json.dumps({"detail": self.message})
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body.encode()})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = _file_route(scope, self.file_routes)
        if route is not None:
            limited = BodySizeLimitMiddleware(self.app, route.max_bytes)
            limited.message = f"file too large: at most {route.max_bytes} bytes are accepted ({route.setting})"
            await limited(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:  # FastAPI lets an HTTPException from reading the body through
                    raise HTTPException(status_code=413, detail=self.message)
            return message

        await self.app(scope, counted, send)


WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "testserver")  # testserver: Starlette's TestClient


def _host_name(host_header: str) -> str:
    """The name part of a Host header or an origin's netloc: `[::1]:8000` -> `::1`, `a.example:80` -> `a.example`."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class RequestPolicyMiddleware:
    """What a browser on another site must not be able to do to the app (CSRF, DNS rebinding):

    - Host: only the names the app is served under (403 otherwise): a rebinding page's own name, resolved to
      127.0.0.1, is refused before any route runs;
    - Origin: a write (POST/PUT/PATCH/DELETE) or a websocket handshake whose Origin is neither the app's own nor
      one of PEARL_CORS_ORIGINS is refused (403); so is `Sec-Fetch-Site: cross-site`. Clients that are not
      browsers send no Origin and are not affected;
    - Content-Type: a write that carries a content type must say application/json (415): a cross-site HTML form
      (urlencoded, multipart, text/plain), which browsers send without asking, never reaches a route.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_hosts: Sequence[str],
        cors_origins: Sequence[str],
        file_routes: Sequence[FileRoute] = (),
    ) -> None:
        self.app, self.file_routes = app, tuple(file_routes)
        self.any_host = "*" in allowed_hosts
        self.hosts = {_host_name(h) for h in allowed_hosts}
        self.origins = {o.rstrip("/").lower() for o in cors_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        problem = self.refusal(scope)
        if problem is None:
            await self.app(scope, receive, send)
            return
        status, message = problem
        if scope["type"] == "websocket":  # before accept: the server answers the handshake with HTTP 403
            await send({"type": "websocket.close", "code": 4403, "reason": message[:120]})
            return
        body = json.dumps({"detail": message}).encode()
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
        )
        await send({"type": "http.response.body", "body": body})

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        probe = scope.get("path") == "/healthz"  # Kubernetes probes call the pod by its IP
        if not (self.any_host or probe) and _host_name(host) not in self.hosts:
            return 403, "this server does not answer to that host name; see PEARL_ALLOWED_HOSTS"
        write = scope["type"] == "websocket" or scope.get("method", "GET") in WRITE_METHODS
        if not write:
            return None
        origin = headers.get("origin")
        if origin is not None and not self._same_site(origin, host):
            return 403, "cross-origin request refused: call the API from the app's own page or PEARL_CORS_ORIGINS"
        if headers.get("sec-fetch-site") == "cross-site" and origin is None:
            return 403, "cross-site request refused"
        kind = headers.get("content-type")
        route = _file_route(scope, self.file_routes) if scope["type"] == "http" else None
        # A file route takes JSON too (a browser never sends it cross-site without CORS): the route answers it (422).
        accepted = frozenset({"application/json"}) | (route.content_types if route is not None else frozenset())
        if scope["type"] == "http" and kind is not None and kind.split(";")[0].strip().lower() not in accepted:
            sent = kind.split(";")[0].strip()[:60]
            return 415, f"writes take Content-Type: {' or '.join(sorted(accepted))}, not {sent!r}"
        return None

    def _same_site(self, origin: str, host: str) -> bool:
        origin = origin.rstrip("/").lower()
        if origin in self.origins:
            return True
        netloc = urlsplit(origin).netloc if "://" in origin else ""
        return bool(netloc) and netloc == host.strip().lower()


def allowed_hosts(configured: Sequence[str], *, local: bool) -> list[str]:
    """The Host names served: the configured ones, else loopback only in local mode and any in oidc mode."""
    if configured:
        return [*configured, *(LOOPBACK_HOSTS if local else ())]
    return list(LOOPBACK_HOSTS) if local else ["*"]


def add_security(
    app: FastAPI,
    *,
    max_body_bytes: int,
    cors_origins: list[str],
    hosts: Sequence[str] = ("*",),
    oidc_issuer: str | None = None,
    file_routes: Sequence[FileRoute] = (),
) -> None:
    """CORS stays closed (no Access-Control-* headers: browsers refuse cross-origin calls) unless origins are set.
    With an OIDC issuer (oidc mode), the page may also fetch from the issuer's origin (its sign-in)."""
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_body_bytes, file_routes=file_routes)
    app.add_middleware(RequestPolicyMiddleware, allowed_hosts=hosts, cors_origins=cors_origins, file_routes=file_routes)
    headers = dict(SECURITY_HEADERS)
    if oidc_issuer:
        headers[b"content-security-policy"] = content_security_policy([issuer_origin(oidc_issuer)]).encode()
    app.add_middleware(SecurityHeadersMiddleware, headers=headers)
    log_redaction.install()  # tokens in tile and websocket URLs never reach a log line
