"""The radiologist's verdict on a suggestion, recorded with Store.record_feedback.

    PUT  /fhir/Task/{id}   the EHR moves our Task to completed (accepted) or rejected, with
                           the protocol chosen instead as an output "chosen-protocol" (or in
                           statusReason); the same Task arriving in a subscription
                           notification is recorded the same way (adapter/subscriptions.py)
    POST /feedback         {"task_id" | "suggestion_id", "outcome", "protocol"} from our API

accepted: the suggestion stands. changed: another protocol was chosen (a completed Task whose
protocol differs, or a rejected one naming the protocol chosen). rejected: refused, no
protocol named. `radproto export-feedback` turns these into training rows.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from radproto.adapter import audit
from radproto.adapter.fhir_api import (
    TASK_STATUS,
    FhirApi,
    FhirApiDep,
    FhirResponse,
    fhir_error,
    read_resource,
    validation_response,
)
from radproto.adapter.fhir_client import OUTBOX_KIND as FHIR_OUTBOX_KIND
from radproto.adapter.fhir_client import verdict_payload
from radproto.adapter.fhir_writeback import fhir_settings_of
from radproto.adapter.pipeline import MllpWriteback
from radproto.adapter.store import (
    FEEDBACK_OUTCOMES,
    NotFound,
    OutboxItem,
    StoredSuggestion,
    StoreUnavailable,
)
from radproto.fhir_mappings.fhir import FhirValidationError, Issue, validate_resource
from radproto.fhir_mappings.fhir_bundle import FHIR_JSON
from radproto.fhir_mappings.fhir_task import (
    OUTPUT_TYPE_SYSTEM,
    TASK_IDENTIFIER_SYSTEM,
    protocol_concept,
)
from radproto.model.catalog import Catalog

log = logging.getLogger("radproto.feedback")
router = APIRouter(tags=["feedback"])


def actor_of(request: Request) -> str:
    """The authenticated caller as the security middleware recorded it, else "anonymous"."""
    principal = getattr(request.state, "principal", None) or request.scope.get("principal")
    return str(getattr(principal, "actor", "") or "anonymous")


def feedback_from_task(task: dict[str, Any], stored: StoredSuggestion, catalog: Catalog
                       ) -> tuple[str, str | None]:
    """(outcome, protocol chosen) from an updated Task; FhirValidationError names the element
    when the update says nothing we can record."""
    status = task.get("status")
    if status not in ("completed", "rejected"):
        raise FhirValidationError([Issue(
            "Task.status", "feedback is a Task moved to completed or rejected", "business-rule")])
    chosen, where = _chosen_protocol(task)
    protocol = None
    if chosen:
        protocol = catalog.resolve(chosen)
        if protocol is None:
            raise FhirValidationError([Issue(where, f"'{chosen}' is not a catalog protocol",
                                             "code-invalid")])
    suggested = stored.suggestion.protocol
    if status == "completed":
        if protocol is None or (protocol == suggested and not stored.suggestion.abstained):
            return "accepted", suggested if protocol is None else protocol
        return "changed", protocol
    return ("changed", protocol) if protocol and protocol != suggested else ("rejected", None)


def _chosen_protocol(task: dict[str, Any]) -> tuple[str | None, str]:
    for index, output in enumerate(task.get("output") or []):
        codes = {c.get("code") for c in (output.get("type") or {}).get("coding") or []
                 if c.get("system") == OUTPUT_TYPE_SYSTEM}
        if "chosen-protocol" in codes:
            return _concept_value(output.get("valueCodeableConcept") or {}), \
                f"Task.output[{index}].valueCodeableConcept"
    reason = task.get("statusReason") or {}
    if reason:
        return _concept_value(reason), "Task.statusReason"
    return None, "Task.output"


def _concept_value(concept: dict[str, Any]) -> str | None:
    for coding in concept.get("coding") or []:
        if coding.get("code"):
            return str(coding["code"])
    return concept.get("text") or None


def verdict_outbox(context: Any, stored: StoredSuggestion, outcome: str,
                   protocol: str | None, reason: str = "") -> list[OutboxItem]:
    """The write-backs of a verdict, queued with it in one transaction: where the order came
    by FHIR, our Task at the EHR moves to the verdict (fhir.writeback task / both); where it
    came by HL7 v2, the final protocol goes to the RIS (writeback_host) in the suggestion's
    own OMI / ORM form. Sync: call it from a thread."""
    store = context.store
    message = store.get_message(stored.message_id)
    order_row = store.get_order(stored.order_id)
    if message is None or order_row is None:
        return []
    items: list[OutboxItem] = []
    if message.content_type == FHIR_JSON:
        settings = fhir_settings_of(context)
        if settings.server_url and settings.writeback in ("task", "both"):
            status, business = TASK_STATUS[outcome]
            output = None
            if protocol:
                output = {"type": {"coding": [{
                    "system": OUTPUT_TYPE_SYSTEM, "code": "chosen-protocol",
                    "display": "Protocol chosen by the radiologist"}]},
                    "valueCodeableConcept": protocol_concept(protocol, context.catalog)}
            identifier = {"system": TASK_IDENTIFIER_SYSTEM, "value": message.id}
            items.append(OutboxItem(FHIR_OUTBOX_KIND, settings.server_url.rstrip("/"),
                                    verdict_payload(identifier, status=status,
                                                    business=str(business), output=output,
                                                    reason=reason), FHIR_JSON))
    mllp = MllpWriteback.from_settings(context.settings)
    if mllp is not None:
        items += mllp.verdict(message, order_row.order, stored.suggestion, context.catalog,
                              outcome=outcome, protocol=protocol, reason=reason)
    return items


async def record(api: FhirApi, stored: StoredSuggestion, outcome: str, protocol: str | None,
                 actor: str, *, reason: str = "") -> bool:
    """Record unless the suggestion already carries this verdict (a repeated PUT), with its
    write-backs (verdict_outbox) in the same transaction."""
    if stored.status == outcome:
        rows = await asyncio.to_thread(api.store.feedback_rows, suggestion_id=stored.id)
        if rows and rows[-1].protocol == protocol:
            return False
    outbox = await asyncio.to_thread(verdict_outbox, api.context, stored, outcome, protocol,
                                     reason)
    await asyncio.to_thread(api.store.record_feedback, stored.id, outcome=outcome,
                            protocol=protocol, actor=actor, reason=reason, outbox=outbox)
    if any(item.destination_kind == "mllp" for item in outbox) and api.context.relay:
        api.context.relay.wake()
    await asyncio.to_thread(
        audit.record_feedback, api.store, actor=actor, suggestion_id=stored.id, outcome=outcome,
        protocol=protocol, suggested_protocol=stored.suggestion.protocol,
        model_version=stored.suggestion.model_version,
        catalog_version=stored.suggestion.catalog_version,
    )
    log.info("feedback recorded", extra={"suggestion_id": stored.id, "outcome": outcome})
    return True


async def _suggestion_of_task(api: FhirApi, task_id: str) -> StoredSuggestion | None:
    rows = await asyncio.to_thread(api.store.suggestions_for, message_id=task_id)
    return rows[0] if rows else None


async def record_task_update(api: FhirApi, task: dict[str, Any], task_id: str, actor: str
                             ) -> bool | None:
    """Record the verdict an updated Task carries. None: no suggestion has this Task id;
    FhirValidationError: the update records nothing (names the element)."""
    stored = await _suggestion_of_task(api, task_id)
    if stored is None:
        return None
    outcome, protocol = feedback_from_task(task, stored, api.catalog)
    owner = (task.get("owner") or {}).get("reference", "")
    return await record(api, stored, outcome, protocol,
                        actor=actor + (f" for {owner}" if owner else ""))


def our_task_id(task: dict[str, Any]) -> str | None:
    """The suggestion id of a Task we wrote (the EHR gives it its own id)."""
    return next((i.get("value") for i in task.get("identifier") or []
                 if i.get("system") == TASK_IDENTIFIER_SYSTEM and i.get("value")), None)


@router.put("/fhir/Task/{task_id}")
async def update_task(task_id: str, request: Request, api: FhirApiDep) -> Response:
    try:
        task = await read_resource(request)
        validate_resource(task, "Task")
        if task.get("id") not in (None, task_id):
            raise FhirValidationError([Issue("Task.id", "the id differs from the URL")])
        if await record_task_update(api, task, task_id, actor_of(request)) is None:
            return fhir_error(None, 404, f"Task/{task_id} not found", "not-found")
    except FhirValidationError as exc:
        return validation_response(exc)
    except StoreUnavailable:
        return fhir_error(None, 503, "the store is unavailable; retry", "transient")
    return FhirResponse(await asyncio.to_thread(api.task_for_message, task_id))


@router.post("/feedback")
async def post_feedback(request: Request, api: FhirApiDep) -> Response:
    """{"task_id" or "suggestion_id", "outcome": accepted|rejected|changed, "protocol",
    "reason"}."""
    try:
        body = await request.json()
    except ValueError:
        return JSONResponse({"error": "the body is not JSON"}, status_code=400)
    if not isinstance(body, dict):
        return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
    outcome = body.get("outcome")
    if outcome not in FEEDBACK_OUTCOMES:
        return JSONResponse({"error": f"outcome must be one of {list(FEEDBACK_OUTCOMES)}",
                             "field": "outcome"}, status_code=422)
    chosen = body.get("protocol")
    protocol = api.catalog.resolve(str(chosen)) if chosen else None
    if chosen and protocol is None:
        return JSONResponse({"error": "not a catalog protocol", "field": "protocol"},
                            status_code=422)
    try:
        if body.get("suggestion_id"):
            stored = await asyncio.to_thread(api.store.get_suggestion, str(body["suggestion_id"]))
        else:
            stored = await _suggestion_of_task(api, str(body.get("task_id", "")))
        if stored is None:
            return JSONResponse({"error": "no such suggestion"}, status_code=404)
        if outcome == "changed" and protocol is None:
            return JSONResponse({"error": "a change names the protocol chosen",
                                 "field": "protocol"}, status_code=422)
        if outcome == "accepted":
            protocol = protocol or stored.suggestion.protocol
        reason = str(body.get("reason") or "")[:1000]
        recorded = await record(api, stored, outcome, protocol, actor_of(request),
                                reason=reason)
    except NotFound:
        return JSONResponse({"error": "no such suggestion"}, status_code=404)
    except StoreUnavailable:
        return JSONResponse({"error": "the store is unavailable; retry"}, status_code=503)
    return JSONResponse({"suggestion_id": stored.id, "outcome": outcome, "protocol": protocol,
                         "recorded": recorded}, status_code=201 if recorded else 200)
