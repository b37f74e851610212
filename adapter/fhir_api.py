"""The FHIR side's shared object and HTTP helpers. `FhirApi` holds what the FHIR routers
(fhir_routes.py, feedback.py, subscriptions.py, cds_hooks.py) share: the service context, the
FHIR settings, the EHR client; it ingests a ServiceRequest (validate, fetch the Patient and
Conditions, store) and renders stored suggestions as Tasks. A route declares `api: FhirApiDep`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
import uuid
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from radproto.adapter.context import ContextDep
from radproto.adapter.fhir_client import (
    FhirClient,
    FhirSettings,
)
from radproto.adapter.store import (
    StoredSuggestion,
)
from radproto.fhir_mappings.fhir import (
    ANNOTATION_AUTHOR,
    FhirValidationError,
    Issue,
    operation_outcome,
    references_to_fetch,
    service_request_to_order,
    suggestion_to_task,
    validate_resource,
)
from radproto.fhir_mappings.fhir_bundle import (
    FHIR_JSON,
    order_refs,
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


def content_digest(sr: dict[str, Any]) -> str:
    """A hash of what the order says. Server bookkeeping (meta, narrative) and the notes we
    wrote ourselves are left out: our own write-back, notified back to us as an update of the
    ServiceRequest, must not be classified again (and written back again, and again)."""
    content = {k: v for k, v in sr.items() if k not in ("meta", "text")}
    content["note"] = [n for n in sr.get("note") or []
                       if n.get("authorString") != ANNOTATION_AUTHOR]
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


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


def fhir_api(ctx: ContextDep) -> FhirApi:
    """The FHIR API object of the service (http_app.create_app builds it)."""
    if ctx.fhir is None:
        raise RuntimeError("the FHIR part is not wired (http_app.create_app parts)")
    return ctx.fhir


#: Declare `api: FhirApiDep` in a route to reach the FHIR API object.
FhirApiDep = Annotated[FhirApi, Depends(fhir_api)]
