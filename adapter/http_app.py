"""The HTTP API's FastAPI app, wired in plain code: security first, then every router.

    create_app(context)   the service's app: the security middleware and its operations
                          routes (/healthz, /readyz, /metrics), the FHIR API, feedback,
                          Subscription notifications, CDS Hooks and the worklist.

`parts` leaves parts out (tests of one part); `routers` adds routers of an embedding app.
Route handlers reach the service through `ctx: ContextDep` (adapter/context.py): the store,
the catalog, the classifier (None while loading), the FHIR API object.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from typing import Any, Literal

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse

from radproto import __version__
from radproto.adapter import cds_hooks, feedback, fhir_routes, subscriptions, worklist
from radproto.adapter.context import ServiceContext
from radproto.adapter.security import install_security, tcp_reachable

Part = Literal["security", "fhir", "worklist"]
#: Every part, in the order they are wired (security first: its middleware wraps the rest).
ALL_PARTS: tuple[Part, ...] = ("security", "fhir", "worklist")


def service_health(context: ServiceContext) -> tuple[dict[str, Any], int]:
    """/healthz: the body and status of the running service's health."""
    store_ok = context.store.ping()
    counts = context.store.message_counts() if store_ok else {}
    worker_ok = context.worker.alive if context.worker is not None else False
    healthy = store_ok and context.model_status != "failed"
    body: dict[str, Any] = {
        "status": "ok" if healthy else "unavailable",
        "version": __version__,
        "store": "ok" if store_ok else "unavailable",
        "model": context.model_status,
        "model_version": getattr(context.classifier, "model_version", None),
        "worker": "running" if worker_ok else "stopped",
        "queue": counts,
        "mllp_connections": len(context.listener.connections) if context.listener else 0,
        "uptime_s": round(time.time() - context.started_at, 1),
    }
    if context.model_error:
        body["model_error"] = context.model_error
    return body, 200 if healthy else 503


def create_app(context: ServiceContext, *, routers: Sequence[APIRouter] = (),
               parts: Collection[Part] = ALL_PARTS) -> FastAPI:
    app = FastAPI(title="radproto", version=__version__,
                  description="Suggests the imaging protocol for a radiology order.")
    app.state.context = context

    if "security" in parts:
        # Always part of the service: a missing access-control part must stop the service,
        # never leave the routes open.
        context.security = install_security(
            app, context.settings.security, context.store, readiness=_readiness(context),
            ready_info=lambda: context.ready_info() if context.ready_info else {},
            health=lambda: service_health(context))
    else:
        @app.get("/healthz", tags=["ops"])
        def healthz() -> JSONResponse:
            body, status = service_health(context)
            return JSONResponse(body, status_code=status)

    for router in routers:
        app.include_router(router)
    if "fhir" in parts:
        fhir_routes.wire_fhir(app, context)
        app.include_router(fhir_routes.router)
        app.include_router(feedback.router)
        app.include_router(subscriptions.router)
        app.include_router(cds_hooks.router)
    if "worklist" in parts:
        # The radiologists' worklist page, behind the security middleware like every route
        # (its policy rules in adapter/security/policy.py), and its static files.
        app.include_router(worklist.build_router(context))
        worklist.mount_static(app)
    return app


def _readiness(context: ServiceContext) -> dict[str, Any]:
    """/readyz's checks besides the store: the model, and the write-back destination."""
    checks: dict[str, Any] = {"model": lambda: context.model_status == "ready"}
    host = context.settings.writeback_host
    port = context.settings.writeback_port
    if host and port:
        checks["writeback"] = lambda: tcp_reachable(host, port)
    return checks
