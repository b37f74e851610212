"""The operations routes: /healthz (alive), /readyz (ready for traffic) and /metrics
(Prometheus). The security part installs them behind its middleware (`install_security`);
`service_health` and `service_readiness` are what the running service reports there.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, Protocol

from fastapi.responses import JSONResponse, Response

from radproto import __version__
from radproto.adapter.observability import metrics_payload

if TYPE_CHECKING:
    from radproto.adapter.context import ServiceContext

#: /healthz's body and HTTP status.
Health = Callable[[], tuple[dict[str, Any], int]]
OPERATIONS_PATHS: tuple[str, ...] = ("/healthz", "/readyz", "/metrics")


class ReadinessState(Protocol):
    """What /readyz reads (security.SecurityState is one)."""

    store: Any
    readiness: dict[str, Any]
    shutting_down: bool
    ready_info: Callable[[], dict[str, Any]] | None


def add_operations_routes(app: Any, state: ReadinessState | None, health: Health | None, *,
                          present: Collection[str] = (),
                          paths: Collection[str] = OPERATIONS_PATHS) -> None:
    """Add the operations routes of `paths` the app does not have yet (`present`): an app's
    own /healthz is kept. /readyz needs `state`."""

    async def healthz() -> JSONResponse:
        """Alive: the process answers (with the service's parts, when it has them)."""
        body, status = health() if health is not None else ({"status": "ok"}, 200)
        return JSONResponse(body, status_code=status)

    async def readyz() -> JSONResponse:
        """Ready: the store is reachable and every registered check passes."""
        assert state is not None
        checks: dict[str, Any] = dict(state.readiness)
        store = state.store
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
        if path in paths and path not in present:
            # response_model=None: the return annotations are strings (postponed
            # evaluation) that FastAPI cannot resolve in this module's namespace.
            app.add_api_route(path, endpoint, methods=["GET"], tags=["operations"],
                              response_model=None, include_in_schema=path != "/metrics")


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


def tcp_reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a TCP connection to host:port opens (an outbound destination's readiness)."""
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------------------- the service's


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


def service_readiness(context: ServiceContext) -> dict[str, Any]:
    """/readyz's checks besides the store: the model, and the write-back destination."""
    checks: dict[str, Any] = {"model": lambda: context.model_status == "ready"}
    host = context.settings.writeback_host
    port = context.settings.writeback_port
    if host and port:
        checks["writeback"] = lambda: tcp_reachable(host, port)
    return checks
