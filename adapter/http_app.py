"""The HTTP API's FastAPI app: /healthz here; the FHIR, CDS Hooks and security parts plug in.

How a part plugs in (any of):
  * pass routers: `create_app(context, routers=[router])`;
  * register a provider before the app is built: `register_router_provider(fn)` where
    `fn(context) -> APIRouter`;
  * be one of EXTENSION_MODULES: each is imported and may define
    `build_router(context) -> APIRouter` (included) and/or `install(app, context) -> None`
    (middleware, exception handlers, extra state).
Route handlers reach the service through the `get_context` dependency (or
`request.app.state.context`): the store, the catalog, the classifier (None while loading).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from radproto import __version__

if TYPE_CHECKING:
    from radproto.adapter.hl7_listener import MllpListener
    from radproto.adapter.outbox import OutboxRelay
    from radproto.adapter.pipeline import Classifier
    from radproto.adapter.settings import ServiceSettings
    from radproto.adapter.store import Store
    from radproto.adapter.worker import Worker
    from radproto.model.catalog import Catalog

#: Modules of other parts, included when present (order matters: security first).
EXTENSION_MODULES: tuple[str, ...] = (
    "radproto.adapter.auth",
    "radproto.adapter.fhir_routes",
    # The radiologists' worklist page (its router, and its static files mounted by install);
    # behind the security middleware like every route, its policy rules in adapter/auth.py.
    "radproto.adapter.worklist",
)
RouterProvider = Callable[["ServiceContext"], APIRouter]
_PROVIDERS: list[RouterProvider] = []


@dataclass
class ServiceContext:
    """The running service, shared by the MLLP side, the worker and every HTTP route."""

    settings: ServiceSettings
    store: Store
    catalog: Catalog
    classifier: Classifier | None = None
    model_status: str = "loading"  # loading | ready | failed | paused (shutdown mid-training)
    model_error: str = ""
    model_uri: str = ""
    worker: Worker | None = None
    listener: MllpListener | None = None
    relay: OutboxRelay | None = None
    started_at: float = field(default_factory=time.time)
    extra: dict[str, Any] = field(default_factory=dict)

    def wake_worker(self) -> None:
        if self.worker is not None:
            self.worker.wake()


def get_context(request: Request) -> ServiceContext:
    """FastAPI dependency: `context: ServiceContext = Depends(get_context)`."""
    return request.app.state.context


def register_router_provider(provider: RouterProvider) -> None:
    if provider not in _PROVIDERS:
        _PROVIDERS.append(provider)


def create_app(context: ServiceContext, *, routers: Sequence[APIRouter] = (),
               extensions: Sequence[str] | None = None) -> FastAPI:
    app = FastAPI(title="radproto", version=__version__,
                  description="Suggests the imaging protocol for a radiology order.")
    app.state.context = context

    @app.get("/healthz", tags=["ops"])
    def healthz() -> JSONResponse:
        store_ok = context.store.ping()
        counts = context.store.message_counts() if store_ok else {}
        worker_ok = context.worker.alive if context.worker is not None else False
        healthy = store_ok and context.model_status != "failed"
        body = {
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
        return JSONResponse(body, status_code=200 if healthy else 503)

    for router in routers:
        app.include_router(router)
    for provider in _PROVIDERS:
        app.include_router(provider(context))
    for name in (EXTENSION_MODULES if extensions is None else extensions):
        # Imported unconditionally: a missing access-control module must stop the service,
        # never leave the routes open.
        module = importlib.import_module(name)
        if hasattr(module, "install"):
            module.install(app, context)
        if hasattr(module, "build_router"):
            app.include_router(module.build_router(context))
    return app
