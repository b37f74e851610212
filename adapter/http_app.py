"""The HTTP API's FastAPI app, wired in plain code: security first, then every router.

    create_app(context)   the service's app: the security middleware and the operations
                          routes (adapter/ops.py: /healthz, /readyz, /metrics), the FHIR
                          API, feedback, Subscription notifications, CDS Hooks, the worklist.

`parts` leaves parts out (tests of one part); `routers` adds routers of an embedding app.
Route handlers reach the service through `ctx: ContextDep` (adapter/context.py): the store,
the catalog, the classifier (None while loading), the FHIR API object.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Literal

from fastapi import APIRouter, FastAPI

from radproto import __version__
from radproto.adapter import (
    cds_hooks,
    feedback,
    fhir_routes,
    fhir_writeback,
    ops,
    subscriptions,
    worklist,
)
from radproto.adapter.context import ServiceContext
from radproto.adapter.security import install_security

Part = Literal["security", "fhir", "worklist"]
#: Every part, in the order they are wired (security first: its middleware wraps the rest).
ALL_PARTS: tuple[Part, ...] = ("security", "fhir", "worklist")


def create_app(context: ServiceContext, *, routers: Sequence[APIRouter] = (),
               parts: Collection[Part] = ALL_PARTS) -> FastAPI:
    app = FastAPI(title="radproto", version=__version__,
                  description="Suggests the imaging protocol for a radiology order.")
    app.state.context = context

    if "security" in parts:
        # Always part of the service: a missing access-control part must stop the service,
        # never leave the routes open.
        context.security = install_security(
            app, context.settings.security, context.store,
            readiness=ops.service_readiness(context),
            ready_info=lambda: context.ready_info() if context.ready_info else {},
            health=lambda: ops.service_health(context))
    else:
        ops.add_operations_routes(app, None, lambda: ops.service_health(context),
                                  paths=("/healthz",))

    for router in routers:
        app.include_router(router)
    if "fhir" in parts:
        fhir_writeback.wire_fhir(app, context)
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

