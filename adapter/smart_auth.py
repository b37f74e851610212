"""SMART Backend Services authentication (client_credentials + private_key_jwt).

The token endpoint is discovered from `{fhir_base}/.well-known/smart-configuration`; each
token request carries a fresh client assertion (a JWT signed RS384 or ES384, aud = the token
endpoint, unique jti, 5 minute lifetime); the access token is cached until shortly before it
expires. Use it as an httpx auth: `httpx.AsyncClient(auth=SmartBackendAuth(...))`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import jwt

from radproto.model.errors import ConfigError, InterfaceError

log = logging.getLogger("radproto.smart")

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_S = 300  # SMART: "no more than five minutes in the future"
EXPIRY_MARGIN_S = 30  # renew this long before the server's expiry, never use a dying token
DEFAULT_SCOPE = "system/Task.write system/Provenance.write system/ServiceRequest.read"
Algorithm = Literal["RS384", "ES384"]


class SmartAuthError(InterfaceError):
    """Discovery or the token request failed (the server's error code is kept)."""

    def __init__(self, message: str, *, error: str = "", status: int | None = None):
        self.error = error
        self.status = status
        super().__init__(message)


@dataclass
class _Token:
    value: str
    expires_at: float


class SmartBackendAuth(httpx.Auth):
    """Bearer tokens for a backend service, fetched and cached as SMART Backend Services says."""

    requires_response_body = True

    def __init__(
        self,
        *,
        fhir_base_url: str,
        client_id: str,
        private_key: str | bytes | Any,
        key_id: str,
        algorithm: Algorithm = "RS384",
        scope: str = DEFAULT_SCOPE,
        token_endpoint: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 10.0,
    ) -> None:
        if algorithm not in ("RS384", "ES384"):
            raise ConfigError(f"SMART allows RS384 or ES384, not {algorithm}",
                              field="smart.algorithm")
        self.fhir_base_url = fhir_base_url.rstrip("/")
        self.client_id = client_id
        self.private_key = private_key
        self.key_id = key_id
        self.algorithm = algorithm
        self.scope = scope
        self.token_endpoint = token_endpoint
        self._http = httpx.AsyncClient(transport=transport, timeout=timeout)
        self._token: _Token | None = None
        self._lock = asyncio.Lock()
        self.token_requests = 0  # for tests and metrics: how often a token was fetched

    async def aclose(self) -> None:
        await self._http.aclose()

    async def discover(self) -> str:
        """The token endpoint from .well-known/smart-configuration (cached)."""
        if self.token_endpoint:
            return self.token_endpoint
        url = f"{self.fhir_base_url}/.well-known/smart-configuration"
        try:
            response = await self._http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise SmartAuthError(f"SMART discovery failed: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise SmartAuthError(f"SMART discovery answered {response.status_code}",
                                 status=response.status_code)
        endpoint = (response.json() or {}).get("token_endpoint")
        if not endpoint:
            raise SmartAuthError("smart-configuration has no token_endpoint")
        self.token_endpoint = str(endpoint)
        return self.token_endpoint

    def client_assertion(self, audience: str) -> str:
        now = int(time.time())
        claims = {"iss": self.client_id, "sub": self.client_id, "aud": audience,
                  "jti": uuid.uuid4().hex, "iat": now, "exp": now + ASSERTION_LIFETIME_S}
        return jwt.encode(claims, self.private_key, algorithm=self.algorithm,
                          headers={"kid": self.key_id, "typ": "JWT"})

    async def token(self, *, force: bool = False) -> str:
        """A valid access token: the cached one until it nears expiry, else a new one."""
        async with self._lock:
            if not force and self._token and time.time() < self._token.expires_at:
                return self._token.value
            endpoint = await self.discover()
            data = {"grant_type": "client_credentials", "scope": self.scope,
                    "client_assertion_type": ASSERTION_TYPE,
                    "client_assertion": self.client_assertion(endpoint)}
            self.token_requests += 1
            try:
                response = await self._http.post(endpoint, data=data,
                                                 headers={"Accept": "application/json"})
            except httpx.HTTPError as exc:
                raise SmartAuthError(f"token request failed: {type(exc).__name__}") from exc
            body = _json(response)
            if response.status_code != 200 or "access_token" not in body:
                error = str(body.get("error", ""))
                log.warning("SMART token refused: status=%s error=%s",
                            response.status_code, error)
                raise SmartAuthError(f"token refused ({response.status_code} {error})".strip(),
                                     error=error, status=response.status_code)
            lifetime = float(body.get("expires_in") or 300)
            self._token = _Token(str(body["access_token"]),
                                 time.time() + max(lifetime - EXPIRY_MARGIN_S, lifetime / 2))
            return self._token.value

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        request.headers["Authorization"] = f"Bearer {await self.token()}"
        response = yield request
        if response.status_code == 401:  # revoked or expired early: one fresh token, once
            request.headers["Authorization"] = f"Bearer {await self.token(force=True)}"
            yield request

    def sync_auth_flow(self, request):  # type: ignore[override]
        raise RuntimeError("SmartBackendAuth works with httpx.AsyncClient only")


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
