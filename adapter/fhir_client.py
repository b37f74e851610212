"""Write-back to the EHR's FHIR server over httpx (async), errors translated at the edge.

Every write is a conditional create (`If-None-Exist` on the Task's identifier, the
Provenance's target), so a retry after a lost response never duplicates a resource. Transient
failures (connection errors, timeouts, 429, 5xx) are retried with exponential backoff and
jitter; what still fails stays in the store's outbox (adapter/outbox.py, `FhirSender`) until
the server is back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from radproto.adapter.smart_auth import SmartAuthError
from radproto.fhir_mappings.fhir import relative_reference
from radproto.fhir_mappings.fhir_task import business_status, suggestion_to_provenance
from radproto.model.errors import InterfaceError
from radproto.model.suggestion import Suggestion

log = logging.getLogger("radproto.fhir_client")

FHIR_JSON = "application/fhir+json"
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF_S = 0.2
MAX_BACKOFF_S = 10.0
OUTBOX_KIND = "fhir"


class FhirSettings(BaseModel):
    """The FHIR side's settings (a `fhir:` section of the service config)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, not a no-op

    #: The EHR's FHIR base URL: where Patients / Conditions / id-only ServiceRequests are read
    #: and Tasks are written back. Empty: no reads, no write-back.
    server_url: str = ""
    writeback: Literal["task", "note", "both", "none"] = Field(
        default="task", description="Task + Provenance, an Annotation on the order, or both")
    sync_wait_s: float = Field(default=10.0, ge=0,
                               description="how long POST waits for the Task before a 202")
    cds_timeout_s: float = Field(default=3.0, gt=0,
                                 description="CDS Hooks budget: no card rather than a late one")
    cds_batch_wait_ms: float = Field(
        default=5.0, ge=0, le=1000,
        description="how long a CDS Hooks draft waits for concurrent ones to share its pass")
    client_timeout_s: float = Field(default=10.0, gt=0)
    client_retries: int = Field(default=3, ge=0)
    smart_client_id: str = ""  # set: SMART Backend Services authentication
    smart_private_key_file: Path | None = None
    smart_key_id: str = ""
    smart_algorithm: Literal["RS384", "ES384"] = "RS384"
    smart_scope: str = ("system/Task.write system/Provenance.write system/ServiceRequest.read "
                        "system/ServiceRequest.write system/Patient.read system/Condition.read")
    #: Search that finds the orders a subscription notifies about, re-run after a gap.
    subscription_criteria: dict[str, str] = Field(default_factory=lambda: {"status": "active"})
    subscription_lookback_s: float = Field(default=86400.0, gt=0)


class FhirClientError(InterfaceError):
    """A FHIR request failed. `retryable` tells the outbox whether to try again later."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False,
                 outcome: dict | None = None):
        self.status = status
        self.retryable = retryable
        self.outcome = outcome
        super().__init__(message)


@dataclass(frozen=True)
class WriteBackResult:
    task_ref: str  # "Task/<server id>"
    provenance_ref: str
    task_created: bool  # False: the server already had it (a retry after a lost response)
    annotated: bool = False


def backoff_delay(attempt: int, base: float = DEFAULT_BACKOFF_S, cap: float = MAX_BACKOFF_S
                  ) -> float:
    """Full-jitter exponential backoff: a random delay in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0, min(cap, base * (2 ** attempt)))


class FhirClient:
    """An async FHIR R4 client for one server (base URL), with retries."""

    def __init__(
        self,
        base_url: str,
        *,
        auth: httpx.Auth | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF_S,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self._http = httpx.AsyncClient(
            base_url=self.base_url + "/", auth=auth, transport=transport, timeout=timeout,
            headers={"Accept": FHIR_JSON})

    async def __aenter__(self) -> FhirClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- the edge: one request, retried, errors translated -------------------------------

    async def request(self, method: str, url: str, *, json_body: Any = None,
                      headers: dict[str, str] | None = None,
                      params: dict[str, str] | None = None) -> httpx.Response:
        """A request with retries on transient failures; raises FhirClientError otherwise."""
        send_headers = dict(headers or {})
        content = None
        if json_body is not None:
            send_headers["Content-Type"] = FHIR_JSON
            content = json.dumps(json_body).encode()
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = await self._http.request(method, self._relative(url),
                                                    content=content, headers=send_headers,
                                                    params=params)
            except SmartAuthError as exc:  # no token: nothing sent; the outbox tries later
                raise FhirClientError(f"{method} {url}: {exc}", status=exc.status,
                                      retryable=True) from exc
            except httpx.TransportError as exc:  # refused, reset, timed out: try again
                if last:
                    raise FhirClientError(f"{method} {url}: {type(exc).__name__}",
                                          retryable=True) from exc
                await asyncio.sleep(backoff_delay(attempt, self.backoff))
                continue
            if response.status_code < 400:
                return response
            retryable = response.status_code in RETRYABLE_STATUS
            if not retryable or last:
                raise FhirClientError(
                    f"{method} {url}: HTTP {response.status_code}",
                    status=response.status_code, retryable=retryable,
                    outcome=_json_or_none(response))
            await asyncio.sleep(_retry_after(response) or backoff_delay(attempt, self.backoff))
        raise AssertionError("unreachable")

    def _relative(self, url: str) -> str:
        if url.startswith(self.base_url + "/"):
            return url[len(self.base_url) + 1:]
        return url.lstrip("/")

    # -- FHIR interactions ----------------------------------------------------------------

    async def read(self, reference: str) -> dict[str, Any]:
        """A resource by reference ("ServiceRequest/1" or an absolute URL on this server)."""
        return (await self.request("GET", reference)).json()

    async def search(self, resource_type: str, params: dict[str, str], *,
                     max_pages: int = 20) -> list[dict[str, Any]]:
        """The matching resources of `resource_type` (includes left out), following next links."""
        resources: list[dict[str, Any]] = []
        response = await self.request("GET", resource_type, params=params)
        for _ in range(max_pages):
            bundle = response.json()
            resources += [
                e["resource"] for e in bundle.get("entry") or []
                if e.get("resource", {}).get("resourceType") == resource_type
                and (e.get("search") or {}).get("mode", "match") == "match"
            ]
            link = next((x["url"] for x in bundle.get("link") or [] if x.get("relation") == "next"),
                        None)
            if not link:
                break
            response = await self.request("GET", link)
        return resources

    async def conditional_create(self, resource: dict[str, Any], if_none_exist: str
                                 ) -> tuple[dict[str, Any], bool]:
        """POST with If-None-Exist: (the resource as stored, whether this call created it)."""
        payload = {k: v for k, v in resource.items() if k != "id"}  # the server assigns ids
        response = await self.request("POST", resource["resourceType"], json_body=payload,
                                      headers={"If-None-Exist": if_none_exist,
                                               "Prefer": "return=representation"})
        created = response.status_code == 201
        body = _json_or_none(response)
        if not body or "id" not in body:  # return=minimal servers: read the Location
            body = await self.read(relative_reference(response.headers.get("location", "")))
        return body, created

    async def write_suggestion(
        self,
        task: dict[str, Any] | None,
        suggestion: Suggestion,
        *,
        service_request_ref: str,
        annotation: dict[str, Any] | None = None,
    ) -> WriteBackResult:
        """The Task, then its Provenance (pointing at the Task's server id), then optionally
        the Annotation appended to the ServiceRequest's notes. Safe to repeat."""
        task_ref = provenance_ref = ""
        created = annotated = False
        if task is not None:
            identifier = task["identifier"][0]
            stored, created = await self.conditional_create(
                task, f"identifier={identifier['system']}|{identifier['value']}")
            task_ref = f"Task/{stored['id']}"
            provenance = suggestion_to_provenance(suggestion, target_ref=task_ref,
                                                  service_request_ref=service_request_ref)
            prov, _ = await self.conditional_create(provenance, f"target={task_ref}")
            provenance_ref = f"Provenance/{prov['id']}"
        if annotation is not None and service_request_ref:
            annotated = await self.append_note(service_request_ref, annotation)
        log.info("fhir write-back done task=%s created=%s annotated=%s", task_ref, created,
                 annotated)
        return WriteBackResult(task_ref, provenance_ref, created, annotated)

    async def append_note(self, service_request_ref: str, annotation: dict[str, Any],
                          *, attempts: int = 3) -> bool:
        """Append `annotation` to ServiceRequest.note unless already there (version-aware PUT)."""

        async def fetch() -> dict[str, Any]:
            return await self.read(service_request_ref)

        def add_note(sr: dict[str, Any]) -> bool:
            notes = sr.get("note") or []
            if any(n.get("authorString") == annotation.get("authorString")
                   and n.get("time") == annotation.get("time") for n in notes):
                return False  # a retry: the note is there already
            sr["note"] = [*notes, annotation]
            return True

        _, written = await self._update(fetch, add_note, attempts=attempts,
                                        what=f"{service_request_ref} (note)")
        return written

    async def retract_task(self, identifier: dict[str, Any], business: str, *,
                           attempts: int = 3) -> str:
        """Mark our Task with this identifier cancelled, businessStatus `business`
        ("withdrawn": the order was cancelled; "superseded": a newer suggestion replaced it),
        so the worklist stops offering it. Version-aware PUT; "" when the server holds no
        such Task. Safe to repeat."""
        query = {"identifier": f"{identifier['system']}|{identifier['value']}"}

        async def fetch() -> dict[str, Any] | None:
            found = await self.search("Task", query)
            return found[0] if found else None

        def cancel(task: dict[str, Any]) -> bool:
            if task.get("status") == "cancelled":
                return False  # a retry: done already
            task["status"] = "cancelled"
            task["businessStatus"] = business_status(business, f"Suggestion {business}")
            return True

        task, _ = await self._update(fetch, cancel, attempts=attempts,
                                     what=f"Task {query['identifier']}")
        return f"Task/{task['id']}" if task else ""

    async def record_verdict(self, identifier: dict[str, Any], verdict: dict[str, Any], *,
                             attempts: int = 3) -> str:
        """Move our Task with this identifier to the radiologist's verdict (`verdict_payload`:
        status completed / rejected, businessStatus accepted / changed / rejected, the
        protocol chosen as an output, a rejection's reason as statusReason), so the EHR's
        worklist shows the decision. Version-aware PUT; "" when the server holds no such
        Task. Safe to repeat."""
        query = {"identifier": f"{identifier['system']}|{identifier['value']}"}
        output = verdict.get("output")
        code = (output or {}).get("type", {}).get("coding", [{}])[0].get("code")

        async def fetch() -> dict[str, Any] | None:
            found = await self.search("Task", query)
            return found[0] if found else None

        def decide(task: dict[str, Any]) -> bool:
            outputs = [o for o in task.get("output") or []
                       if not any(c.get("code") == code
                                  for c in (o.get("type") or {}).get("coding") or [])]
            if output:
                outputs.append(output)
            changed = {"status": verdict["status"],
                       "businessStatus": business_status(verdict["business"],
                                                         f"Suggestion {verdict['business']}"),
                       "output": outputs}
            if verdict.get("reason"):
                changed["statusReason"] = {"text": verdict["reason"]}
            if all(task.get(k) == v for k, v in changed.items()):
                return False  # a retry: done already
            task.update(changed)
            if not outputs:
                task.pop("output")
            return True

        task, _ = await self._update(fetch, decide, attempts=attempts,
                                     what=f"Task {query['identifier']} (verdict)")
        return f"Task/{task['id']}" if task else ""

    async def _update(self, fetch: Callable[[], Awaitable[dict[str, Any] | None]],
                      change: Callable[[dict[str, Any]], bool], *, attempts: int,
                      what: str) -> tuple[dict[str, Any] | None, bool]:
        """Read, change, PUT with If-Match on the version read; on a version conflict
        (someone else wrote first) read again. `change` edits in place and returns False
        when nothing needs writing. Returns (the resource read, None if `fetch` found
        none; whether it was written)."""
        for _ in range(attempts):
            resource = await fetch()
            if resource is None or not change(resource):
                return resource, False
            version = (resource.get("meta") or {}).get("versionId")
            headers = {"If-Match": f'W/"{version}"'} if version else {}
            try:
                await self.request("PUT", f"{resource['resourceType']}/{resource['id']}",
                                   json_body=resource, headers=headers)
                return resource, True
            except FhirClientError as exc:
                if exc.status not in (409, 412):
                    raise
        raise FhirClientError(f"{what}: the update kept conflicting", status=412,
                              retryable=True)


# -- the outbox relay ---------------------------------------------------------------------


def outbox_payload(task: dict[str, Any] | None, suggestion: Suggestion, *, service_request_ref: str,
                   annotation: dict[str, Any] | None = None) -> str:
    """What an outbox row of kind "fhir" holds: everything write_suggestion needs."""
    return json.dumps({"task": task, "suggestion": suggestion.model_dump(mode="json"),
                       "service_request_ref": service_request_ref, "annotation": annotation})


def retraction_payload(sent_payload: str, business: str) -> str | None:
    """The outbox payload that cancels the Task an already-sent write-back created (None:
    that write-back held no Task, e.g. note-only)."""
    task = json.loads(sent_payload).get("task")
    if not task:
        return None
    return json.dumps({"retract": {"identifier": task["identifier"][0], "business": business}})


def verdict_payload(identifier: dict[str, Any], *, status: str, business: str,
                    output: dict[str, Any] | None, reason: str = "") -> str:
    """The outbox payload that moves our Task at the EHR to a radiologist's verdict."""
    return json.dumps({"verdict": {"identifier": identifier, "status": status,
                                   "business": business, "output": output,
                                   "reason": reason}})


def _json_or_none(response: httpx.Response) -> dict | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return min(float(value), MAX_BACKOFF_S)
    except ValueError:
        return None

