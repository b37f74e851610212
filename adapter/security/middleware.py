"""The HTTP security middleware: authenticate every request (API key, JWT or the worklist's
cookie session), apply the policy table, and refuse with an OperationOutcome. What a request
leaves behind (audit event, metrics, log line) is request_audit.py's; fail-closed: a response
whose audit event cannot be stored is replaced by 503."""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from typing import Any

from radproto.adapter.security.credentials import Authenticator
from radproto.adapter.security.policy import PUBLIC, Policy, PolicyRule
from radproto.adapter.security.principal import AuthError, Principal
from radproto.adapter.security.request_audit import (
    audit_denial,
    audit_request,
    observe_request,
)
from radproto.fhir_mappings.fhir_validate import operation_outcome

# ---------------------------------------------------------------------------- HTTP middleware

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
#: Where the worklist's cookie sessions are accepted, and its sign-in page.
SESSION_PATH = "/worklist"
SESSION_LOGIN_PATH = "/worklist/login"
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
            observe_request(method, route, int(outcome["status"]),
                            time.perf_counter() - started, audited=rule.audit,
                            principal=principal, request_id=request_id)

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
                        await audit_request(self.store, scope, route, params, method,
                                            principal, request_id, message["status"],
                                            location)
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
                    await audit_request(self.store, scope, route, params, method, principal,
                                        request_id, 500, "")
            raise

    async def _deny(self, scope, send, status: int, reason: str, message: str,
                    principal: Principal | None, route: str, method: str, request_id: str,
                    *, bearer: bool = False) -> None:
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
        await audit_denial(self.store, scope, status, reason, principal, route, method,
                           request_id)


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
