"""The radiologists' worklist: a page served by the adapter itself (no CDN: hospitals run
offline) where suggestions get their verdict.

    GET  /worklist               the queue (server-rendered; filters: status, modality, source)
    GET  /worklist/items         the queue as JSON: every row's id, and the rows not yet
                                 `known` to the caller in full (the page polls it)
    POST /worklist/verdict       {"suggestion_id", "outcome": accepted|changed|rejected,
                                 "protocol", "reason"}: recorded by feedback.record (the same
                                 transaction and write-backs as the FHIR feedback)
    GET  /worklist/login         sign-in page (an API key or a JWT of a configured issuer)
    POST /worklist/login         sign in: the session cookie (adapter/security/sessions.py)
    POST /worklist/logout        sign out
    GET  /worklist/static/...    the page's CSS and JavaScript

Roles radiologist or admin (the policy table in adapter/security/policy.py). The page and its data
routes accept the session cookie or the API's own credentials (X-API-Key, a bearer JWT); a
POST made with the cookie must carry the session's CSRF token (X-CSRF-Token). Every row
whose clinical text a response carries is an audit event (who, which order, when), written
before the response goes out: no audit, no data (503).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import jinja2
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from radproto.adapter import audit
from radproto.adapter.context import ServiceContext
from radproto.adapter.feedback import actor_of, record
from radproto.adapter.fhir_api import FhirApi
from radproto.adapter.security import AuthError, Principal, PrincipalDep
from radproto.adapter.security.sessions import CSRF_HEADER, SESSION_AUTH, SessionManager
from radproto.adapter.store import NotFound, StoreUnavailable, WorklistRow
from radproto.model.catalog import Catalog

log = logging.getLogger("radproto.worklist")

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
TEMPLATES_DIR = HERE / "templates"
#: What the page shows, and the store statuses behind it.
STATUSES: tuple[str, ...] = ("suggested", "abstained", "accepted", "changed", "rejected")
DEFAULT_STATUSES: tuple[str, ...] = ("suggested", "abstained")
#: Filter word -> Order.source; and how a source is shown.
SOURCES: dict[str, str] = {"hl7": "hl7v2", "fhir": "fhir", "cds": "cds-hooks"}
SOURCE_LABELS: dict[str, str] = {"hl7v2": "HL7", "fhir": "FHIR", "cds-hooks": "CDS"}
#: Most urgent first (HL7 table 0027 / FHIR request-priority); no priority last.
PRIORITY_RANK: dict[str | None, int] = {"stat": 0, "asap": 1, "urgent": 2, "routine": 3}
MAX_ROWS = 200
#: How often the page asks for new orders (milliseconds).
POLL_MS = 3000
_SECURITY_HEADERS = {
    "Cache-Control": "no-store",  # clinical text: never cached
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}



def percent(probability: float) -> str:
    """A calibrated probability as the page shows it: whole percent, never a flat 100% or
    0% (a rounded 0.996 is not certainty). static/worklist.js has the same rule."""
    if probability >= 0.995:
        return ">99%"
    if probability < 0.005:
        return "<1%"
    return f"{math.floor(probability * 100 + 0.5)}%"  # half up, as JavaScript's Math.round


_templates = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
                                autoescape=jinja2.select_autoescape(["html"]),
                                undefined=jinja2.StrictUndefined)
_templates.filters["percent"] = percent


# ---------------------------------------------------------------------------- the queue


def display_status(row: WorklistRow) -> str:
    status = row.suggestion.status
    if status == "pending":
        return "abstained" if row.suggestion.suggestion.abstained else "suggested"
    return status


def parse_filters(params: Any) -> dict[str, Any]:
    """status (comma-separated or repeated; default suggested + abstained), modality and
    source from a query string; unknown values are dropped."""
    statuses = [s for value in params.getlist("status") for s in value.split(",")
                if s in STATUSES]
    source = params.get("source", "")
    return {"statuses": tuple(dict.fromkeys(statuses)) or DEFAULT_STATUSES,
            "modality": params.get("modality", "").upper(),
            "source": source if source in SOURCES else ""}


def queue(context: Any, *, statuses: tuple[str, ...] = DEFAULT_STATUSES, modality: str = "",
          source: str = "", limit: int = MAX_ROWS) -> list[WorklistRow]:
    """The worklist, most urgent first and newest first within a priority. Sync."""
    store_statuses = sorted({"pending" if s in ("suggested", "abstained") else s
                             for s in statuses})
    catalog: Catalog = context.catalog
    rows = []
    for row in context.store.worklist(store_statuses, limit=limit * 5):
        if display_status(row) not in statuses:
            continue
        if source and row.order.source != SOURCES[source]:
            continue
        if modality:
            protocol = catalog.get(row.suggestion.suggestion.protocol)
            if protocol is None or protocol.modality.upper() != modality:
                continue
        rows.append(row)
    rows.sort(key=lambda r: (PRIORITY_RANK.get(r.order.order.priority, 4),
                             -r.suggestion.created_at.timestamp()))
    return rows[:limit]


def item(row: WorklistRow, final_protocol: str | None = None) -> dict[str, Any]:
    """One row as the page shows it (clinical text included: audit it)."""
    order, suggestion = row.order.order, row.suggestion.suggestion
    return {
        "id": row.suggestion.id,
        "order_id": row.order.id,
        "accession": order.accession_number,
        "placer": order.placer_order_number,
        "source": SOURCE_LABELS.get(row.order.source, row.order.source),
        "priority": order.priority or "",
        "received": row.suggestion.created_at.strftime("%Y-%m-%d %H:%M"),
        "exam": order.ordered_exam_text or order.ordered_exam_code,
        "history": order.clinical_history,
        "reason": order.reason_for_study,
        "diagnoses": [d.text or d.code for d in order.diagnoses if d.text or d.code],
        "notes": list(order.notes),
        "protocol": suggestion.protocol,
        "probability": round(float(suggestion.confidence), 3),
        "abstained": bool(suggestion.abstained),
        "top3": [{"protocol": s.protocol, "probability": round(float(s.probability), 3)}
                 for s in suggestion.top(3)],
        "status": display_status(row),
        "final_protocol": final_protocol or "",
    }


def _final_protocols(context: Any, rows: list[WorklistRow]) -> dict[str, str | None]:
    decided = [r.suggestion.id for r in rows if r.suggestion.status != "pending"]
    finals: dict[str, str | None] = {}
    for sid in decided:
        feedback = context.store.feedback_rows(suggestion_id=sid)
        finals[sid] = feedback[-1].protocol if feedback else None
    return finals


def audit_views(context: Any, principal: Principal, rows: list[WorklistRow],
                request_id: str) -> None:
    """One audit event per order whose clinical text is about to be shown. Sync; raises if
    the trail cannot be written (the caller then shows nothing)."""
    if not rows:
        return
    events = [(principal.actor, "read", "Order", r.order.id,
               {"view": "worklist", "suggestion_id": r.suggestion.id, "auth": principal.auth,
                "roles": sorted(principal.roles), "request_id": request_id,
                "outcome": "success"}) for r in rows]
    try:
        context.store.append_audit_many(events)
    except Exception as exc:
        from radproto.adapter.observability import AUDIT_WRITE_FAILURES

        AUDIT_WRITE_FAILURES.inc()
        log.error("audit event not stored", extra={"event": "read",
                                                    "error_type": type(exc).__name__})
        raise


def catalog_entries(catalog: Catalog) -> list[dict[str, Any]]:
    """Names, aliases and modality of every protocol, for the change type-ahead."""
    return [{"name": p.name, "aliases": list(p.aliases), "modality": p.modality}
            for p in catalog.protocols]


# ---------------------------------------------------------------------------- HTTP


def _sessions(context: ServiceContext) -> SessionManager:
    if context.security is None:  # the security part is not wired: no sign-in, never open
        raise AuthError("no_credentials", "authentication required")
    return context.security.sessions


def _json_script(value: Any) -> str:
    """JSON safe inside <script type="application/json"> (no "</script>" breaks out)."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e") \
        .replace("&", "\\u0026")


def _html(body: str, status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers={**_SECURITY_HEADERS,
                                                          **(headers or {})})


def _feedback_api(context: ServiceContext) -> FhirApi:
    """The FHIR API object verdicts are recorded through (made here when the FHIR part is not
    wired: the write-backs of FHIR orders still need it)."""
    if context.fhir is None:
        context.fhir = FhirApi(context)
    return context.fhir


def build_router(context: ServiceContext) -> APIRouter:
    router = APIRouter(tags=["worklist"])

    async def rows_for(request: Request, principal: Principal, filters: dict[str, Any],
                       known: set[str]
                       ) -> tuple[list[WorklistRow], list[dict[str, Any]]] | Response:
        """The queue and the full items of rows the caller does not hold yet, audited."""
        try:
            rows = await asyncio.to_thread(queue, context, **filters)
            fresh = [r for r in rows if r.suggestion.id not in known]
            finals = await asyncio.to_thread(_final_protocols, context, fresh)
            await asyncio.to_thread(audit_views, context, principal, fresh,
                                    getattr(request.state, "request_id", ""))
        except Exception as exc:
            log.warning("worklist unavailable", extra={"error_type": type(exc).__name__})
            return JSONResponse({"error": "the store or the audit trail is unavailable; "
                                 "retry"}, status_code=503, headers=_SECURITY_HEADERS)
        return rows, [item(r, finals.get(r.suggestion.id)) for r in fresh]

    @router.get("/worklist", response_class=HTMLResponse)
    async def page(request: Request, principal: PrincipalDep) -> Response:
        """The worklist page (HTML)."""
        filters = parse_filters(request.query_params)
        result = await rows_for(request, principal, filters, set())
        if isinstance(result, Response):
            return result
        _, items = result
        session = getattr(request.state, "session", None)
        query = urlencode({"status": ",".join(filters["statuses"]),
                           "modality": filters["modality"], "source": filters["source"]})
        body = _templates.get_template("worklist.html").render(
            items=items, filters=filters, statuses=STATUSES, sources=list(SOURCES),
            modalities=sorted({p.modality for p in context.catalog.protocols}),
            actor=principal.actor, signed_in=session is not None,
            csrf=_sessions(context).csrf_token(session) if session is not None else "",
            catalog_json=_json_script(catalog_entries(context.catalog)),
            items_json=_json_script(items), query=query, poll_ms=POLL_MS)
        return _html(body)

    @router.get("/worklist/items")
    async def items(request: Request, principal: PrincipalDep) -> Response:
        """The queue: `ids` (every row, in order) and `items` (full rows, clinical text
        included, of the ids not listed in `known`, comma-separated)."""
        filters = parse_filters(request.query_params)
        known = {k for k in request.query_params.get("known", "").split(",") if k}
        result = await rows_for(request, principal, filters, known)
        if isinstance(result, Response):
            return result
        rows, fresh = result
        return JSONResponse({"ids": [r.suggestion.id for r in rows], "items": fresh},
                            headers=_SECURITY_HEADERS)

    @router.post("/worklist/verdict")
    async def verdict(request: Request) -> Response:
        """{"suggestion_id", "outcome": accepted|changed|rejected, "protocol" (a change),
        "reason" (a rejection)}."""
        session = getattr(request.state, "session", None)
        if session is not None and not _sessions(context).csrf_ok(
                session, request.headers.get(CSRF_HEADER)):
            return JSONResponse({"error": "missing or wrong CSRF token; reload the page"},
                                status_code=403, headers=_SECURITY_HEADERS)
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
        outcome = body.get("outcome")
        if outcome not in ("accepted", "changed", "rejected"):
            return JSONResponse({"error": "outcome must be accepted, changed or rejected",
                                 "field": "outcome"}, status_code=422)
        reason = str(body.get("reason") or "").strip()[:1000]
        api = _feedback_api(context)
        try:
            stored = await asyncio.to_thread(context.store.get_suggestion,
                                             str(body.get("suggestion_id", "")))
            if stored is None:
                return JSONResponse({"error": "no such suggestion"}, status_code=404)
            if stored.status in ("superseded", "withdrawn"):
                return JSONResponse({"error": f"the order was updated or cancelled: this "
                                     f"suggestion is {stored.status}"}, status_code=409)
            protocol: str | None = None
            if outcome == "changed":
                protocol = context.catalog.resolve(str(body.get("protocol") or ""))
                if protocol is None:
                    return JSONResponse({"error": "not a catalog protocol",
                                         "field": "protocol"}, status_code=422)
                if protocol == stored.suggestion.protocol and not stored.suggestion.abstained:
                    outcome = "accepted"
            elif outcome == "accepted":
                if stored.suggestion.abstained:
                    return JSONResponse({"error": "the model abstained: choose the protocol "
                                         "(change)", "field": "outcome"}, status_code=422)
                protocol = stored.suggestion.protocol
            elif not reason:
                return JSONResponse({"error": "a rejection needs a reason", "field": "reason"},
                                    status_code=422)
            recorded = await record(api, stored, outcome, protocol, actor_of(request),
                                    reason=reason)
        except NotFound:
            return JSONResponse({"error": "no such suggestion"}, status_code=404)
        except StoreUnavailable:
            return JSONResponse({"error": "the store is unavailable; retry"}, status_code=503)
        return JSONResponse({"suggestion_id": stored.id, "outcome": outcome,
                             "protocol": protocol, "recorded": recorded},
                            status_code=201 if recorded else 200, headers=_SECURITY_HEADERS)

    @router.get("/worklist/login", response_class=HTMLResponse)
    async def login_page(request: Request) -> Response:
        """The sign-in page."""
        return _html(_templates.get_template("login.html").render(error=""))

    @router.post("/worklist/login")
    async def login(request: Request) -> Response:
        """Sign in with `api_key` or `token` (form fields): the session cookie."""
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        api_key = (form.get("api_key") or [""])[0].strip()
        token = (form.get("token") or [""])[0].strip()
        authenticator = context.security.authenticator if context.security else None
        error, status = "", 200
        principal = None
        if authenticator is None:
            error, status = "sign-in is not configured", 503
        elif not api_key and not token:
            error, status = "enter an API key or a token", 400
        else:
            try:
                principal = await authenticator.authenticate(
                    f"Bearer {token}" if token else None, None if token else api_key)
            except AuthError as exc:
                error, status = str(exc), exc.status
            if principal is None and not error:
                error, status = "sign-in failed", 401
            elif principal is not None and not principal.roles & {"radiologist", "admin"}:
                error, status = "the worklist needs the role radiologist or admin", 403
        if error:
            await asyncio.to_thread(_audit_login, context, principal, "failure", status, request)
            return _html(_templates.get_template("login.html").render(error=error), status)
        assert principal is not None
        sessions = _sessions(context)
        value, session = sessions.issue(principal)
        await asyncio.to_thread(_audit_login, context, principal, "success", 303, request,
                                session.id)
        return RedirectResponse("/worklist", status_code=303, headers={
            "Set-Cookie": sessions.cookie_header(value, secure=request.url.scheme == "https"),
            "Cache-Control": "no-store"})

    @router.post("/worklist/logout")
    async def logout(request: Request) -> Response:
        """Sign out: the cookie is cleared."""
        return RedirectResponse("/worklist/login", status_code=303, headers={
            "Set-Cookie": SessionManager.clearing_cookie_header()})

    return router


def _audit_login(context: Any, principal: Principal | None, outcome: str, status: int,
                 request: Request, session_id: str = "") -> None:
    """Sign-ins are security events (best effort for failures, as the API's denials)."""
    detail = {"route": "/worklist/login", "method": "POST", "status": status,
              "outcome": outcome, "client": request.client.host if request.client else "",
              "auth": principal.auth if principal else "none"}
    actor = principal.actor if principal else "anonymous"
    try:
        audit.append_event(context.store, actor, "login", "Session", session_id, detail)
    except Exception:
        if outcome == "success":
            raise


def mount_static(app: FastAPI) -> None:
    """The worklist's static files (CSS, JavaScript)."""
    app.mount("/worklist/static", StaticFiles(directory=STATIC_DIR), name="worklist-static")


__all__ = ["SESSION_AUTH", "build_router", "mount_static", "queue"]
