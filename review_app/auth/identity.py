"""Who is calling: a personal API token, an OIDC bearer token, or (local mode, loopback only) the local user."""

from __future__ import annotations

import functools
import ipaddress

from starlette.requests import HTTPConnection

from pearl_pipelines.labels.accounts import TOKEN_PREFIX, Accounts, User, UserRow
from pearl_pipelines.settings import DEFAULT_AUTH_SECRET, Settings
from review_app.auth.oidc import InvalidToken, OidcVerifier

LOCAL_SUBJECT = "local"
SIGN_IN = "sign in: send 'Authorization: Bearer <token>' with an OpenID Connect token or a personal API token"
INVALID_API_TOKEN = "invalid or revoked API token"  # unknown, revoked or expired: the caller learns no more
# The users table's bounds: an identity provider's subject longer than this is refused (401), a longer display
# name is cut to it; the database never sees either (PostgreSQL would refuse them with an error, a 500).
MAX_SUBJECT: int = UserRow.__table__.c.subject.type.length  # type: ignore[attr-defined]
MAX_NAME: int = UserRow.__table__.c.name.type.length  # type: ignore[attr-defined]
MAX_ISSUER = 200  # leaves room for the subjects of `oidc:<issuer>#<sub>`


class NotSignedIn(Exception):
    """No usable credentials (401); the message says what is expected."""


class AuthConfigError(RuntimeError):
    """Settings that would run the app unsafely; the app refuses to start."""


def is_loopback(host: str | None) -> bool:
    if host in ("localhost", "testserver", "testclient"):  # Starlette's TestClient names both ends so
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_settings(settings: Settings) -> None:
    """Refuse to start with auth off on a non-loopback address, or with default secrets outside local mode."""
    if settings.auth_mode == "local":
        if not is_loopback(settings.review_host):
            raise AuthConfigError(
                f"refusing to start: PEARL_AUTH_MODE=local signs every caller in as the local user, and "
                f"PEARL_REVIEW_HOST={settings.review_host} is not a loopback address. Bind 127.0.0.1, or set "
                "PEARL_AUTH_MODE=oidc with PEARL_OIDC_ISSUER and PEARL_OIDC_AUDIENCE"
            )
        return
    if settings.auth_secret == DEFAULT_AUTH_SECRET or len(settings.auth_secret) < 32:
        raise AuthConfigError(
            "refusing to start: PEARL_AUTH_SECRET is the default or shorter than 32 characters; "
            "set a random secret (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
        )
    if not (settings.oidc_issuer and settings.oidc_audience):
        raise AuthConfigError("refusing to start: PEARL_AUTH_MODE=oidc needs PEARL_OIDC_ISSUER and PEARL_OIDC_AUDIENCE")
    if len(settings.oidc_issuer) > MAX_ISSUER:
        raise AuthConfigError(
            f"refusing to start: PEARL_OIDC_ISSUER is {len(settings.oidc_issuer)} characters long; at most "
            f"{MAX_ISSUER} leave room for the users' subjects (oidc:<issuer>#<sub>, {MAX_SUBJECT} characters)"
        )


def _bearer(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    # Browsers cannot set headers on a websocket or on MapLibre's image requests without help: a query
    # parameter is accepted there only.
    if conn.scope["type"] == "websocket" or conn.url.path.startswith("/tiles/"):
        return conn.query_params.get("access_token") or None
    return None


class Authenticator:
    def __init__(self, settings: Settings, accounts: Accounts) -> None:
        self.settings, self.accounts = settings, accounts
        self.oidc = (
            OidcVerifier(settings.oidc_issuer, settings.oidc_audience, settings.oidc_jwks_url)
            if settings.oidc_issuer and settings.oidc_audience
            else None
        )

    @property
    def local(self) -> bool:
        return self.settings.auth_mode == "local"

    @functools.cached_property
    def _local_user(self) -> User:
        return self.accounts.user(LOCAL_SUBJECT, "local user")

    def local_user(self) -> User:
        """The local mode's one user (looked up once: every tile request needs it)."""
        return self._local_user

    def authenticate(self, conn: HTTPConnection) -> User:
        token = _bearer(conn)
        if token is not None:
            user = self.accounts.token_user(token)
            if user is not None:
                return user
            if self.oidc is None or token.startswith(TOKEN_PREFIX):  # a personal token is no JWT: say so
                raise NotSignedIn(INVALID_API_TOKEN)
            try:
                claims = self.oidc.verify(token)
            except InvalidToken as exc:
                raise NotSignedIn(str(exc)) from None
            return self._signed_in(self.oidc.issuer, claims.subject, claims.name, claims.email)
        if self.local:
            server = conn.scope.get("server") or (None, None)
            client = conn.client.host if conn.client else None
            if not (is_loopback(server[0]) and is_loopback(client)):
                raise NotSignedIn("local mode serves loopback callers only; " + SIGN_IN)
            return self.local_user()
        raise NotSignedIn(SIGN_IN)

    def _signed_in(self, issuer: str, sub: str, name: str, email: str | None = None) -> User:
        """The user an identity provider vouched for; their display name follows the provider's."""
        subject = f"oidc:{issuer}#{sub}"
        if len(subject) > MAX_SUBJECT:
            raise NotSignedIn(
                f"the token's subject (sub) is {len(sub)} characters long; this server accepts at most "
                f"{MAX_SUBJECT - len(subject) + len(sub)} from this identity provider"
            )
        return self.accounts.user(subject, name[:MAX_NAME], email)  # owners add members by e-mail
