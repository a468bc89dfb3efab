"""OpenID Connect bearer tokens (JWT) checked against the issuer's published keys (JWKS), with PyJWT.

Any standard identity provider works (Keycloak, Auth0, Entra ID, Google, Dex...): the issuer's discovery
document names its JWKS; signature, issuer, audience, expiry and not-before are all checked, and only
asymmetric algorithms are accepted (an "alg: none" or HMAC token signed with the public key is refused).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import httpx
import jwt

from pearl_pipelines.labels.store import plain_text, text_problem

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
LEEWAY_S = 30  # clock skew between the identity provider and this server


class InvalidToken(Exception):
    """A bearer token this server does not accept; the message says why (safe to show to the caller)."""


@dataclass(frozen=True)
class OidcClaims:
    subject: str
    name: str
    email: str | None


class OidcVerifier:
    """Verifies ID/access tokens of one issuer for one audience. Keys are fetched once and re-fetched when a
    token names an unknown key id (key rotation)."""

    def __init__(self, issuer: str, audience: str, jwks_url: str | None = None) -> None:
        self.issuer, self.audience = issuer.rstrip("/"), audience
        self._jwks_url = jwks_url

    @functools.cached_property
    def jwks(self) -> jwt.PyJWKClient:
        url = self._jwks_url or self._discover_jwks_url()
        return jwt.PyJWKClient(url, cache_keys=True, lifespan=3600, timeout=5)

    def _discover_jwks_url(self) -> str:
        url = f"{self.issuer}/.well-known/openid-configuration"
        try:
            response = httpx.get(url, timeout=5.0)
            response.raise_for_status()
            return str(response.json()["jwks_uri"])
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            raise InvalidToken(f"the identity provider's discovery document at {url} is not readable") from exc

    def verify(self, token: str) -> OidcClaims:
        try:
            key = self.jwks.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                key.key,
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWKClientConnectionError as exc:
            raise InvalidToken("the identity provider's keys could not be fetched") from exc
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"invalid bearer token: {exc}") from exc
        subject = str(claims["sub"])
        problem = text_problem(subject)
        if problem is not None:  # a subject names the user in the database and the audit trail: never cleaned up
            raise InvalidToken(f"invalid bearer token: its subject (sub) {problem}")
        name = claims.get("preferred_username") or claims.get("name") or claims.get("email") or subject
        # The display name is only shown: cleaned of control characters rather than refused (identity.py bounds
        # its length); nothing left of it: the subject.
        email = claims.get("email")
        return OidcClaims(
            subject=subject,
            name=plain_text(str(name)).strip() or subject,
            email=email if isinstance(email, str) else None,
        )
