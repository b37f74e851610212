"""CDS Hooks services: order-select and order-sign suggest the protocol of a draft imaging order.

    GET  /cds-services                          discovery
    POST /cds-services/radproto-order-select    the clinician picks an order
    POST /cds-services/radproto-order-sign      the clinician is about to sign

Each draft ServiceRequest (of context.selections for order-select, all of them for
order-sign) gets one card: the suggested protocol, its confidence and the top 3, and a
suggestion whose `update` action returns the draft with the protocol in orderDetail and an
AI-labelled note. The model runs within `cds_timeout_s`; an ordering screen gets no card
rather than a late one. Nothing is stored: drafts change with every click. Suggestions are
cached by draft content, so order-sign after order-select on an unchanged draft answers at
once, and a scoring that ran past the budget still serves the next call.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from radproto.adapter.context import ContextDep
from radproto.adapter.fhir_api import FhirApi, FhirApiDep
from radproto.fhir_mappings.fhir import (
    FhirValidationError,
    service_request_to_order,
    suggestion_to_annotation,
)
from radproto.fhir_mappings.fhir_task import TOP_K, confidence_extension, protocol_concept
from radproto.model.fast_batching import DynamicBatcher
from radproto.model.order import Order, OrderSource
from radproto.model.suggestion import Suggestion

log = logging.getLogger("radproto.cds")
router = APIRouter(tags=["cds-hooks"])

SERVICES: dict[str, dict[str, Any]] = {
    "radproto-order-select": {
        "hook": "order-select",
        "id": "radproto-order-select",
        "title": "Imaging protocol suggestion",
        "description": "Suggests the imaging protocol for the selected draft imaging order.",
        "prefetch": {"patient": "Patient/{{context.patientId}}"},
    },
    "radproto-order-sign": {
        "hook": "order-sign",
        "id": "radproto-order-sign",
        "title": "Imaging protocol suggestion at signing",
        "description": "Suggests the imaging protocol for each draft imaging order.",
        "prefetch": {"patient": "Patient/{{context.patientId}}"},
    },
}
SOURCE = {"label": "radproto (AI protocol suggestion)",
          "topic": {"system": "urn:radproto:cds", "code": "protocol-suggestion",
                    "display": "Imaging protocol suggestion"}}


class SuggestionCache:
    """A small LRU of suggestions by (model version, draft order content); thread-safe."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._items: OrderedDict[str, Suggestion] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(model_version: str, sr: dict[str, Any], patient: dict[str, Any] | None) -> str:
        text = json.dumps([model_version, sr, patient], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, key: str) -> Suggestion | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: str, suggestion: Suggestion) -> None:
        with self._lock:
            self._items[key] = suggestion
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


def score_into_cache(batcher: DynamicBatcher, cache: SuggestionCache, keys: Sequence[str],
                     orders: Sequence[Order]) -> None:
    """Run the model (in a worker thread) and keep what it says, even for a caller that has
    stopped waiting. Drafts of concurrent calls share one batch (the batcher's)."""
    futures = [batcher.submit(order) for order in orders]
    for key, future in zip(keys, futures, strict=True):
        cache.put(key, future.result())


def draft_requests(hook: str, context: dict[str, Any]) -> list[dict[str, Any]]:
    """The draft ServiceRequests a hook call is about."""
    bundle = context.get("draftOrders") or {}
    resources = [e.get("resource") for e in bundle.get("entry") or []
                 if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
    requests = [r for r in resources if r.get("resourceType") == "ServiceRequest"]
    if hook == "order-select" and context.get("selections"):
        selected = set(context["selections"])
        requests = [r for r in requests if f"ServiceRequest/{r.get('id')}" in selected]
    return requests


def card_for(sr: dict[str, Any], suggestion: Suggestion, api: FhirApi) -> dict[str, Any]:
    top = suggestion.top(TOP_K)
    rows = "\n".join(f"| {i} | {s.protocol} | {s.probability:.0%} |"
                     for i, s in enumerate(top, start=1))
    detail = ("| # | Protocol | Confidence |\n|---|---|---|\n" + rows +
              f"\n\nModel {suggestion.model_version}; AI-generated, review before use.")
    card: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "indicator": "info",
        "source": SOURCE,
        "detail": detail,
    }
    if suggestion.abstained:
        card["summary"] = "No confident protocol suggestion; top candidates listed"
        return card
    card["summary"] = (f"Suggested protocol: {suggestion.protocol} "
                       f"({suggestion.confidence:.0%})")[:140]
    updated = copy.deepcopy(sr)
    concept = protocol_concept(suggestion.protocol, api.catalog)
    concept["extension"] = [confidence_extension(suggestion.confidence)]
    updated["orderDetail"] = [*(updated.get("orderDetail") or []), concept]
    updated["note"] = [*(updated.get("note") or []), suggestion_to_annotation(suggestion)]
    card["selectionBehavior"] = "at-most-one"
    card["suggestions"] = [{
        "label": f"Apply protocol {suggestion.protocol}"[:80],
        "uuid": str(uuid.uuid4()),
        "isRecommended": True,
        "actions": [{"type": "update",
                     "description": f"Add protocol {suggestion.protocol} to the order",
                     "resource": updated}],
    }]
    return card


@router.get("/cds-services")
async def discovery() -> JSONResponse:
    return JSONResponse({"services": list(SERVICES.values())})


@router.post("/cds-services/{service_id}")
async def call_service(service_id: str, request: Request, api: FhirApiDep,
                       ctx: ContextDep) -> Response:
    started = time.perf_counter()
    service = SERVICES.get(service_id)
    if service is None:
        return JSONResponse({"error": f"no CDS service '{service_id}'"}, status_code=404)
    try:
        body = await request.json()
    except ValueError:
        return JSONResponse({"error": "the body is not JSON"}, status_code=400)
    if not isinstance(body, dict) or not isinstance(body.get("context"), dict):
        return JSONResponse({"error": "a hook request needs a context", "field": "context"},
                            status_code=400)
    if body.get("hook") != service["hook"] or not body.get("hookInstance"):
        return JSONResponse({"error": f"this service answers '{service['hook']}' calls "
                             "with a hookInstance", "field": "hook"}, status_code=400)
    classifier = api.classifier
    if classifier is None:
        return JSONResponse({"error": "the model is loading"}, status_code=503)
    context = body["context"]
    patient = (body.get("prefetch") or {}).get("patient")
    requests, orders = [], []
    for sr in draft_requests(service["hook"], context):
        try:
            orders.append(_order(sr, patient if isinstance(patient, dict) else None))
            requests.append(sr)
        except FhirValidationError as exc:  # a half-typed draft: no card for it
            log.info("cds draft not mapped: %s", exc.issues[0].location)
    if ctx.cds_cache is None:
        ctx.cds_cache = SuggestionCache()
    cache = ctx.cds_cache
    patient_key = patient if isinstance(patient, dict) else None
    keys = [cache.key(str(classifier.model_version), sr, patient_key) for sr in requests]
    missing = [(k, o) for k, o in zip(keys, orders, strict=True) if cache.get(k) is None]
    if missing:
        work = asyncio.get_running_loop().run_in_executor(
            None, score_into_cache, api.batcher(classifier), cache, [k for k, _ in missing],
            [o for _, o in missing])
        work.add_done_callback(_log_failure)
        try:
            await asyncio.wait_for(asyncio.shield(work), api.settings.cds_timeout_s)
        except TimeoutError:
            log.warning("cds %s over budget (%.1fs): cards for cached drafts only",
                        service_id, api.settings.cds_timeout_s)
    cards = [card_for(sr, found, api) for sr, key in zip(requests, keys, strict=True)
             if (found := cache.get(key)) is not None]
    log.info("cds %s answered cards=%s ms=%.1f", service_id, len(cards),
             (time.perf_counter() - started) * 1000)
    return JSONResponse({"cards": cards})


def _log_failure(future: asyncio.Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("cds scoring failed: %s", type(future.exception()).__name__)


def _order(sr: dict[str, Any], patient: dict[str, Any] | None) -> Order:
    # Drafts are drafts: status "draft" and intent "plan"/"proposal" are what CDS Hooks sends.
    return service_request_to_order(sr, patient=patient, source=OrderSource.CDS_HOOKS)
