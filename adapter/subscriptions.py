"""rest-hook notifications of the Subscriptions R5 Backport IG (FHIR R4).

    POST /fhir/$subscription-notification   (the Subscription's channel.endpoint)

A notification is a `history` Bundle whose first entry is the subscription status (a
Parameters resource in R4; an R4B SubscriptionStatus is read too): handshake, heartbeat,
event-notification (or query-event). Payloads: full-resource (the ServiceRequests are in the
Bundle), id-only (only references: each is read from the EHR) or empty (nothing: the orders
are searched for). Event numbers are tracked per subscription; a number skipped (an event
lost on the way, or a restart with no memory of the last one) triggers a search of the EHR
for orders updated since the last event seen, so no order is missed. Re-ingesting an order
already stored is harmless: its message deduplicates.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from radproto.adapter.context import ContextDep, ServiceContext
from radproto.adapter.fhir_api import (
    FhirApi,
    FhirResponse,
    fhir_api,
    fhir_error,
    read_resource,
    validation_response,
)
from radproto.adapter.fhir_client import FhirClientError
from radproto.adapter.store import StoreUnavailable
from radproto.fhir_mappings.fhir import (
    FhirValidationError,
    Issue,
    operation_outcome,
    relative_reference,
)

log = logging.getLogger("radproto.subscriptions")
router = APIRouter(tags=["fhir-subscriptions"])
NOTIFICATION_TYPES = frozenset({"handshake", "heartbeat", "event-notification",
                                "query-status", "query-event"})


@dataclass
class Event:
    number: int | None
    timestamp: str = ""
    focus: str = ""


@dataclass
class Notification:
    subscription: str
    type: str
    events_since_start: int | None
    events: list[Event] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)  # full-resource payload
    references: list[str] = field(default_factory=list)  # id-only payload


@dataclass
class SubscriptionState:
    last_event: int | None = None
    last_timestamp: str = ""


def parse_notification(bundle: dict[str, Any]) -> Notification:
    """The status and payload of a notification Bundle (FhirValidationError names what is
    wrong)."""
    if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "history":
        raise FhirValidationError([Issue("Bundle.type", "a notification is a history Bundle",
                                         "invalid")])
    entries = bundle.get("entry") or []
    status = (entries[0] or {}).get("resource") if entries else None
    if not isinstance(status, dict) or status.get("resourceType") not in (
            "Parameters", "SubscriptionStatus"):
        raise FhirValidationError([Issue("Bundle.entry[0].resource", "the first entry must be "
                                         "the subscription status", "required")])
    if status["resourceType"] == "Parameters":
        note = _from_parameters(status)
    else:
        note = _from_subscription_status(status)
    if note.type not in NOTIFICATION_TYPES:
        raise FhirValidationError([Issue("Bundle.entry[0].resource.parameter:type",
                                         f"unknown notification type '{note.type}'",
                                         "code-invalid")])
    for entry in entries[1:]:
        resource = entry.get("resource")
        if isinstance(resource, dict):
            note.resources.append(resource)
        elif entry.get("fullUrl"):
            note.references.append(str(entry["fullUrl"]))
    return note


def _value(param: dict[str, Any]) -> Any:
    return next((v for k, v in param.items() if k.startswith("value")), None)


def _int(value: Any) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def _from_parameters(params: dict[str, Any]) -> Notification:
    top: dict[str, Any] = {}
    events = []
    for param in params.get("parameter") or []:
        name = param.get("name")
        if name == "notification-event":
            parts = {p.get("name"): _value(p) for p in param.get("part") or []}
            focus = parts.get("focus") or {}
            events.append(Event(_int(parts.get("event-number")), str(parts.get("timestamp") or ""),
                                focus.get("reference", "") if isinstance(focus, dict) else ""))
        else:
            top[name] = _value(param)
    subscription = top.get("subscription") or {}
    return Notification(
        subscription=subscription.get("reference", "") if isinstance(subscription, dict) else "",
        type=str(top.get("type") or ""),
        events_since_start=_int(top.get("events-since-subscription-start")),
        events=events)


def _from_subscription_status(status: dict[str, Any]) -> Notification:
    events = [Event(_int(e.get("eventNumber")), str(e.get("timestamp") or ""),
                    (e.get("focus") or {}).get("reference", ""))
              for e in status.get("notificationEvent") or []]
    return Notification(subscription=(status.get("subscription") or {}).get("reference", ""),
                        type=str(status.get("type") or ""),
                        events_since_start=_int(status.get("eventsSinceSubscriptionStart")),
                        events=events)


class SubscriptionHandler:
    """Per-subscription event tracking and the ingest of what each notification names."""

    def __init__(self, api: FhirApi) -> None:
        self.api = api
        self.states: dict[str, SubscriptionState] = {}
        self._lock = asyncio.Lock()
        self.requeries = 0  # how often a gap sent us searching (tests, metrics)

    async def handle(self, note: Notification) -> dict[str, Any]:
        async with self._lock:  # one notification at a time keeps the event count exact
            state = await self._state(note.subscription)
            ingested = 0
            if note.type == "handshake":
                if state.last_event is None:
                    state.last_event = note.events_since_start or 0
                    await self._save(note.subscription, state)
                return {"type": note.type, "ingested": 0}
            numbers = [e.number for e in note.events if e.number is not None]
            newest = max(numbers, default=note.events_since_start)
            gap = self._gap(state, numbers, note.events_since_start)
            if note.type in ("event-notification", "query-event"):
                ingested += await self._ingest_payload(note)
            if gap or (note.type == "event-notification" and not note.resources
                       and not note.references and not any(e.focus for e in note.events)):
                ingested += await self._requery(state)  # a gap, or an empty payload
            if newest is not None:
                state.last_event = max(state.last_event or 0, newest)
            stamps = [e.timestamp for e in note.events if e.timestamp]
            if stamps:
                state.last_timestamp = max(stamps)
            await self._save(note.subscription, state)
            return {"type": note.type, "ingested": ingested, "gap": gap}

    async def _state(self, subscription: str) -> SubscriptionState:
        """This process's state of a subscription; on first sight, what the store kept."""
        state = self.states.get(subscription)
        if state is None:
            saved = await asyncio.to_thread(self.api.context.store.subscription_state,
                                            subscription)
            state = self.states[subscription] = (
                SubscriptionState(*saved) if saved else SubscriptionState())
        return state

    async def _save(self, subscription: str, state: SubscriptionState) -> None:
        await asyncio.to_thread(self.api.context.store.save_subscription_state, subscription,
                                state.last_event, state.last_timestamp)

    @staticmethod
    def _gap(state: SubscriptionState, numbers: list[int], since_start: int | None) -> bool:
        if state.last_event is None:
            # Nothing remembered (first contact; the store keeps it across restarts): only
            # event 1 is certainly whole.
            first = min(numbers, default=since_start)
            return first is not None and first > 1
        if numbers:
            return min(numbers) > state.last_event + 1
        return since_start is not None and since_start > state.last_event

    async def _ingest_payload(self, note: Notification) -> int:
        count = 0
        for resource in note.resources:
            if resource.get("resourceType") == "ServiceRequest":
                await self.api.ingest(resource)
                count += 1
            elif resource.get("resourceType") == "Task":
                await self._task_update(resource)
        refs = list(note.references) if not note.resources else []
        refs += [e.focus for e in note.events
                 if e.focus and not note.resources and e.focus not in refs]
        for ref in refs:
            if "ServiceRequest/" not in ref:
                continue
            await self.api.ingest(await self._ehr().read(relative_reference(ref)))
            count += 1
        return count

    async def _task_update(self, task: dict[str, Any]) -> None:
        """Our Task moved on by the EHR (completed / rejected): the radiologist's verdict."""
        from radproto.adapter.feedback import our_task_id, record_task_update

        task_id = our_task_id(task)
        if task_id and task.get("status") in ("completed", "rejected"):
            await record_task_update(self.api, task, task_id, actor="fhir-subscription")

    async def _requery(self, state: SubscriptionState) -> int:
        self.requeries += 1
        since = state.last_timestamp or (datetime.now(UTC) - timedelta(
            seconds=self.api.settings.subscription_lookback_s)).isoformat()
        params = {**self.api.settings.subscription_criteria, "_lastUpdated": f"ge{since}"}
        found = await self._ehr().search("ServiceRequest", params)
        for sr in found:
            await self.api.ingest(sr)
        log.info("subscription re-query found %s orders", len(found))
        return len(found)

    def _ehr(self):
        if self.api.ehr is None:
            raise FhirValidationError([Issue("Bundle", "this notification needs the EHR's "
                                             "FHIR server (fhir.server_url is not set)",
                                             "not-supported")])
        return self.api.ehr


def handler_of(ctx: ServiceContext) -> SubscriptionHandler:
    """This process's subscription handler (made on first use)."""
    if ctx.subscriptions is None:
        ctx.subscriptions = SubscriptionHandler(fhir_api(ctx))
    return ctx.subscriptions


@router.post("/fhir/$subscription-notification")
async def notification(request: Request, ctx: ContextDep) -> Response:
    try:
        note = parse_notification(await read_resource(request))
        result = await handler_of(ctx).handle(note)
    except FhirValidationError as exc:
        return validation_response(exc)
    except (FhirClientError, StoreUnavailable) as exc:
        # Not processed, and the event count not advanced: the sender's retry, or the gap
        # the next notification shows, brings the orders back.
        log.warning("notification not processed: %s", type(exc).__name__)
        return fhir_error(None, 503, "the order could not be fetched or stored; retry",
                          "transient")
    text = f"{result['type']}: {result['ingested']} orders"
    return FhirResponse(operation_outcome(None, severity="information", code="informational",
                                          text=text))
