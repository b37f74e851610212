"""FHIR write-back and wiring: `FhirWriteback` (the pipeline's outbox builder for FHIR
orders: the Task + Provenance and/or the note), the EHR client the settings describe, and
`wire_fhir` (called by http_app.create_app), which builds the FHIR API object and starts the
outbox relay with the FHIR sender."""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI

from radproto.adapter.context import ServiceContext
from radproto.adapter.fhir_api import FhirApi
from radproto.adapter.fhir_client import (
    OUTBOX_KIND,
    FhirClient,
    FhirClientError,
    FhirSettings,
    outbox_payload,
    retraction_payload,
)
from radproto.adapter.outbox import FhirSender, OutboxRelay
from radproto.adapter.store import (
    OutboxItem,
    OutboxRow,
    StoredMessage,
)
from radproto.fhir_mappings.fhir import (
    suggestion_to_annotation,
    suggestion_to_task,
)
from radproto.fhir_mappings.fhir_bundle import (
    FHIR_JSON,
    order_refs,
)
from radproto.model.catalog import Catalog
from radproto.model.order import Order
from radproto.model.suggestion import Suggestion


@dataclass(frozen=True)
class FhirWriteback:
    """Pipeline outbox builder: the Task (+ Provenance) and/or the note for a FHIR order."""

    destination: str  # the EHR's FHIR base URL
    mode: Literal["task", "note", "both"] = "task"

    def __call__(self, message: StoredMessage, order: Order, suggestion: Suggestion,
                 catalog: Catalog, *, header: object = None) -> list[OutboxItem]:
        if message.content_type != FHIR_JSON:
            return []
        sr_ref, patient_ref = order_refs(order)
        task = None
        if self.mode in ("task", "both"):
            task = suggestion_to_task(suggestion, order, catalog, service_request_ref=sr_ref,
                                      patient_ref=patient_ref, task_id=message.id)
        annotation = suggestion_to_annotation(suggestion) if self.mode != "task" else None
        payload = outbox_payload(task, suggestion, service_request_ref=sr_ref,
                                 annotation=annotation)
        return [OutboxItem(OUTBOX_KIND, self.destination, payload, FHIR_JSON)]

    def retraction(self, row: OutboxRow, new_status: str) -> OutboxItem | None:
        """A sent write-back whose suggestion was withdrawn or superseded: its Task goes to
        cancelled at the EHR (the note, a record of what was suggested, stays)."""
        if row.destination_kind != OUTBOX_KIND or row.destination != self.destination:
            return None
        payload = retraction_payload(row.payload, new_status)
        return None if payload is None else OutboxItem(OUTBOX_KIND, self.destination,
                                                        payload, FHIR_JSON)


def make_ehr_client(settings: FhirSettings) -> FhirClient | None:
    """The EHR client the settings describe (with SMART authentication when configured)."""
    if not settings.server_url:
        return None
    auth = None
    if settings.smart_client_id:
        from radproto.adapter.smart_auth import SmartBackendAuth
        from radproto.model.errors import ConfigError

        if settings.smart_private_key_file is None or not settings.smart_key_id:
            raise ConfigError("SMART needs smart_private_key_file and smart_key_id",
                              field="fhir.smart_private_key_file")
        auth = SmartBackendAuth(fhir_base_url=settings.server_url,
                                client_id=settings.smart_client_id,
                                private_key=settings.smart_private_key_file.read_bytes(),
                                key_id=settings.smart_key_id,
                                algorithm=settings.smart_algorithm, scope=settings.smart_scope)
    return FhirClient(settings.server_url, auth=auth, timeout=settings.client_timeout_s,
                      retries=settings.client_retries)


def fhir_writeback_builders(context: ServiceContext) -> list[FhirWriteback]:
    """The pipeline's outbox builders for FHIR orders (none without an EHR server)."""
    settings = fhir_settings_of(context)
    if not settings.server_url or settings.writeback == "none":
        return []
    return [FhirWriteback(settings.server_url.rstrip("/"), settings.writeback)]


def fhir_settings_of(context: ServiceContext) -> FhirSettings:
    """The FHIR settings in force: the context's own (an embedding app or a test), else the
    `fhir` section of the service settings."""
    return (context.fhir_settings or getattr(context.settings, "fhir", None)
            or FhirSettings())


def wire_fhir(app: FastAPI, context: ServiceContext) -> FhirApi:
    """Build the FHIR API object (context.fhir) and start the FHIR outbox relay when write-back
    is on: with the running service's loop, or, for an app built outside a loop (tests),
    for as long as the app runs."""
    settings = fhir_settings_of(context)
    ehr = context.fhir_client or make_ehr_client(settings)
    context.fhir = FhirApi(context, settings=settings, ehr=ehr)
    if ehr is not None and settings.writeback != "none":
        relay = context.fhir_relay = OutboxRelay(context.store, FhirSender(ehr),
                                                 poll_s=0.5, worker_id="fhir-relay",
                                                 lease_s=60.0)
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # built outside a loop (tests): the relay runs with the app
            _run_relay_with_app(app, relay, ehr)
        else:  # built by the running service (uvicorn runs with lifespan off)
            relay.start()
    return context.fhir


def _run_relay_with_app(app: FastAPI, relay: OutboxRelay, ehr: FhirClient) -> None:
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: Any):  # the relay lives as long as the app
        async with inner(app_) as state:
            relay.start()
            try:
                yield state
            finally:
                with contextlib.suppress(asyncio.CancelledError, FhirClientError):
                    await relay.stop()
                await ehr.aclose()

    app.router.lifespan_context = lifespan
