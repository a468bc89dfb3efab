"""Browser policy and request limits of the review app: security headers, a body size cap, CORS closed by default.

Pure ASGI middleware (no BaseHTTPMiddleware), so websocket and streaming responses pass untouched.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from urllib.parse import urlsplit

from fastapi import FastAPI, HTTPException
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send


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


class BodySizeLimitMiddleware:
    """413 for a body over `max_bytes`, by its Content-Length or, when chunked, as it streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes
        self.message = f"request body too large: at most {self.max_bytes} bytes are accepted"

    async def _reject(self, send: Send) -> None:
        body = json.dumps({"detail": self.message})
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body.encode()})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
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


def add_security(app: FastAPI, *, max_body_bytes: int, cors_origins: list[str], oidc_issuer: str | None = None) -> None:
    """CORS stays closed (no Access-Control-* headers: browsers refuse cross-origin calls) unless origins are set.
    With an OIDC issuer (oidc mode), the page may also fetch from the issuer's origin (its sign-in)."""
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_body_bytes)
    headers = dict(SECURITY_HEADERS)
    if oidc_issuer:
        headers[b"content-security-policy"] = content_security_policy([issuer_origin(oidc_issuer)]).encode()
    app.add_middleware(SecurityHeadersMiddleware, headers=headers)
    access_log = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, TokenRedaction) for f in access_log.filters):
        access_log.addFilter(TokenRedaction())


class TokenRedaction(logging.Filter):
    """Tiles and the websocket carry the bearer token as `access_token=` (a browser cannot set headers there):
    the server's access log shows the path without it."""

    PATTERN = re.compile(r"(access_token=)[^&\s]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self.PATTERN.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = self.PATTERN.sub(r"\1***", record.msg)
        return True
