"""The FHIR R4 intake API (application/fhir+json) and what plugs FHIR into the service.

    POST /fhir/ServiceRequest        store, classify, answer 201 + the Task (or 202 + Location)
    PUT  /fhir/ServiceRequest/{id}   the same for an updated order
    POST /fhir                       a transaction or batch Bundle of ServiceRequests
    GET  /fhir/Task/{id}             a suggestion as a Task (id = the stored message id)
    GET  /fhir/Task?focus=ServiceRequest/{id}
    GET  /fhir/metadata              the CapabilityStatement

A ServiceRequest is stored as a message (content type application/fhir+json: a collection
Bundle of the request and the Patient / Conditions fetched for it) and classified by the
worker through the pipeline like any HL7 message (its parser: `parse_fhir_message`, over
fhir_mappings/fhir_bundle.py). `wire_fhir` (called by http_app.create_app) builds the API
object and starts the FHIR outbox relay; `fhir_writeback_builders` gives the pipeline its
FHIR write-back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from radproto.adapter.context import ContextDep, ServiceContext
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
    StoredSuggestion,
    StoreUnavailable,
)
from radproto.fhir_mappings.fhir import (
    ANNOTATION_AUTHOR,
    FhirValidationError,
    Issue,
    operation_outcome,
    references_to_fetch,
    service_request_to_order,
    suggestion_to_annotation,
    suggestion_to_task,
    validate_resource,
)
from radproto.fhir_mappings.fhir_bundle import (
    FHIR_JSON,
    pack_message,
    unpack_message,
)
from radproto.fhir_mappings.fhir_task import (
    OUTPUT_TYPE_SYSTEM,
    TASK_IDENTIFIER_SYSTEM,
    business_status,
    protocol_concept,
)
from radproto.model.catalog import Catalog
from radproto.model.fast_batching import DynamicBatcher
from radproto.model.order import Order
from radproto.model.suggestion import Suggestion

log = logging.getLogger("radproto.fhir")

FHIR_SOURCE = "fhir"
_ACCEPTED_TYPES = ("application/fhir+json", "application/json", "")


class FhirResponse(JSONResponse):
    media_type = FHIR_JSON


def fhir_error(issues: list[Issue] | None, status: int, text: str = "",
               code: str = "processing") -> FhirResponse:
    return FhirResponse(operation_outcome(issues, text=text, code=code), status_code=status)


def validation_response(exc: FhirValidationError) -> FhirResponse:
    """400 for a resource that is not well-formed FHIR; 422 for one that breaks a binding or
    a business rule (FHIR's http page draws the line the same way)."""
    structural = any(i.code in ("structure", "value", "not-supported") for i in exc.issues)
    return fhir_error(exc.issues, 400 if structural else 422)


def order_refs(order: Order) -> tuple[str, str]:
    """(ServiceRequest reference, Patient reference or "") of a stored FHIR order."""
    subject = str(order.extra.get("subject", ""))
    sr_id = order.extra.get("fhir_id") or order.placer_order_number
    return f"ServiceRequest/{sr_id}", "" if subject.startswith("#") else subject


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


def content_digest(sr: dict[str, Any]) -> str:
    """A hash of what the order says. Server bookkeeping (meta, narrative) and the notes we
    wrote ourselves are left out: our own write-back, notified back to us as an update of the
    ServiceRequest, must not be classified again (and written back again, and again)."""
    content = {k: v for k, v in sr.items() if k not in ("meta", "text")}
    content["note"] = [n for n in sr.get("note") or []
                       if n.get("authorString") != ANNOTATION_AUTHOR]
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


# -- the service object --------------------------------------------------------------------

TASK_STATUS = {  # stored suggestion status -> (Task.status, businessStatus code)
    "pending": ("requested", None),
    "accepted": ("completed", "accepted"),
    "changed": ("rejected", "changed"),
    "rejected": ("rejected", "rejected"),
    "superseded": ("cancelled", "superseded"),
    "withdrawn": ("cancelled", "withdrawn"),
}


class FhirApi:
    """What the FHIR routes share: the service context (store, catalog, classifier, worker),
    the FHIR settings and the EHR client."""

    def __init__(self, context: Any, *, settings: FhirSettings | None = None,
                 ehr: FhirClient | None = None) -> None:
        self.context = context
        self.store = context.store
        self.settings = settings or FhirSettings()
        self.ehr = ehr
        self._batcher: tuple[Any, DynamicBatcher] | None = None
        self._batcher_lock = threading.Lock()

    @property
    def classifier(self) -> Any:
        """The model, or None while it loads."""
        return self.context.classifier

    def batcher(self, classifier: Any) -> DynamicBatcher:
        """One batcher per model: concurrent CDS Hooks drafts share a forward pass."""
        with self._batcher_lock:
            current = self._batcher
            if current is None or current[0] is not classifier:
                if current is not None:  # the model was replaced: the old one finishes
                    current[1].close(timeout=0)
                batcher = DynamicBatcher(
                    lambda orders: classifier.score_orders(list(orders)),
                    max_batch=64, max_wait_ms=self.settings.cds_batch_wait_ms,
                    name="radproto-cds-batcher")
                current = self._batcher = (classifier, batcher)
            return current[1]

    def stop(self) -> None:
        """Answer what the batcher holds, then end its thread (service shutdown)."""
        with self._batcher_lock:
            if self._batcher is not None:
                self._batcher[1].close()
                self._batcher = None

    @property
    def catalog(self) -> Catalog:
        return self.context.catalog

    def wake(self) -> None:
        self.context.wake_worker()

    # -- intake ---------------------------------------------------------------------------

    async def ingest(self, sr: dict[str, Any], *, source: str = FHIR_SOURCE
                     ) -> tuple[str, bool]:
        """Validate, complete with referenced resources, store. Returns (message id,
        duplicate). Raises FhirValidationError, StoreUnavailable."""
        validate_resource(sr, "ServiceRequest")
        sr = dict(sr)
        sr.setdefault("id", uuid.uuid4().hex)  # the server names an order that has no id
        related = await self.fetch_related(sr)
        subject = (sr.get("subject") or {}).get("reference", "")
        service_request_to_order(sr, patient=related.get(subject), conditions=related)
        # Same id and content: the same message (a re-sent or re-notified order).
        result = await asyncio.to_thread(
            self.store.accept_message, source=source,
            dedup_key=f"fhir:ServiceRequest/{sr['id']}:{content_digest(sr)}",
            raw=pack_message(sr, related), content_type=FHIR_JSON)
        if not result.duplicate:
            self.wake()
        return result.message_id, result.duplicate

    async def fetch_related(self, sr: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """The Patient and reason Conditions the request points to, read from the EHR.
        Best effort: an order is protocolled without them rather than not at all."""
        if self.ehr is None:
            return {}
        refs = references_to_fetch(sr)
        results = await asyncio.gather(*(self.ehr.read(r) for r in refs),
                                       return_exceptions=True)
        related = {}
        for ref, result in zip(refs, results, strict=True):
            if isinstance(result, dict):
                related[ref] = result
            else:
                log.warning("fhir reference not fetched: %s (%s)", ref.split("/")[0],
                            type(result).__name__)
        return related

    async def wait_done(self, message_ids: list[str], timeout: float) -> bool:
        """Wait (polling the store) until every message is processed, or the timeout."""
        deadline = time.monotonic() + timeout
        delay = 0.002
        pending = set(message_ids)
        while True:
            for mid in list(pending):
                message = await asyncio.to_thread(self.store.get_message, mid)
                if message is None or message.status in ("done", "failed"):
                    pending.discard(mid)
            if not pending:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    # -- Tasks ----------------------------------------------------------------------------

    def task_for_message(self, message_id: str) -> dict[str, Any] | None:
        """The Task of one stored FHIR message (sync: call it from a thread)."""
        message = self.store.get_message(message_id)
        if message is None or message.content_type != FHIR_JSON:
            return None
        stored = self.store.suggestions_for(message_id=message_id)
        if stored:
            return self._task(message_id, stored[0])
        sr, _ = unpack_message(message.raw) if message.raw else ({}, {})
        status = {"pending": "received", "processing": "in-progress", "failed": "failed",
                  "done": "cancelled"}.get(message.status, "received")
        task = {
            "resourceType": "Task", "id": message_id,
            "identifier": [{"system": TASK_IDENTIFIER_SYSTEM, "value": message_id}],
            "status": status, "intent": "proposal",
            "businessStatus": business_status(
                {"received": "queued", "in-progress": "classifying", "failed": "failed",
                 "cancelled": "no-suggestion"}[status], f"Protocol suggestion {status}"),
            "code": {"text": "protocol suggestion"},
            "authoredOn": message.received_at.isoformat(),
        }
        if sr.get("id"):
            ref = {"reference": f"ServiceRequest/{sr['id']}"}
            task["focus"], task["basedOn"] = ref, [ref]
        if message.status == "failed":
            task["statusReason"] = {"text": message.error.split(":", 1)[0][:200]}
        return task

    def _task(self, message_id: str, stored: StoredSuggestion) -> dict[str, Any]:
        order_row = self.store.get_order(stored.order_id)
        order = order_row.order if order_row else Order()
        sr_ref, patient_ref = order_refs(order)
        task = suggestion_to_task(stored.suggestion, order, self.catalog,
                                  service_request_ref=sr_ref, patient_ref=patient_ref,
                                  task_id=message_id)
        status, business = TASK_STATUS.get(stored.status, ("requested", None))
        task["status"] = status
        if business:
            task["businessStatus"] = business_status(business, f"Suggestion {business}")
        feedback = self.store.feedback_rows(suggestion_id=stored.id)
        if feedback and feedback[-1].protocol:
            task["output"].append({
                "type": {"coding": [{"system": OUTPUT_TYPE_SYSTEM, "code": "chosen-protocol",
                                     "display": "Protocol chosen by the radiologist"}]},
                "valueCodeableConcept": protocol_concept(feedback[-1].protocol, self.catalog)})
        return task

    def tasks_for_service_request(self, sr_id: str) -> list[dict[str, Any]]:
        order = self.store.get_order(sr_id)
        if order is None or order.source != FHIR_SOURCE:
            return []
        return [self._task(s.message_id, s)
                for s in self.store.suggestions_for(order_id=order.id)]


# -- HTTP ----------------------------------------------------------------------------------

router = APIRouter(tags=["fhir"])


def fhir_api(ctx: ContextDep) -> FhirApi:
    """The FHIR API object of the service (http_app.create_app builds it)."""
    if ctx.fhir is None:
        raise RuntimeError("the FHIR part is not wired (http_app.create_app parts)")
    return ctx.fhir


#: Declare `api: FhirApiDep` in a route to reach the FHIR API object.
FhirApiDep = Annotated[FhirApi, Depends(fhir_api)]


async def read_resource(request: Request) -> dict[str, Any]:
    """The JSON body; FhirValidationError for a body that is not a JSON object."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in _ACCEPTED_TYPES:
        raise FhirValidationError([Issue("(body)", f"unsupported content type {ctype}",
                                         "not-supported")])
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as exc:
        raise FhirValidationError([Issue("(body)", "the body is not valid JSON",
                                         "structure")]) from exc
    if not isinstance(body, dict):
        raise FhirValidationError([Issue("(body)", "the body must be a JSON object",
                                         "structure")])
    return body


@router.get("/fhir/metadata")
async def capability_statement(request: Request) -> FhirResponse:
    return FhirResponse(CAPABILITY_STATEMENT)


@router.post("/fhir/ServiceRequest")
async def create_service_request(request: Request, api: FhirApiDep) -> Response:
    return await _intake(api, request, None)


@router.put("/fhir/ServiceRequest/{sr_id}")
async def update_service_request(sr_id: str, request: Request, api: FhirApiDep) -> Response:
    return await _intake(api, request, sr_id)


async def _intake(api: FhirApi, request: Request, sr_id: str | None) -> Response:
    try:
        sr = await read_resource(request)
        if sr_id is not None:
            if sr.get("id") not in (None, sr_id):
                raise FhirValidationError([Issue("ServiceRequest.id",
                                                 "the id differs from the URL", "invalid")])
            sr["id"] = sr_id
        message_id, _ = await api.ingest(sr)
    except FhirValidationError as exc:
        return validation_response(exc)
    except StoreUnavailable:
        return fhir_error(None, 503, "the store is unavailable; retry", "transient")
    return await _answer_with_task(api, request, message_id)


async def _answer_with_task(api: FhirApi, request: Request, message_id: str) -> Response:
    location = f"/fhir/Task/{message_id}"
    asynchronous = "respond-async" in request.headers.get("prefer", "")
    if not asynchronous and await api.wait_done([message_id], api.settings.sync_wait_s):
        task = await asyncio.to_thread(api.task_for_message, message_id)
        return FhirResponse(task, status_code=201, headers={"Location": location})
    outcome = operation_outcome(None, severity="information", code="informational",
                                text=f"accepted; poll {location}")
    return FhirResponse(outcome, status_code=202, headers={"Location": location})


@router.post("/fhir")
@router.post("/fhir/")
async def bundle(request: Request, api: FhirApiDep) -> Response:
    try:
        body = await read_resource(request)
        if body.get("resourceType") != "Bundle":
            raise FhirValidationError([Issue("resourceType", "POST /fhir takes a Bundle",
                                             "not-supported")])
        kind = body.get("type")
        if kind not in ("transaction", "batch"):
            raise FhirValidationError([Issue("Bundle.type", "Bundle.type must be transaction "
                                             "or batch", "code-invalid")])
        entries = body.get("entry") or []
        requests = [_entry_service_request(i, e) for i, e in enumerate(entries)]
    except FhirValidationError as exc:
        return validation_response(exc)
    if kind == "transaction":
        # All or nothing: every entry is checked before any is stored.
        problems: list[Issue] = []
        for index, sr in enumerate(requests):
            if isinstance(sr, FhirValidationError):
                problems += _prefixed(index, sr)
                continue
            try:
                validate_resource(sr, "ServiceRequest")
                service_request_to_order(sr)
            except FhirValidationError as exc:
                problems += _prefixed(index, exc)
        if problems:
            return validation_response(FhirValidationError(problems))
    results: list[tuple[str | None, dict | None]] = []
    try:
        for sr in requests:
            if isinstance(sr, FhirValidationError):
                results.append((None, operation_outcome(sr.issues)))
                continue
            try:
                message_id, _ = await api.ingest(sr)
                results.append((message_id, None))
            except FhirValidationError as exc:
                results.append((None, operation_outcome(exc.issues)))
    except StoreUnavailable:
        return fhir_error(None, 503, "the store is unavailable; retry", "transient")
    ids = [mid for mid, _ in results if mid]
    done = await api.wait_done(ids, api.settings.sync_wait_s)
    response_entries = []
    for message_id, outcome in results:
        if message_id is None:
            response_entries.append({"response": {"status": "422 Unprocessable Entity",
                                                  "outcome": outcome}})
            continue
        task = await asyncio.to_thread(api.task_for_message, message_id) if done else None
        entry: dict[str, Any] = {"response": {
            "status": "201 Created" if task else "202 Accepted",
            "location": f"Task/{message_id}"}}
        if task:
            entry["resource"] = task
        response_entries.append(entry)
    return FhirResponse({"resourceType": "Bundle", "type": f"{kind}-response",
                         "entry": response_entries})


def _entry_service_request(index: int, entry: Any) -> dict | FhirValidationError:
    where = f"Bundle.entry[{index}]"
    resource = entry.get("resource") if isinstance(entry, dict) else None
    method = ((entry or {}).get("request") or {}).get("method", "POST")
    if not isinstance(resource, dict) or resource.get("resourceType") != "ServiceRequest":
        return FhirValidationError([Issue(f"{where}.resource", "only ServiceRequest entries "
                                          "are accepted", "not-supported")])
    if method not in ("POST", "PUT"):
        return FhirValidationError([Issue(f"{where}.request.method",
                                          f"{method} is not supported", "not-supported")])
    return resource


def _prefixed(index: int, exc: FhirValidationError) -> list[Issue]:
    prefix = f"Bundle.entry[{index}]"
    return [i if i.location.startswith(prefix) else
            Issue(f"{prefix}.resource.{i.location}", i.message, i.code) for i in exc.issues]


@router.get("/fhir/Task/{task_id}")
async def read_task(task_id: str, api: FhirApiDep) -> Response:
    task = await asyncio.to_thread(api.task_for_message, task_id)
    if task is None:
        return fhir_error(None, 404, f"Task/{task_id} not found", "not-found")
    return FhirResponse(task)


@router.get("/fhir/Task")
async def search_tasks(request: Request, api: FhirApiDep) -> Response:
    focus = request.query_params.get("focus", "")
    unknown = set(request.query_params) - {"focus", "_format"}
    if not focus or unknown:
        return fhir_error([Issue("focus", "search Tasks by focus=ServiceRequest/{id}",
                                 "not-supported")], 400)
    sr_id = focus.rstrip("/").split("/")[-1]
    tasks = await asyncio.to_thread(api.tasks_for_service_request, sr_id)
    return FhirResponse({
        "resourceType": "Bundle", "type": "searchset", "total": len(tasks),
        "entry": [{"fullUrl": f"Task/{t['id']}", "resource": t, "search": {"mode": "match"}}
                  for t in tasks]})


CAPABILITY_STATEMENT: dict[str, Any] = {
    "resourceType": "CapabilityStatement",
    "status": "active",
    "date": "2026-11-28",
    "publisher": "radproto",
    "kind": "instance",
    "software": {"name": "radproto"},
    "implementation": {"description": "radproto imaging protocol suggestions"},
    "fhirVersion": "4.0.1",
    "format": ["application/fhir+json", "json"],
    "rest": [{
        "mode": "server",
        "resource": [
            {"type": "ServiceRequest",
             "interaction": [{"code": "create"}, {"code": "update"}]},
            {"type": "Task",
             "interaction": [{"code": "read"}, {"code": "update"}, {"code": "search-type"}],
             "searchParam": [{"name": "focus", "type": "reference"}]},
        ],
        "interaction": [{"code": "transaction"}, {"code": "batch"}],
        "operation": [{"name": "subscription-notification",
                       "definition": "http://hl7.org/fhir/uv/subscriptions-backport/"
                                     "StructureDefinition/backport-subscription-notification-r4"}],
    }],
}


# -- wiring --------------------------------------------------------------------------------


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
