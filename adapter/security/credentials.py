"""Who is calling: JWT bearer tokens (validated against each issuer's JWKS), static API keys
and anonymous access, turned into one `Principal`; `AuthError` when that fails."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

import httpx
import jwt

from radproto.adapter.security.keys import ApiKeyStore, load_api_keys
from radproto.adapter.security.principal import ROLES, AuthError, Principal
from radproto.adapter.security.settings import (
    ASYMMETRIC_ALGORITHMS,
    JwtIssuer,
    SecuritySettings,
)

_log = logging.getLogger("radproto.http")


# ---------------------------------------------------------------------------- JWKS and JWT


class JwksCache:
    """The keys of one issuer, fetched over HTTP(S), cached, and refetched when a token names
    an unknown `kid` (key rotation) -- at most once per `min_refresh_seconds`."""

    def __init__(self, url: str, *, cache_seconds: float = 600, min_refresh_seconds: float = 5,
                 timeout: float = 5.0):
        self.url = url
        self.cache_seconds = cache_seconds
        self.min_refresh_seconds = min_refresh_seconds
        self.timeout = timeout
        self.fetches = 0
        self._keys: dict[str, dict[str, Any]] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    async def _fetch(self) -> None:
        self.fetches += 1
        self._fetched_at = time.monotonic()
        try:
            # A client per fetch: fetches are rare, and a pooled client is bound to one loop.
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                response = await client.get(self.url, headers={"Accept": "application/json"})
                response.raise_for_status()
                document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise AuthError("jwks_unavailable", "the token signing keys cannot be fetched",
                            status=503) from exc
        keys: dict[str, dict[str, Any]] = {}
        for index, jwk in enumerate(document.get("keys", []) if isinstance(document, dict)
                                    else []):
            if isinstance(jwk, dict) and jwk.get("use", "sig") == "sig":
                keys[str(jwk.get("kid", f"#{index}"))] = jwk
        self._keys = keys

    async def get(self, kid: str | None) -> dict[str, Any]:
        async with self._lock:
            now = time.monotonic()
            stale = self._fetched_at is None or now - self._fetched_at > self.cache_seconds
            unknown = kid is not None and kid not in self._keys
            may_refresh = (self._fetched_at is None
                           or now - self._fetched_at >= self.min_refresh_seconds)
            if stale or (unknown and may_refresh):
                try:
                    await self._fetch()
                except AuthError:
                    if not self._keys:
                        raise  # nothing cached: cannot decide
            if kid is None:
                if len(self._keys) == 1:
                    return next(iter(self._keys.values()))
                raise AuthError("unknown_key", "the token names no key (kid)")
            if kid not in self._keys:
                raise AuthError("unknown_key", "the token's signing key is not trusted")
            return self._keys[kid]


def _claim(claims: dict[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def roles_from_claims(claims: dict[str, Any], claim_names: Iterable[str],
                      scope_prefix: str) -> set[str]:
    """Roles named in the token: plain role names or prefixed scopes ("radproto/admin")."""
    roles: set[str] = set()
    for name in claim_names:
        value = _claim(claims, name)
        items = value.split() if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            continue
        for item in items:
            if not isinstance(item, str):
                continue
            role = item[len(scope_prefix):] if scope_prefix and item.startswith(scope_prefix) \
                else item
            if role in ROLES:
                roles.add(role)
    return roles


class JwtValidator:
    """Validates bearer tokens against the configured issuers (signature by JWKS, issuer,
    audience, expiry, not-before; asymmetric algorithms only)."""

    def __init__(self, settings: SecuritySettings):
        self.settings = settings
        self.issuers: dict[str, JwtIssuer] = {i.issuer: i for i in settings.jwt_issuers}
        self.jwks: dict[str, JwksCache] = {
            i.issuer: JwksCache(i.jwks_url, cache_seconds=settings.jwks_cache_seconds,
                                min_refresh_seconds=settings.jwks_min_refresh_seconds,
                                timeout=settings.jwks_timeout_seconds)
            for i in settings.jwt_issuers}

    async def validate(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise AuthError("malformed", "the bearer token is not a valid JWT") from exc
        issuer = self.issuers.get(str(unverified.get("iss", "")))
        if issuer is None:
            raise AuthError("bad_issuer", "the token's issuer is not trusted")
        alg = header.get("alg")
        # Checked before any key is touched: "none" and HS* (key confusion) never get further.
        if alg not in issuer.algorithms or alg not in ASYMMETRIC_ALGORITHMS:
            raise AuthError("bad_algorithm", "the token's algorithm is not accepted")
        jwk = await self.jwks[issuer.issuer].get(header.get("kid"))
        if jwk.get("alg") not in (None, alg):
            raise AuthError("bad_algorithm", "the token's algorithm does not match its key")
        try:
            key = jwt.PyJWK(jwk, algorithm=alg)
        except (jwt.PyJWTError, ValueError, KeyError) as exc:
            raise AuthError("bad_signature", "the token's key does not fit its algorithm") from exc
        try:
            claims = jwt.decode(
                token, key=key.key, algorithms=[alg], audience=issuer.audience,
                issuer=issuer.issuer, leeway=self.settings.clock_leeway_seconds,
                options={"require": ["exp", "iss", "aud"], "verify_signature": True,
                         "verify_exp": True, "verify_nbf": True, "verify_iat": True,
                         "verify_aud": True, "verify_iss": True})
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("expired", "the token has expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise AuthError("not_yet_valid", "the token is not yet valid") from exc
        except jwt.InvalidAudienceError as exc:
            raise AuthError("bad_audience", "the token is not meant for this service") from exc
        except jwt.InvalidIssuerError as exc:
            raise AuthError("bad_issuer", "the token's issuer is not trusted") from exc
        except jwt.InvalidSignatureError as exc:
            raise AuthError("bad_signature", "the token's signature is invalid") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError("missing_claim", f"the token lacks the '{exc.claim}' claim") from exc
        except jwt.PyJWTError as exc:
            raise AuthError("invalid_token", "the token is invalid") from exc
        actor = claims.get("sub") or claims.get("client_id") or claims.get("azp")
        if not isinstance(actor, str) or not actor:
            raise AuthError("missing_claim", "the token names no subject")
        roles = roles_from_claims(claims, self.settings.role_claims, self.settings.scope_prefix)
        roles |= set(issuer.default_roles)
        return Principal(actor=actor, roles=frozenset(roles), auth="jwt", issuer=issuer.issuer)


class Authenticator:
    """Bearer token first, then X-API-Key. None: no credentials were presented."""

    def __init__(self, settings: SecuritySettings, api_keys: ApiKeyStore | None = None):
        self.settings = settings
        self.jwt = JwtValidator(settings) if settings.jwt_issuers else None
        if api_keys is None and settings.api_keys_file is not None:
            api_keys = load_api_keys(settings.api_keys_file)
        self.api_keys = api_keys

    @property
    def configured(self) -> bool:
        return self.jwt is not None or bool(self.api_keys)

    async def authenticate(self, authorization: str | None, api_key: str | None
                           ) -> Principal | None:
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthError("bad_scheme", "use 'Authorization: Bearer <token>'")
            if self.jwt is None:
                raise AuthError("jwt_disabled", "bearer tokens are not accepted here")
            return await self.jwt.validate(token.strip())
        if api_key is not None:
            if not self.api_keys:
                raise AuthError("api_keys_disabled", "API keys are not accepted here")
            principal = self.api_keys.authenticate(api_key)
            if principal is None:
                raise AuthError("bad_api_key", "the API key is not valid")
            return principal
        if self.settings.allow_anonymous:
            return Principal(actor="anonymous", roles=frozenset(ROLES), auth="anonymous")
        return None
