"""Who may call what: JWT bearer tokens (JWKS), static API keys, roles, and the policy table.

Also the MLLP side: the source address allow-list and the (mutual) TLS server context, and
the HTTP side: `install_security(app, security, store)` adds an ASGI middleware that
authenticates every request, applies the policy table, records audit events, logs and counts
requests, and adds /healthz, /readyz and /metrics where the app lacks them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import ssl
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt

from radproto.adapter.security_settings import (
    ASYMMETRIC_ALGORITHMS,
    ROLES,
    JwtIssuer,
    SecuritySettings,
)
from radproto.model.errors import ConfigError

_log = logging.getLogger("radproto.http")

#: Policy pseudo-roles: no credentials needed / any authenticated caller.
PUBLIC = "public"
ANY = "any"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    actor: str  # the JWT `sub` (or client id), or "api-key:<hash prefix>"
    roles: frozenset[str]
    auth: str  # "jwt" | "api-key" | "anonymous"
    issuer: str = ""


class AuthError(Exception):
    """Authentication failed (401) or the JWKS could not be fetched (503). `reason` is a short
    machine-readable word for logs and metrics; the message is safe to show the caller."""

    def __init__(self, reason: str, message: str, *, status: int = 401):
        super().__init__(message)
        self.reason = reason
        self.status = status


# ---------------------------------------------------------------------------- API keys

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
#: A key's name rides in the line's comment: `ROLE SHA256-HEX  # name=NAME`.
_NAME_COMMENT = re.compile(r"(?:^|\s)name=(\S+)")
KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


@dataclass(frozen=True)
class ApiKey:
    role: str
    sha256: str  # lower-case hex of SHA-256(key)
    line: int
    name: str = ""  # from the line's `# name=NAME` comment (radproto keys create)


def api_key_line(role: str, sha256: str, name: str = "") -> str:
    """One line of the API key file (what parse_api_keys reads back)."""
    return f"{role} {sha256}" + (f"  # name={name}" if name else "")


def parse_api_keys(text: str, *, path: str = "<api keys>") -> list[ApiKey]:
    """Parse `ROLE SHA256-HEX` lines ('#' comments and blank lines allowed; a comment
    `name=NAME` names the key). A bad line raises ConfigError naming the file, the line and
    the field."""
    keys: list[ApiKey] = []
    seen: dict[tuple[str, str], int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line, _, comment = raw.partition("#")
        line = line.strip()
        named = _NAME_COMMENT.search(comment)
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ConfigError(f"expected 'ROLE SHA256-HEX', found {len(parts)} field(s)",
                              path=path, line=number, field="line")
        role, digest = parts
        if role not in ROLES:
            raise ConfigError(f"unknown role {role!r} (roles: {', '.join(ROLES)})",
                              path=path, line=number, field="role")
        if not _HEX64.match(digest):
            raise ConfigError("the key hash must be 64 hex digits (SHA-256 of the key; "
                              "e.g. `printf %s KEY | sha256sum`)", path=path, line=number,
                              field="sha256")
        if (role, digest.lower()) in seen:
            raise ConfigError(f"duplicate of line {seen[(role, digest.lower())]}",
                              path=path, line=number, field="sha256")
        seen[(role, digest.lower())] = number
        keys.append(ApiKey(role=role, sha256=digest.lower(), line=number,
                           name=named.group(1) if named else ""))
    return keys


class ApiKeyStore:
    """The configured keys; one key may hold several roles (one line per role)."""

    def __init__(self, keys: Iterable[ApiKey]):
        self._roles: dict[str, set[str]] = {}
        for key in keys:
            self._roles.setdefault(key.sha256, set()).add(key.role)

    def __len__(self) -> int:
        return len(self._roles)

    def authenticate(self, presented: str) -> Principal | None:
        digest = hashlib.sha256(presented.encode("utf-8")).hexdigest()
        match = None
        for known, roles in self._roles.items():  # constant-time compare against every key
            if hmac.compare_digest(known, digest):
                match = (known, roles)
        if match is None:
            return None
        return Principal(actor=f"api-key:{match[0][:12]}", roles=frozenset(match[1]),
                         auth="api-key")


def load_api_keys(path: str | Path) -> ApiKeyStore:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the API key file: {exc.strerror}", path=str(path),
                          field="security.api_keys_file") from exc
    return ApiKeyStore(parse_api_keys(text, path=str(path)))


def hash_api_key(key: str) -> str:
    """The SHA-256 hex an API key file lists for `key`."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


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


# ---------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class PolicyRule:
    methods: frozenset[str]  # upper case; "*" any
    pattern: str  # fnmatch glob on the request path ("*" also crosses "/")
    roles: frozenset[str]  # roles, or {PUBLIC} or {ANY}
    audit: bool = True  # record an audit event for requests under this rule

    def matches(self, method: str, path: str) -> bool:
        method = "GET" if method == "HEAD" else method
        return ("*" in self.methods or method in self.methods) and \
            fnmatch.fnmatchcase(path, self.pattern)

    def allows(self, principal: Principal | None) -> bool:
        if PUBLIC in self.roles:
            return True
        if principal is None:
            return False
        return ANY in self.roles or bool(self.roles & principal.roles)


def _rule(methods: str, pattern: str, *roles: str, audit: bool = True) -> PolicyRule:
    return PolicyRule(frozenset(methods.split()), pattern, frozenset(roles), audit)


_I, _R, _A = "integration", "radiologist", "admin"

#: The built-in table; first match wins. Reading order text (notes) and suggestions is the
#: radiologist's; submitting orders the integration's; configuration and audit the admin's.
#: Anything not listed falls to the last rule: admin only (deny by default).
DEFAULT_POLICY: tuple[PolicyRule, ...] = (
    _rule("GET", "/healthz", PUBLIC, audit=False),
    _rule("GET", "/readyz", PUBLIC, audit=False),
    # A CORS preflight carries no credentials and returns no data; the real request is checked.
    _rule("OPTIONS", "*", PUBLIC, audit=False),
    _rule("GET", "/metrics", _A, audit=False),
    # The API's description holds no patient data: open, so Swagger UI loads; each
    # operation it calls is still checked by its own rule below.
    _rule("GET", "/openapi.json", PUBLIC, audit=False),
    _rule("GET", "/docs*", PUBLIC, audit=False),
    _rule("GET", "/redoc*", PUBLIC, audit=False),
    # The radiologists' worklist (adapter/worklist.py): sign-in and its assets are open; the
    # page and its data routes audit each order shown themselves (one event per order).
    _rule("GET POST", "/worklist/login", PUBLIC, audit=False),
    _rule("POST", "/worklist/logout", PUBLIC, audit=False),
    _rule("GET", "/worklist/static/*", PUBLIC, audit=False),
    _rule("GET", "/worklist*", _R, _A, audit=False),
    _rule("*", "/worklist*", _R, _A),
    _rule("*", "/admin*", _A),
    _rule("*", "/audit*", _A),
    _rule("*", "/config*", _A),
    # CDS Hooks: the EHR (integration) calls the service; a radiologist's EHR session may too.
    _rule("GET", "/cds-services", _I, _R),
    _rule("POST", "/cds-services/*", _I, _R),
    # FHIR API.
    _rule("GET", "/fhir/metadata", ANY, audit=False),
    _rule("GET", "/fhir/.well-known/*", ANY, audit=False),
    _rule("POST PUT DELETE", "/fhir/ServiceRequest*", _I),
    _rule("POST", "/fhir", _I),
    _rule("POST", "/fhir/", _I),
    _rule("POST", "/fhir/Bundle*", _I),
    _rule("POST", "/fhir/$*", _I),
    _rule("GET", "/fhir/ServiceRequest*", _R),
    _rule("GET", "/fhir/Patient*", _R),
    _rule("GET", "/fhir/Condition*", _R),
    _rule("GET", "/fhir/Task*", _R, _I),
    _rule("GET", "/fhir/Provenance*", _R, _I),
    # The EHR moves our Task to completed/rejected on the radiologist's behalf, or a
    # radiologist's client does it directly.
    _rule("PUT PATCH POST", "/fhir/Task*", _R, _I),
    # HL7 v2 over HTTP, order submission.
    _rule("POST", "/hl7*", _I),
    _rule("POST PUT", "/orders*", _I),
    _rule("GET", "/orders*", _R),
    # Suggestions and feedback (accept, reject, change).
    _rule("*", "/suggestions*", _R),
    _rule("*", "/feedback*", _R),
    _rule("*", "*", _A),
)


class Policy:
    def __init__(self, rules: Iterable[PolicyRule] = DEFAULT_POLICY):
        self.rules = tuple(rules)

    @classmethod
    def from_settings(cls, settings: SecuritySettings) -> Policy:
        extra = [PolicyRule(frozenset(m.upper() for m in r.methods), r.path,
                            frozenset(r.roles)) for r in settings.policy]
        base = list(DEFAULT_POLICY)
        if settings.metrics_public:
            extra.insert(0, _rule("GET", "/metrics", PUBLIC, audit=False))
        return cls([*extra, *base])

    def rule_for(self, method: str, path: str) -> PolicyRule:
        for rule in self.rules:
            if rule.matches(method.upper(), path):
                return rule
        return _rule("*", "*", _A)  # unreachable with the default table's catch-all


# ---------------------------------------------------------------------------- MLLP


def mllp_peer_allowed(peername: Any, allow_list: Iterable[str] | None) -> bool:
    """Whether an MLLP client at `peername` ((host, port, ...) from get_extra_info) may
    connect. An empty or missing allow-list allows everyone; entries are addresses or
    networks ("10.1.2.3", "10.1.0.0/16", "::1"). IPv4-mapped IPv6 peers match IPv4 entries."""
    entries = list(allow_list or [])
    if not entries:
        return True
    host = peername[0] if isinstance(peername, tuple | list) and peername else peername
    try:
        address = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return False  # a UNIX socket or garbage: not on any list
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for entry in entries:
        try:
            network = ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            continue
        if address.version == network.version and address in network:
            return True
    return False


def server_ssl_context(cert: str | Path, key: str | Path,
                       client_ca: str | Path | None = None) -> ssl.SSLContext:
    """A TLS server context (TLS 1.2+). With `client_ca`, clients must present a certificate
    signed by that CA (mutual TLS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the certificate or key: {exc}", path=str(cert),
                          field="security.mllp_tls_cert") from exc
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=str(client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the client CA: {exc}", path=str(client_ca),
                              field="security.mllp_tls_client_ca") from exc
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


@dataclass
class MllpGuard:
    """The MLLP settings bundled for the listener: `guard.allowed(peername)`, `guard.ssl`."""

    allow_list: list[str] = field(default_factory=list)
    ssl: ssl.SSLContext | None = None

    @classmethod
    def from_settings(cls, settings: SecuritySettings) -> MllpGuard:
        context = None
        if settings.mllp_tls_cert is not None and settings.mllp_tls_key is not None:
            context = server_ssl_context(settings.mllp_tls_cert, settings.mllp_tls_key,
                                         settings.mllp_tls_client_ca)
        return cls(allow_list=list(settings.mllp_allow), ssl=context)

    def allowed(self, peername: Any) -> bool:
        ok = mllp_peer_allowed(peername, self.allow_list)
        if not ok:
            from radproto.adapter.observability import MLLP_PEERS_REFUSED

            MLLP_PEERS_REFUSED.inc()
        return ok


# ---------------------------------------------------------------------------- HTTP middleware

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
#: Where the worklist's cookie sessions are accepted, and its sign-in page.
SESSION_PATH = "/worklist"
SESSION_LOGIN_PATH = "/worklist/login"
_ENTITY_NAMES = {"suggestions": "Suggestion", "orders": "Order", "messages": "Message",
                 "feedback": "Feedback", "cds-services": "CdsService", "audit": "AuditEvent"}
_FHIR_JSON = "application/fhir+json"


def flat_routes(app_or_router: Any) -> list[Any]:
    """Every route of an app or router, included routers expanded (FastAPI >= 0.16x keeps
    included routers as lazy `_IncludedRouter` entries; `iter_route_contexts` flattens them
    into objects with path, methods and matches())."""
    routes = list(getattr(app_or_router, "routes", []))
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # an older FastAPI flattens on include_router
        return routes
    return list(iter_route_contexts(routes))


def operation_outcome(status: int, code: str, diagnostics: str) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}]}


def _action(method: str, rule_path: str, entity_id: str) -> str:
    if method in ("GET", "HEAD"):
        return "read" if entity_id else "search"
    if method == "POST":
        return "execute" if rule_path.startswith("/cds-services/") else "create"
    if method in ("PUT", "PATCH"):
        return "update"
    return "delete" if method == "DELETE" else method.lower()


def _entity(template: str, params: dict[str, Any], location: str) -> tuple[str, str]:
    """(entity_type, entity_id) from the route template: the static segment before the first
    path parameter; for a create, the id from the Location header."""
    segments = [s for s in template.split("/") if s]
    for index, segment in enumerate(segments):
        if segment.startswith("{"):
            name = segment.strip("{}").split(":", 1)[0]
            kind = segments[index - 1] if index else ""
            return _ENTITY_NAMES.get(kind, kind), str(params.get(name, ""))
    kind = segments[-1] if segments else ""
    if location:
        # A create answers with the new resource: ".../Type/id[/_history/n]".
        parts = [p for p in location.split("?", 1)[0].split("/_history/", 1)[0].split("/") if p]
        if len(parts) >= 2:
            return parts[-2], parts[-1]
    return _ENTITY_NAMES.get(kind, kind.lstrip("$")), ""


class SecurityMiddleware:
    """Authenticate, authorize by the policy table, audit, log and count every HTTP request.

    Audit is fail-closed: the event is stored when the response starts, and a response whose
    audit event cannot be stored is replaced by 503 -- no data leaves without a record.
    Handlers may add audit detail with `request.state.audit_detail = {...}` and read the
    caller as `request.state.principal`."""

    def __init__(self, app: Any, *, authenticator: Authenticator, policy: Policy, store: Any,
                 routes_app: Any, sessions: Any = None):
        self.app = app
        self.authenticator = authenticator
        #: adapter.sessions.SessionManager: the worklist's cookie sessions (None: none).
        self.sessions = sessions
        self.policy = policy
        self.store = store
        self.routes_app = routes_app

    def _route(self, scope: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        from starlette.routing import Match

        partial = None
        for route in flat_routes(self.routes_app):
            try:
                match, child = route.matches(scope)
            except Exception:
                continue
            if match == Match.FULL:
                return getattr(route, "path", "<unmatched>"), child.get("path_params", {})
            if match == Match.PARTIAL and partial is None:
                partial = (getattr(route, "path", "<unmatched>"), child.get("path_params", {}))
        return partial or ("<unmatched>", {})

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        from radproto.adapter.observability import HTTP_LATENCY, HTTP_REQUESTS

        started = time.perf_counter()
        method = scope.get("method", "GET").upper()
        path = scope.get("path", "/")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        supplied = headers.get("x-request-id", "")
        request_id = supplied if _REQUEST_ID.match(supplied) else uuid_hex()
        rule = self.policy.rule_for(method, path)
        route, params = self._route(scope)
        outcome: dict[str, Any] = {"status": 500}
        principal: Principal | None = None
        session = None
        try:
            if PUBLIC not in rule.roles:
                session = self._session(path, headers)
                try:
                    principal = session.principal() if session is not None else \
                        await self.authenticator.authenticate(
                            headers.get("authorization"), headers.get("x-api-key"))
                except AuthError as exc:
                    await self._deny(scope, send, exc.status, exc.reason, str(exc), None,
                                     route, method, request_id, bearer=True)
                    outcome["status"] = exc.status
                    return
                if principal is None and _wants_sign_in_page(method, path, headers):
                    outcome["status"] = 303
                    await _send_redirect(send, SESSION_LOGIN_PATH, request_id)
                    return
                if principal is None:
                    message = ("authentication required: send 'Authorization: Bearer <token>'"
                               " or 'X-API-Key: <key>'")
                    await self._deny(scope, send, 401, "no_credentials", message, None, route,
                                     method, request_id)
                    outcome["status"] = 401
                    return
                if not rule.allows(principal):
                    needed = ", ".join(sorted(rule.roles))
                    await self._deny(scope, send, 403, "forbidden",
                                     f"this needs the role {needed}", principal, route, method,
                                     request_id)
                    outcome["status"] = 403
                    return
            state = scope.setdefault("state", {})
            state["principal"] = principal
            state["request_id"] = request_id
            if session is not None:
                state["session"] = session
            await self._call(scope, receive, send, rule, route, params, method, principal,
                             request_id, outcome)
        finally:
            elapsed = time.perf_counter() - started
            status = str(outcome["status"])
            HTTP_REQUESTS.labels(method=method, route=route, status=status).inc()
            HTTP_LATENCY.labels(route=route).observe(elapsed)
            if rule.audit or int(status) >= 400:
                _log.info("http request", extra={
                    "method": method, "route": route, "status_code": int(status),
                    "duration_ms": round(elapsed * 1000, 2), "request_id": request_id,
                    "actor": principal.actor if principal else "",
                    "auth": principal.auth if principal else "none"})

    def _session(self, path: str, headers: dict[str, str]) -> Any:
        """The worklist session of a request without API credentials (the cookie is only
        ever accepted under /worklist: the API itself takes no ambient credentials)."""
        if self.sessions is None or not (path == SESSION_PATH
                                         or path.startswith(SESSION_PATH + "/")):
            return None
        if headers.get("authorization") or "x-api-key" in headers:
            return None  # explicit credentials win
        return self.sessions.from_cookie_header(headers.get("cookie"))

    async def _call(self, scope, receive, send, rule: PolicyRule, route: str,
                    params: dict[str, Any], method: str, principal: Principal | None,
                    request_id: str, outcome: dict[str, Any]) -> None:
        replaced = False

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal replaced
            if replaced:
                return  # the original body of a response replaced by 503
            if message["type"] == "http.response.start":
                outcome["status"] = message["status"]
                headers = list(message.get("headers", []))
                location = next((v.decode("latin-1") for k, v in headers
                                 if k.lower() in (b"location", b"content-location")), "")
                if rule.audit and principal is not None:
                    try:
                        await self._audit(scope, rule, route, params, method, principal,
                                          request_id, message["status"], location)
                    except Exception:
                        replaced = True
                        outcome["status"] = 503
                        await _send_json(send, 503, operation_outcome(
                            503, "transient", "the audit trail is unavailable; try again"),
                            request_id)
                        return
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            if rule.audit and principal is not None and outcome["status"] == 500:
                with contextlib.suppress(Exception):  # counted and logged in append_event
                    await self._audit(scope, rule, route, params, method, principal,
                                      request_id, 500, "")
            raise

    async def _audit(self, scope: dict[str, Any], rule: PolicyRule, route: str,
                     params: dict[str, Any], method: str, principal: Principal,
                     request_id: str, status: int, location: str) -> None:
        from radproto.adapter.audit import append_event

        entity_type, entity_id = _entity(route, params, location)
        detail: dict[str, Any] = {
            "method": method, "route": route, "status": status, "request_id": request_id,
            "auth": principal.auth, "roles": sorted(principal.roles),
            "client": (scope.get("client") or ("", 0))[0],
            "outcome": "success" if status < 400 else "failure",
        }
        if principal.issuer:
            detail["issuer"] = principal.issuer
        query = scope.get("query_string", b"").decode("latin-1")
        if query:
            detail["query"] = query[:1000]
        extra = (scope.get("state") or {}).get("audit_detail")
        if isinstance(extra, dict):
            detail.update(extra)
        action = _action(method, route if route != "<unmatched>" else scope.get("path", ""),
                         entity_id)
        await asyncio.to_thread(append_event, self.store, principal.actor, action, entity_type,
                                entity_id, detail)

    async def _deny(self, scope, send, status: int, reason: str, message: str,
                    principal: Principal | None, route: str, method: str, request_id: str,
                    *, bearer: bool = False) -> None:
        from radproto.adapter.observability import AUTH_DENIED

        AUTH_DENIED.labels(status=str(status), reason=reason).inc()
        extra_headers: list[tuple[bytes, bytes]] = []
        if status == 401:
            challenge = 'Bearer realm="radproto"'
            if bearer:
                challenge += ', error="invalid_token"'
            extra_headers.append((b"www-authenticate", challenge.encode()))
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            code = {401: "login", 403: "forbidden"}.get(status, "transient")
            await _send_json(send, status, operation_outcome(status, code, message), request_id,
                             extra_headers)
        if status in (401, 403) and self.store is not None:
            # Denials are security events: recorded best effort (a down store must not turn a
            # 401 into something else).
            from radproto.adapter.audit import append_event

            detail = {"method": method, "route": route, "status": status, "reason": reason,
                      "request_id": request_id, "client": (scope.get("client") or ("", 0))[0]}
            actor = principal.actor if principal else "anonymous"
            with contextlib.suppress(Exception):
                await asyncio.to_thread(append_event, self.store, actor, "deny", "Route",
                                        route, detail)


def _wants_sign_in_page(method: str, path: str, headers: dict[str, str]) -> bool:
    """A browser asking for the worklist without credentials goes to the sign-in page."""
    return method in ("GET", "HEAD") and path in (SESSION_PATH, SESSION_PATH + "/") and \
        "text/html" in headers.get("accept", "")


async def _send_redirect(send: Any, location: str, request_id: str) -> None:
    await send({"type": "http.response.start", "status": 303, "headers": [
        (b"location", location.encode()), (b"content-length", b"0"),
        (b"x-request-id", request_id.encode())]})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _send_json(send: Any, status: int, body: dict[str, Any], request_id: str,
                     extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", _FHIR_JSON.encode()),
               (b"content-length", str(len(payload)).encode()),
               (b"x-request-id", request_id.encode()), *(extra_headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


def uuid_hex() -> str:
    return uuid.uuid4().hex


# ---------------------------------------------------------------------------- install


def install_security(app: Any, security: SecuritySettings, store: Any, *,
                     readiness: dict[str, Any] | None = None,
                     api_keys: ApiKeyStore | None = None) -> None:
    """Protect every route of `app` (a FastAPI app, before it starts): authentication, the
    policy table, audit events; add /healthz, /readyz, /metrics where missing. `readiness`
    maps names to checks (callables, sync or async, returning a truthy value when ready)
    that /readyz runs besides the store's ping; more can be added with
    `add_readiness_check`. Makes the store's audit table append-only."""
    from radproto.adapter.audit import harden_audit_table
    from radproto.adapter.observability import set_hash_key

    set_hash_key(security.log_hash_key)
    authenticator = Authenticator(security, api_keys=api_keys)
    if not authenticator.configured and not security.allow_anonymous:
        _log.warning("no HTTP credentials are configured (security.jwt_issuers, --api-keys): "
                     "every request except /healthz and /readyz will get 401")
    if security.allow_anonymous:
        _log.warning("security.allow_anonymous is set: HTTP requests are not authenticated")
    if store is not None:
        harden_audit_table(store)
    checks = app.state.radproto_readiness = dict(getattr(app.state, "radproto_readiness", {}))
    checks.update(readiness or {})
    app.state.radproto_shutting_down = False
    app.state.radproto_store = store
    _add_operations_routes(app, store)
    from radproto.adapter.sessions import SessionManager

    sessions = SessionManager(security.session_secret, ttl_seconds=security.session_ttl_seconds,
                              secure=security.session_cookie_secure)
    app.state.radproto_authenticator = authenticator  # the worklist's sign-in checks with it
    app.state.radproto_sessions = sessions
    app.add_middleware(SecurityMiddleware, authenticator=authenticator,
                       policy=Policy.from_settings(security), store=store, routes_app=app.router,
                       sessions=sessions)
    app.state.radproto_policy = Policy.from_settings(security)


def add_readiness_check(app: Any, name: str, check: Any) -> None:
    """Register a readiness check (e.g. "model": lambda: service.model_loaded)."""
    if not hasattr(app.state, "radproto_readiness"):
        app.state.radproto_readiness = {}
    app.state.radproto_readiness[name] = check


def begin_shutdown(app: Any) -> None:
    """From now on /readyz answers 503 so load balancers stop sending while we drain."""
    app.state.radproto_shutting_down = True


def current_principal(request: Any) -> Principal | None:
    """The authenticated caller of a request (None on public routes)."""
    return getattr(request.state, "principal", None)


async def _run_check(check: Any, timeout: float = 3.0) -> bool:
    try:
        if asyncio.iscoroutinefunction(check):
            result = await asyncio.wait_for(check(), timeout)
        else:
            result = await asyncio.wait_for(asyncio.to_thread(check), timeout)
            if asyncio.iscoroutine(result):
                result = await asyncio.wait_for(result, timeout)
        return bool(result)
    except Exception:
        return False


def _add_operations_routes(app: Any, store: Any) -> None:
    from fastapi.responses import JSONResponse, Response

    from radproto.adapter.observability import metrics_payload

    present = {getattr(r, "path", None) for r in flat_routes(app)}

    async def healthz() -> JSONResponse:
        """Alive: the process answers."""
        return JSONResponse({"status": "ok"})

    async def readyz() -> JSONResponse:
        """Ready: the store is reachable and every registered check passes."""
        checks: dict[str, Any] = dict(app.state.radproto_readiness)
        if store is not None and "store" not in checks and hasattr(store, "ping"):
            checks["store"] = store.ping
        names = list(checks)
        results = await asyncio.gather(*(_run_check(checks[n]) for n in names))
        report = {n: ("ok" if r else "failing") for n, r in zip(names, results, strict=True)}
        ready = all(results) and not app.state.radproto_shutting_down
        if app.state.radproto_shutting_down:
            report["shutdown"] = "in progress"
        body: dict[str, Any] = {"status": "ready" if ready else "not ready", "checks": report}
        info = getattr(app.state, "radproto_ready_info", None)  # e.g. the model in use
        if info is not None:
            body.update(info())
        return JSONResponse(body, status_code=200 if ready else 503)

    async def metrics() -> Response:
        """Prometheus metrics."""
        body, content_type = metrics_payload()
        return Response(content=body, media_type=content_type)

    for path, endpoint in (("/healthz", healthz), ("/readyz", readyz), ("/metrics", metrics)):
        if path not in present:
            # response_model=None: the return annotations are strings (postponed
            # evaluation) that FastAPI cannot resolve in this module's namespace.
            app.add_api_route(path, endpoint, methods=["GET"], tags=["operations"],
                              response_model=None, include_in_schema=path != "/metrics")



def install(app: Any, context: Any) -> None:
    """The http_app extension hook (EXTENSION_MODULES): protect the app with the service's
    security settings and store, and register readiness checks for the model and the
    write-back destination."""
    settings = context.settings
    readiness: dict[str, Any] = {
        "model": lambda: getattr(context, "model_status", "ready") == "ready",
    }
    host = getattr(settings, "writeback_host", "")
    port = getattr(settings, "writeback_port", 0)
    if host and port:
        readiness["writeback"] = lambda: tcp_reachable(host, port)
    install_security(app, settings.security, context.store, readiness=readiness)


def tcp_reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a TCP connection to host:port opens (an outbound destination's readiness)."""
    import socket

    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False
