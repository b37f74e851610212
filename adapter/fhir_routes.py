"""The FHIR R4 intake routes (application/fhir+json).

    POST /fhir/ServiceRequest        store, classify, answer 201 + the Task (or 202 + Location)
    PUT  /fhir/ServiceRequest/{id}   the same for an updated order
    POST /fhir                       a transaction or batch Bundle of ServiceRequests
    GET  /fhir/Task/{id}             a suggestion as a Task (id = the stored message id)
    GET  /fhir/Task?focus=ServiceRequest/{id}
    GET  /fhir/metadata              the CapabilityStatement (fhir_capability.py)

A ServiceRequest is stored as a message (content type application/fhir+json: a collection
Bundle of the request and the Patient / Conditions fetched for it) and classified by the
worker through the pipeline like any HL7 message (pipeline.parse_fhir, over
fhir_mappings/fhir_bundle.py). The API object is fhir_api.py's; write-back fhir_writeback.py's.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from radproto.adapter.fhir_api import (
    FhirApi,
    FhirApiDep,
    FhirResponse,
    fhir_error,
    read_resource,
    validation_response,
)
from radproto.adapter.fhir_capability import CAPABILITY_STATEMENT
from radproto.adapter.store import (
    StoreUnavailable,
)
from radproto.fhir_mappings.fhir import (
    FhirValidationError,
    Issue,
    operation_outcome,
    service_request_to_order,
    validate_resource,
)

router = APIRouter(tags=["fhir"])


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
