"""A minimal OpenID provider on loopback, for the tests: discovery document and JWKS (RSA key made here, tokens
signed with PyJWT), and an authorization server for the browser's sign-in: Authorization Code with PKCE (S256)
for one public client, auto-approving one fixed user, refresh tokens, and an end-session endpoint.

It is strict where the flow's security lies: the client id and redirect URI must be the registered ones, a code
is single-use, short-lived and bound to its redirect URI, and the token endpoint refuses a code whose
`code_verifier` does not hash (SHA-256, base64url) to the authorization request's `code_challenge`. Every
authorization, token and end-session request is recorded, so tests can assert what the browser sent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import free_port

AUDIENCE = "pearl-review"  # the review app's PEARL_OIDC_AUDIENCE, and the front-end's client id
CODE_TTL_S = 60


def s256(verifier: str) -> str:
    """The PKCE S256 code challenge of a code verifier (RFC 7636 4.2)."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode("ascii")


@dataclass
class Seen:
    """What the provider received: query/form parameters and the status it answered, per endpoint."""

    authorize: list[dict[str, str]] = field(default_factory=list)
    token: list[tuple[dict[str, str], int]] = field(default_factory=list)
    end_session: list[dict[str, str]] = field(default_factory=list)


class Issuer:
    """Discovery + JWKS (enough for the server's token checks) and an authorization server for the browser."""

    def __init__(
        self, *, client_id: str = AUDIENCE, user: tuple[str, str] = ("ada", "Ada Lovelace"), access_ttl_s: int = 600
    ) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        self.kid = "test-key-1"
        self.client_id, self.user, self.access_ttl_s = client_id, user, access_ttl_s
        self.redirect_uris: set[str] = set()  # registered for the client: the app's page
        self.seen = Seen()
        self._codes: dict[str, dict[str, Any]] = {}
        self._refresh: dict[str, tuple[str, int]] = {}  # refresh token -> scope, time of the sign-in
        self._lock = threading.Lock()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.documents: dict[str, Any] = {
            "/.well-known/openid-configuration": {
                "issuer": self.url,
                "jwks_uri": f"{self.url}/jwks.json",
                "authorization_endpoint": f"{self.url}/authorize",
                "token_endpoint": f"{self.url}/token",
                "end_session_endpoint": f"{self.url}/logout",
                "response_types_supported": ["code"],
                "grant_types_supported": ["authorization_code", "refresh_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["none"],
            },
            "/jwks.json": {"keys": [{**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}]},
        }
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    # -- tokens -------------------------------------------------------------------------------------------------
    def token(self, sub: str, **overrides: Any) -> str:
        """An access token for the app (aud = its audience)."""
        now = int(time.time())
        claims = {"iss": self.url, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + self.access_ttl_s, "name": sub}
        claims.update(overrides)
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})

    def subject(self, sub: str) -> str:
        """The app's user subject for a `sub` of this issuer."""
        return f"oidc:{self.url}#{sub}"

    def _tokens(self, scope: str, nonce: str | None, auth_time: int | None = None) -> dict[str, Any]:
        """Tokens of the fixed user; a refresh keeps the sign-in's auth_time (OpenID Connect Core 12.2)."""
        sub, name = self.user
        now = int(time.time())
        auth_time = auth_time or now
        id_claims = {"iss": self.url, "aud": self.client_id, "sub": sub, "iat": now, "exp": now + 600, "name": name}
        id_claims |= {"auth_time": auth_time, "email": f"{sub}@example.org"} | ({"nonce": nonce} if nonce else {})
        refresh = secrets.token_urlsafe(24)
        with self._lock:
            self._refresh[refresh] = (scope, auth_time)
        return {
            "access_token": self.token(sub, name=name),
            "id_token": jwt.encode(id_claims, self.key, algorithm="RS256", headers={"kid": self.kid}),
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_in": self.access_ttl_s,
            "scope": scope,
        }

    def _exchange(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """The token endpoint: (status, JSON body)."""
        if form.get("client_id") != self.client_id:
            return 401, {"error": "invalid_client"}
        if form.get("grant_type") == "refresh_token":
            with self._lock:
                granted = self._refresh.pop(form.get("refresh_token", ""), None)  # rotated: each is used once
            if granted is None:
                return 400, {"error": "invalid_grant", "error_description": "unknown refresh token"}
            return 200, self._tokens(granted[0], None, granted[1])
        if form.get("grant_type") != "authorization_code":
            return 400, {"error": "unsupported_grant_type"}
        with self._lock:
            code = self._codes.pop(form.get("code", ""), None)  # single use, even when refused below
        if code is None or code["expires"] < time.time():
            return 400, {"error": "invalid_grant", "error_description": "unknown, used or expired code"}
        if form.get("redirect_uri") != code["redirect_uri"]:
            return 400, {"error": "invalid_grant", "error_description": "redirect_uri differs from the authorization"}
        if s256(form.get("code_verifier", "")) != code["challenge"]:
            return 400, {"error": "invalid_grant", "error_description": "PKCE verification failed"}
        return 200, self._tokens(code["scope"], code["nonce"])

    def _authorize(self, query: dict[str, str]) -> tuple[int, str]:
        """The authorization endpoint: (status, Location or error text). Approves the fixed user at once."""
        redirect_uri = query.get("redirect_uri", "")
        if query.get("client_id") != self.client_id or redirect_uri not in self.redirect_uris:
            return 400, "unknown client or unregistered redirect_uri"  # never redirect to an unknown place
        answer: dict[str, str] = {"state": query["state"]} if "state" in query else {}
        if query.get("response_type") != "code":
            answer["error"] = "unsupported_response_type"
        elif query.get("code_challenge_method") != "S256" or len(query.get("code_challenge", "")) != 43:
            answer |= {"error": "invalid_request", "error_description": "PKCE with S256 is required"}
        else:
            code = secrets.token_urlsafe(24)
            with self._lock:
                self._codes[code] = {
                    "challenge": query["code_challenge"],
                    "redirect_uri": redirect_uri,
                    "nonce": query.get("nonce"),
                    "scope": query.get("scope", "openid"),
                    "expires": time.time() + CODE_TTL_S,
                }
            answer["code"] = code
        return 302, f"{redirect_uri}{'&' if '?' in redirect_uri else '?'}{urlencode(answer)}"

    def _end_session(self, query: dict[str, str]) -> tuple[int, str]:
        target = query.get("post_logout_redirect_uri")
        if target in self.redirect_uris:
            state = {"state": query["state"]} if "state" in query else {}
            return 302, f"{target}{'?' + urlencode(state) if state else ''}"
        return 200, "signed out"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: str | dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = (json.dumps(body) if isinstance(body, dict) else body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json" if isinstance(body, dict) else "text/plain")
                # The page calls discovery and the token endpoint from the app's origin (no credentials).
                self.send_header("access-control-allow-origin", "*")
                self.send_header("cache-control", "no-store")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_OPTIONS(self) -> None:  # CORS preflight
                self._send(
                    204,
                    "",
                    {"access-control-allow-methods": "GET, POST", "access-control-allow-headers": "content-type"},
                )

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = dict(parse_qsl(parts.query))
                if parts.path in issuer.documents:
                    self._send(200, issuer.documents[parts.path])
                elif parts.path in ("/authorize", "/logout"):
                    if parts.path == "/authorize":
                        issuer.seen.authorize.append(query)
                        status, where = issuer._authorize(query)
                    else:
                        issuer.seen.end_session.append(query)
                        status, where = issuer._end_session(query)
                    if status == 302:
                        self._send(302, "", {"location": where})
                    else:
                        self._send(status, where)
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                form = dict(parse_qsl(self.rfile.read(length).decode()))
                if urlsplit(self.path).path != "/token":
                    self._send(404, {"error": "not found"})
                    return
                status, body = issuer._exchange(form)
                issuer.seen.token.append((form, status))
                self._send(status, body)

            def log_message(self, *_: Any) -> None:
                pass

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
