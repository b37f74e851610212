"""The running service as one typed object, and the FastAPI dependency that hands it to routes.

`adapter/service.py` fills it part by part (store, listener, worker, relays, the FHIR API,
the security state); `adapter/http_app.py` puts it on the app; a route declares
`ctx: ContextDep` to reach it. Types only: this module imports no other part of the adapter
at run time, so every part may import it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request

if TYPE_CHECKING:
    from radproto.adapter.cds_hooks import SuggestionCache
    from radproto.adapter.fhir_api import FhirApi
    from radproto.adapter.fhir_client import FhirClient, FhirSettings
    from radproto.adapter.hl7_listener import MllpListener
    from radproto.adapter.outbox import OutboxRelay
    from radproto.adapter.pipeline import Classifier
    from radproto.adapter.security import SecurityState
    from radproto.adapter.settings import ServiceSettings
    from radproto.adapter.store import Store
    from radproto.adapter.subscriptions import SubscriptionHandler
    from radproto.adapter.worker import Worker
    from radproto.model.catalog import Catalog


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
    #: Configured protocols the model has no trained row for, and the reverse (service.py).
    model_catalog_differences: dict[str, list[str]] = field(default_factory=dict)
    worker: Worker | None = None
    listener: MllpListener | None = None
    relay: OutboxRelay | None = None
    started_at: float = field(default_factory=time.time)
    #: What /readyz adds about the model in use (the service sets it).
    ready_info: Callable[[], dict[str, Any]] | None = None
    # -- the FHIR side (http_app.create_app fills these) ----------------------------------
    #: The `fhir` settings; None: settings.fhir (an embedding app or a test may set its own).
    fhir_settings: FhirSettings | None = None
    #: The EHR client; None: built from the FHIR settings (a test may pass its own).
    fhir_client: FhirClient | None = None
    fhir: FhirApi | None = None
    fhir_relay: OutboxRelay | None = None  # the outbox relay with the FHIR sender
    cds_cache: SuggestionCache | None = None
    subscriptions: SubscriptionHandler | None = None
    # -- the HTTP security part (authentication, policy, sessions, readiness) -------------
    security: SecurityState | None = None

    def wake_worker(self) -> None:
        if self.worker is not None:
            self.worker.wake()


def get_context(request: Request) -> ServiceContext:
    """The service context of the app serving `request`."""
    return request.app.state.context


#: Declare `ctx: ContextDep` in a route to reach the service; tests override `get_context`.
ContextDep = Annotated[ServiceContext, Depends(get_context)]
