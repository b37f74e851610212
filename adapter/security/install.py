"""`install_security(app, security, store)`: the security part of one app, put in place
before it starts: the middleware, the policy table, the audit table made append-only, and the
operations routes (adapter/ops.py) behind it. `SecurityState` is what it built."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from radproto.adapter.audit import harden_audit_table
from radproto.adapter.observability import set_hash_key
from radproto.adapter.ops import add_operations_routes
from radproto.adapter.security.credentials import Authenticator
from radproto.adapter.security.keys import ApiKeyStore
from radproto.adapter.security.middleware import SecurityMiddleware, flat_routes
from radproto.adapter.security.policy import Policy
from radproto.adapter.security.sessions import SessionManager
from radproto.adapter.security.settings import SecuritySettings

_log = logging.getLogger("radproto.http")


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
    add_operations_routes(app, state, health,
                          present={getattr(r, "path", None) for r in flat_routes(app)})
    app.add_middleware(SecurityMiddleware, authenticator=authenticator, policy=state.policy,
                       store=store, routes_app=app.router, sessions=sessions)
    return state


def add_readiness_check(app: Any, name: str, check: Any) -> None:
    """Register a readiness check (e.g. "model": lambda: service.model_loaded)."""
    app.state.security.readiness[name] = check


def begin_shutdown(app: Any) -> None:
    """From now on /readyz answers 503 so load balancers stop sending while we drain."""
    app.state.security.shutting_down = True

