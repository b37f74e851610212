"""What every HTTP request leaves behind: its audit event (who did what to which entity), the
denial events, and the request metrics and log line. The security middleware calls these."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from radproto.adapter.audit import append_event
from radproto.adapter.observability import AUTH_DENIED, HTTP_LATENCY, HTTP_REQUESTS
from radproto.adapter.security.principal import Principal

_log = logging.getLogger("radproto.http")

_ENTITY_NAMES = {"suggestions": "Suggestion", "orders": "Order", "messages": "Message",
                 "feedback": "Feedback", "cds-services": "CdsService", "audit": "AuditEvent"}


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

async def audit_request(store: Any, scope: dict[str, Any], route: str, params: dict[str, Any],
                        method: str, principal: Principal, request_id: str, status: int,
                        location: str) -> None:
    """The audit event of one request (raises when it cannot be stored: the caller fails
    closed)."""
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
    await asyncio.to_thread(append_event, store, principal.actor, action, entity_type,
                            entity_id, detail)


async def audit_denial(store: Any, scope: dict[str, Any], status: int, reason: str,
                       principal: Principal | None, route: str, method: str,
                       request_id: str) -> None:
    """A refused request, counted; a 401 or 403 is also a security event, recorded best
    effort (a down store must not turn a 401 into something else)."""
    AUTH_DENIED.labels(status=str(status), reason=reason).inc()
    if status not in (401, 403) or store is None:
        return
    detail = {"method": method, "route": route, "status": status, "reason": reason,
              "request_id": request_id, "client": (scope.get("client") or ("", 0))[0]}
    actor = principal.actor if principal else "anonymous"
    with contextlib.suppress(Exception):
        await asyncio.to_thread(append_event, store, actor, "deny", "Route", route, detail)


def observe_request(method: str, route: str, status: int, elapsed: float, *, audited: bool,
                    principal: Principal | None, request_id: str) -> None:
    """The request's metrics, and its log line when it is audited or failed."""
    HTTP_REQUESTS.labels(method=method, route=route, status=str(status)).inc()
    HTTP_LATENCY.labels(route=route).observe(elapsed)
    if audited or status >= 400:
        _log.info("http request", extra={
            "method": method, "route": route, "status_code": status,
            "duration_ms": round(elapsed * 1000, 2), "request_id": request_id,
            "actor": principal.actor if principal else "",
            "auth": principal.auth if principal else "none"})
