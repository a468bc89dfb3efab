"""Enforcement: one app-wide dependency checks every REST, tile and websocket call against its rule, and a
middleware writes the audit trail once the response status is known (and first refuses oversized headers, 431).

Another project's ids answer exactly as unknown ids do (the same 404 and message), so nobody can enumerate
projects; a member without the role gets a 403 that names the role needed.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, HTTPException, WebSocketException, status
from fastapi.routing import APIWebSocketRoute
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pearl_pipelines.labels.accounts import Accounts, Role, User
from review_app.auth.identity import LOCAL_SUBJECT, Authenticator, NotSignedIn
from review_app.auth.rules import Rule, rule_for
from review_app.schemas import MAX_ID

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
AUDIT_KEY = "pearl_audit"  # scope entry the guard fills and the audit middleware reads
# Largest single request header (name and value) the app reads: a bearer token is a few KiB at most; nginx's
# default header buffer is 8 KiB too. A larger one is refused (431) before anything parses it (a JWT parser given
# a 1 MB token, a token digest, the audit trail).
MAX_HEADER_BYTES = 8192
WS_HEADER_TOO_LARGE = 4431  # the websocket's close code: HTTP status as 4xxx, as the guard's 4401/4403/4404


class Forbidden(Exception):
    """Signed in and a member, but without the role this needs (403)."""


def _route_of(conn: HTTPConnection) -> tuple[str, str]:
    method = "WS" if conn.scope["type"] == "websocket" else conn.scope["method"]
    # A route of an included router knows only its own part of the path; FastAPI keeps the full template
    # (the include's prefix too) in its effective route context.
    context = conn.scope.get("fastapi", {}).get("effective_route_context")
    path = getattr(context, "path_format", None) or getattr(conn.scope.get("route"), "path", conn.url.path)
    return method, str(path)


def route_rule(conn: HTTPConnection) -> Rule:
    method, path = _route_of(conn)
    rule = rule_for(method, path)
    if rule is None:  # create_app checks every route, so this is a route added at run time
        raise RuntimeError(f"no access rule for {method} {path}")
    return rule


def _project_id(conn: HTTPConnection) -> int:
    raw = str(conn.path_params.get("project_id", ""))
    if not raw.isdigit() or int(raw) > MAX_ID:
        raise KeyError(f"no project with id {raw}")
    return int(raw)


def role_in(accounts: Accounts, auth: Authenticator, user: User, project_id: int) -> Role | None:
    if auth.local and user.subject == LOCAL_SUBJECT:
        return Role.owner  # the one local user owns everything
    return accounts.role(user, project_id)


def authorize(conn: HTTPConnection) -> None:
    """App-wide dependency: authenticate, then check the route's rule (404 for projects the caller is not in).

    On a websocket a refusal closes the connection with the HTTP status as 4xxx and the reason: 4401 not signed
    in, 4404 unknown (or foreign) project, 4403 without the role.
    """
    if conn.scope["type"] != "websocket":
        _authorize(conn)
        return
    try:
        _authorize(conn)
    except (KeyError, Forbidden) as exc:
        reason = str(exc.args[0]) if exc.args else "not allowed"
        raise WebSocketException(code=4404 if isinstance(exc, KeyError) else 4403, reason=reason[:120]) from None


def _authorize(conn: HTTPConnection) -> None:
    rule = route_rule(conn)
    if rule.scope in ("public", "share"):  # share: the route checks the link's token (routers/shares.py)
        return
    services = conn.app.state.services
    auth: Authenticator = services.auth
    try:
        user = auth.authenticate(conn)
    except NotSignedIn as exc:
        if conn.scope["type"] == "websocket":
            raise WebSocketException(code=4401, reason=str(exc)[:120]) from None
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
    conn.state.user = user
    if conn.scope["type"] == "http" and conn.scope["method"] in WRITE_METHODS:
        services.write_limiter.hit(user.id)  # TooManyRequests -> 429 with Retry-After
    project_id: int | None = None
    if rule.scope == "project":
        project_id = _project_id(conn)
        services.require_project(project_id)  # unknown project: KeyError -> 404
        role = role_in(services.accounts, auth, user, project_id)
        if role is None:
            raise KeyError(f"no project with id {project_id}")  # the same answer as an unknown id
        conn.state.role = role  # what the page may offer the caller (ProjectOut.role)
        if rule.audit:  # a member's refused attempt is audited too
            conn.scope[AUDIT_KEY] = {"user": user, "action": rule.audit, "project_id": project_id}
        if role < rule.need:
            raise Forbidden(f"your role in project {project_id} is {role.name}; this needs {rule.need.name}")
    elif rule.scope == "job":
        job_id = str(conn.path_params["job_id"])
        project_id = services.runner.get(job_id).project_id
        if role_in(services.accounts, auth, user, project_id) is None:
            raise KeyError(f"no job {job_id!r}")
    if rule.audit:
        conn.scope[AUDIT_KEY] = {"user": user, "action": rule.audit, "project_id": project_id}


def oversized_header(scope: Scope) -> str | None:
    """Why the request's headers are refused (one over MAX_HEADER_BYTES), or None."""
    for name, value in scope.get("headers", ()):
        if len(name) + len(value) > MAX_HEADER_BYTES:
            header = name.decode("latin-1")[:40]
            return (
                f"the {header} header is {len(name) + len(value)} bytes long; "
                f"at most {MAX_HEADER_BYTES} bytes per header are accepted"
            )
    return None


async def _refuse_oversized(scope: Scope, send: Send, why: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": WS_HEADER_TOO_LARGE, "reason": why[:120]})
        return
    body = json.dumps({"detail": why}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send(
        {"type": "http.response.start", "status": status.HTTP_431_REQUEST_HEADER_FIELDS_TOO_LARGE, "headers": headers}
    )
    await send({"type": "http.response.body", "body": body})


class AuditMiddleware:
    """Refuses a request with an oversized header (431; a websocket closes with 4431) before anything reads it,
    then records audited actions with their response status (refusals too), after the response started."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and (why := oversized_header(scope)) is not None:
            await _refuse_oversized(scope, send, why)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status_code = 500

        async def capture(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            entry = scope.get(AUDIT_KEY)
            if entry is not None:
                target = {k: v for k, v in scope.get("path_params", {}).items() if k != "project_id"}
                target.update(scope.get("state", {}).get("audit_target", {}))
                accounts: Accounts = scope["app"].state.services.accounts
                await run_in_threadpool(
                    accounts.audit, entry["user"], entry["action"], entry["project_id"], target, status_code
                )


def check_every_route_has_a_rule(app: FastAPI) -> None:
    """Fail at start when a route has no access rule (see rules.py)."""
    missing = [f"{method} {path}" for method, path in app_routes(app) if rule_for(method, path) is None]
    if missing:
        raise RuntimeError("routes without an access rule in review_app/auth/rules.py: " + ", ".join(missing))


def app_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, route template) of every HTTP and websocket route, "WS" for websockets."""
    found: list[tuple[str, str]] = []
    for path, route in _flatten(app.routes, ""):
        if isinstance(route, APIWebSocketRoute):
            found.append(("WS", path))
        elif isinstance(route, Route):  # APIRoute included
            found += [(m, path) for m in sorted(route.methods or ()) if m != "HEAD"]
        elif isinstance(route, Mount):
            found.append(("GET", path))
    return found


def _flatten(routes: list[Any], prefix: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI's included router, under its prefix
        if included is not None:
            out += _flatten(included.routes, prefix + route.include_context.prefix)
        else:
            out.append((prefix + getattr(route, "path", ""), route))
    return out
