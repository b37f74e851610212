"""The HTTP side of security: `install_security(app, security, store)` adds an ASGI middleware
that authenticates every request, applies the policy table, records audit events, logs and
counts requests, and adds /healthz, /readyz and /metrics where the app lacks them; one
`SecurityState` per app holds what it built."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse, Response

from radproto.adapter.audit import append_event, harden_audit_table
from radproto.adapter.observability import (
    AUTH_DENIED,
    HTTP_LATENCY,
    HTTP_REQUESTS,
    metrics_payload,
    set_hash_key,
)
from radproto.adapter.security.credentials import Authenticator
from radproto.adapter.security.keys import ApiKeyStore
from radproto.adapter.security.policy import PUBLIC, Policy, PolicyRule
from radproto.adapter.security.principal import AuthError, Principal
from radproto.adapter.security.sessions import SessionManager
from radproto.adapter.security.settings import (
    SecuritySettings,
)
from radproto.fhir_mappings.fhir_validate import operation_outcome

_log = logging.getLogger("radproto.http")


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
                            None, code="transient",
                            text="the audit trail is unavailable; try again"),
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
            await _send_json(send, status, operation_outcome(None, code=code, text=message),
                             request_id, extra_headers)
        if status in (401, 403) and self.store is not None:
            # Denials are security events: recorded best effort (a down store must not turn a
            # 401 into something else).
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


@dataclass
class SecurityState:
    """What the security part of one app holds: `install_security` builds it and puts it on
    the app (`app.state.security`); the service's context points to the same object."""

    authenticator: Authenticator
    policy: Policy
    sessions: SessionManager
    store: Any
    #: /readyz's checks by name (callables, sync or async, truthy when ready).
    readiness: dict[str, Any] = field(default_factory=dict)
    shutting_down: bool = False
    #: What /readyz adds to its answer (e.g. the model in use).
    ready_info: Callable[[], dict[str, Any]] | None = None


def install_security(app: Any, security: SecuritySettings, store: Any, *,
                     readiness: dict[str, Any] | None = None,
                     api_keys: ApiKeyStore | None = None,
                     ready_info: Callable[[], dict[str, Any]] | None = None,
                     health: Callable[[], tuple[dict[str, Any], int]] | None = None,
                     ) -> SecurityState:
    """Protect every route of `app` (a FastAPI app, before it starts): authentication, the
    policy table, audit events; add /healthz (`health` gives its body and status; by default
    "ok"), /readyz, /metrics where missing. `readiness` maps names to checks (callables, sync
    or async, returning a truthy value when ready) that /readyz runs besides the store's
    ping; more can be added with `add_readiness_check`. Makes the store's audit table
    append-only."""
    set_hash_key(security.log_hash_key)
    authenticator = Authenticator(security, api_keys=api_keys)
    if not authenticator.configured and not security.allow_anonymous:
        _log.warning("no HTTP credentials are configured (security.jwt_issuers, --api-keys): "
                     "every request except /healthz and /readyz will get 401")
    if security.allow_anonymous:
        _log.warning("security.allow_anonymous is set: HTTP requests are not authenticated")
    if store is not None:
        harden_audit_table(store)
    sessions = SessionManager(security.session_secret, ttl_seconds=security.session_ttl_seconds,
                              secure=security.session_cookie_secure)
    state = SecurityState(authenticator=authenticator, policy=Policy.from_settings(security),
                          sessions=sessions, store=store, readiness=dict(readiness or {}),
                          ready_info=ready_info)
    app.state.security = state
    _add_operations_routes(app, state, health)
    app.add_middleware(SecurityMiddleware, authenticator=authenticator, policy=state.policy,
                       store=store, routes_app=app.router, sessions=sessions)
    return state


def add_readiness_check(app: Any, name: str, check: Any) -> None:
    """Register a readiness check (e.g. "model": lambda: service.model_loaded)."""
    app.state.security.readiness[name] = check


def begin_shutdown(app: Any) -> None:
    """From now on /readyz answers 503 so load balancers stop sending while we drain."""
    app.state.security.shutting_down = True


def current_principal(request: Any) -> Principal | None:
    """The authenticated caller of a request (None on public routes)."""
    return getattr(request.state, "principal", None)


def require_principal(request: Request) -> Principal:
    """The authenticated caller; AuthError (401) when there is none (the security middleware
    is not installed, or the route is public): refuse, never open."""
    principal = current_principal(request)
    if principal is None:
        raise AuthError("no_credentials", "authentication required")
    return principal


#: Declare `principal: PrincipalDep` in a route that needs the authenticated caller.
PrincipalDep = Annotated[Principal, Depends(require_principal)]


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


def _add_operations_routes(app: Any, state: SecurityState,
                           health: Callable[[], tuple[dict[str, Any], int]] | None) -> None:
    present = {getattr(r, "path", None) for r in flat_routes(app)}
    store = state.store

    async def healthz() -> JSONResponse:
        """Alive: the process answers (with the service's parts, when it has them)."""
        body, status = health() if health is not None else ({"status": "ok"}, 200)
        return JSONResponse(body, status_code=status)

    async def readyz() -> JSONResponse:
        """Ready: the store is reachable and every registered check passes."""
        checks: dict[str, Any] = dict(state.readiness)
        if store is not None and "store" not in checks and hasattr(store, "ping"):
            checks["store"] = store.ping
        names = list(checks)
        results = await asyncio.gather(*(_run_check(checks[n]) for n in names))
        report = {n: ("ok" if r else "failing") for n, r in zip(names, results, strict=True)}
        ready = all(results) and not state.shutting_down
        if state.shutting_down:
            report["shutdown"] = "in progress"
        body: dict[str, Any] = {"status": "ready" if ready else "not ready", "checks": report}
        if state.ready_info is not None:
            body.update(state.ready_info())
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



def tcp_reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a TCP connection to host:port opens (an outbound destination's readiness)."""
    import socket

    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False
