"""The audit trail: who read or changed what, and which model and catalog decided.

Events live in the store's append-only `audit` table (`Store.append_audit`); this module
records them, makes the table append-only (`harden_audit_table`), queries them for
`radproto audit`, and exports them as FHIR R4 AuditEvent resources.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from radproto.adapter.observability import AUDIT_WRITE_FAILURES

log = logging.getLogger("radproto.audit")

#: Our action words and the FHIR AuditEvent.action code (C create, R read, U update,
#: D delete, E execute) and restful-interaction subtype they map to.
ACTIONS: dict[str, tuple[str, str | None]] = {
    "create": ("C", "create"),
    "read": ("R", "read"),
    "search": ("E", "search-type"),
    "update": ("U", "update"),
    "delete": ("D", "delete"),
    "execute": ("E", "operation"),
    "decide": ("C", None),  # the classifier made a suggestion
    "accepted": ("U", None),  # a radiologist accepted a suggestion
    "changed": ("U", None),  # ... changed it to another protocol
    "rejected": ("U", None),  # ... rejected it
    "deny": ("E", None),  # authentication or authorization refused a request
    "login": ("E", None),  # a sign-in to the worklist (success or failure)
    "purge": ("D", None),  # retention purged raw messages and notes
}
SYSTEM_ACTORS = ("system:classifier", "system:retention")

_TYPE_REST = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
              "code": "rest", "display": "RESTful Operation"}
_TYPE_APPLICATION = {"system": "http://dicom.nema.org/resources/ontology/DCM",
                     "code": "110100", "display": "Application Activity"}
_TYPE_SECURITY = {"system": "http://dicom.nema.org/resources/ontology/DCM",
                  "code": "110113", "display": "Security Alert"}
_RESTFUL = "http://hl7.org/fhir/restful-interaction"
_DETAIL_KEYS = ("model_version", "catalog_version", "prompt_version", "protocol",
                "suggested_protocol", "confidence", "abstained", "outcome", "status",
                "route", "method", "request_id", "reason", "order_ref", "message_id",
                "purged", "cutoff", "issuer")


# ---------------------------------------------------------------------------- recording


def append_event(store: Any, actor: str, action: str, entity_type: str, entity_id: str,
                 detail: dict[str, Any] | None = None) -> str:
    """Store one audit event; a failure is counted, logged (without detail) and re-raised so
    the caller can fail closed."""
    try:
        return store.append_audit(actor, action, entity_type, entity_id, detail or {})
    except Exception as exc:
        AUDIT_WRITE_FAILURES.inc()
        log.error("audit event not stored", extra={"event": action,
                                                    "error_type": type(exc).__name__})
        raise


def record_decision(store: Any, *, suggestion_id: str, suggestion: Any, order_ref: str = "",
                    message_id: str = "") -> str:
    """Which model version and catalog version decided a suggestion (call it when the
    suggestion is stored)."""
    return append_event(store, "system:classifier", "decide", "Suggestion", suggestion_id, {
        "model_version": suggestion.model_version, "catalog_version": suggestion.catalog_version,
        "prompt_version": suggestion.prompt_version, "protocol": suggestion.protocol,
        "confidence": round(float(suggestion.confidence), 4),
        "abstained": bool(suggestion.abstained), "order_ref": order_ref,
        "message_id": message_id or suggestion.raw_message_id,
    })


def record_feedback(store: Any, *, actor: str, suggestion_id: str, outcome: str,
                    protocol: str | None, suggested_protocol: str = "", model_version: str = "",
                    catalog_version: str = "") -> str:
    """Who accepted, changed or rejected which protocol (call it with Store.record_feedback)."""
    if outcome not in ("accepted", "changed", "rejected"):
        raise ValueError(f"outcome must be accepted, changed or rejected, not {outcome!r}")
    return append_event(store, actor, outcome, "Suggestion", suggestion_id, {
        "protocol": protocol or "", "suggested_protocol": suggested_protocol,
        "model_version": model_version, "catalog_version": catalog_version,
    })


# ---------------------------------------------------------------------------- append-only

_SQLITE_TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END",
)
_POSTGRES_TRIGGERS = (
    "SELECT pg_advisory_xact_lock(727275)",  # replicas starting together
    "CREATE OR REPLACE FUNCTION radproto_audit_append_only() RETURNS trigger "
    "LANGUAGE plpgsql AS $$ BEGIN "
    "RAISE EXCEPTION 'audit is append-only (% refused)', TG_OP "
    "USING ERRCODE = 'insufficient_privilege'; END $$",
    "DROP TRIGGER IF EXISTS audit_append_only ON audit",
    "CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit "
    "FOR EACH ROW EXECUTE FUNCTION radproto_audit_append_only()",
    "DROP TRIGGER IF EXISTS audit_no_truncate ON audit",
    "CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit "
    "FOR EACH STATEMENT EXECUTE FUNCTION radproto_audit_append_only()",
)


def harden_audit_table(store: Any) -> None:
    """Make the store's `audit` table append-only in the database itself: UPDATE and DELETE
    (and TRUNCATE on PostgreSQL) raise. Idempotent; install_security runs it. The store's
    schema does not include these triggers, so this is where they come from."""
    dialect = getattr(store, "dialect", "")
    if dialect == "sqlite":
        statements: Sequence[str] = _SQLITE_TRIGGERS
    elif dialect == "postgresql":
        statements = _POSTGRES_TRIGGERS
    else:
        log.warning("audit table not hardened: unknown store dialect", extra={"event": dialect})
        return
    with store._tx() as cur:  # the store's own transaction helper (same connection handling)
        for statement in statements:
            cur.execute(statement)


# ---------------------------------------------------------------------------- querying


def parse_since(value: str | None) -> datetime | None:
    """An ISO date or datetime ("2026-01-31", "2026-01-31T08:00:00Z") or a duration back
    from now ("7d", "12h", "30m")."""
    if not value:
        return None
    value = value.strip()
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    if value[-1:] in units and value[:-1].isdigit():
        from datetime import timedelta

        return datetime.now(UTC) - timedelta(seconds=int(value[:-1]) * units[value[-1]])
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"--since: not an ISO date/time or a duration like 7d: {value!r}") \
            from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def query(store: Any, *, since: datetime | None = None, actor: str | None = None,
          entity: str | None = None, action: str | None = None, limit: int = 1000) -> list[Any]:
    """Audit rows, oldest first. `entity` is "Type/id", "Type" or an id."""
    entity_type = entity_id = None
    if entity:
        if "/" in entity:
            entity_type, entity_id = entity.split("/", 1)
        elif entity[:1].isupper():
            entity_type = entity
        else:
            entity_id = entity
    return store.audit_rows(actor=actor, action=action, entity_type=entity_type,
                            entity_id=entity_id or None, since=since, limit=limit)


def row_dict(row: Any) -> dict[str, Any]:
    at = row.at if isinstance(row.at, datetime) else datetime.fromtimestamp(row.at, UTC)
    return {"id": row.id, "at": at.astimezone(UTC).isoformat(), "actor": row.actor,
            "action": row.action, "entity_type": row.entity_type, "entity_id": row.entity_id,
            "detail": row.detail}


def format_json(rows: Iterable[Any]) -> str:
    """One JSON object per line."""
    return "\n".join(json.dumps(row_dict(r), sort_keys=True, default=str) for r in rows)


def format_table(rows: Iterable[Any]) -> str:
    header = ("AT", "ACTOR", "ACTION", "ENTITY", "OUTCOME / DETAIL")
    lines = [header]
    for row in rows:
        data = row_dict(row)
        detail = data["detail"]
        summary = " ".join(f"{k}={detail[k]}" for k in ("status", "protocol", "model_version",
                                                         "catalog_version", "reason", "purged")
                           if k in detail)
        entity = "/".join(p for p in (data["entity_type"], data["entity_id"]) if p)
        lines.append((data["at"][:19].replace("T", " "), data["actor"], data["action"], entity,
                      summary))
    widths = [max(len(str(line[i])) for line in lines) for i in range(4)]
    return "\n".join("  ".join(str(c).ljust(widths[i]) if i < 4 else str(c)
                               for i, c in enumerate(line)).rstrip() for line in lines)


# ---------------------------------------------------------------------------- FHIR export


def to_fhir(row: Any, *, site: str = "radproto") -> dict[str, Any]:
    """One audit row as a FHIR R4 AuditEvent (validated with fhir.resources R4B)."""
    from fhir.resources.R4B.auditevent import AuditEvent

    data = row_dict(row)
    detail: dict[str, Any] = data["detail"] if isinstance(data["detail"], dict) else {}
    code, interaction = ACTIONS.get(data["action"], ("E", None))
    if data["action"] == "deny":
        event_type = _TYPE_SECURITY
    elif "route" in detail:
        event_type = _TYPE_REST
    else:
        event_type = _TYPE_APPLICATION
    status = detail.get("status")
    failed = data["action"] == "deny" or (isinstance(status, int) and status >= 400)
    outcome = ("8" if isinstance(status, int) and status >= 500 else "4") if failed else "0"
    actor = data["actor"]
    system = actor.startswith("system:")
    agent: dict[str, Any] = {
        "who": {"display": actor} if not system else {"display": site + " " + actor[7:]},
        "requestor": not system,
        "type": {"text": "system" if system else "user"},
    }
    roles = detail.get("roles")
    if isinstance(roles, list) and roles:
        agent["role"] = [{"text": str(r)} for r in roles]
    if detail.get("client"):
        agent["network"] = {"address": str(detail["client"]), "type": "2"}
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": _fhir_id(data["id"]),
        "type": event_type,
        "action": code,
        "recorded": data["at"],
        "outcome": outcome,
        "agent": [agent],
        "source": {"observer": {"display": site}, "site": site,
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                       "security-source-type",
                             "code": "4", "display": "Application Server"}]},
    }
    if interaction:
        resource["subtype"] = [{"system": _RESTFUL, "code": interaction}]
    if failed and detail.get("reason"):
        resource["outcomeDesc"] = str(detail["reason"])
    entity: dict[str, Any] = {}
    if data["entity_type"] or data["entity_id"]:
        reference = "/".join(p for p in (data["entity_type"], data["entity_id"]) if p)
        entity["what"] = ({"reference": reference} if data["entity_type"] and data["entity_id"]
                          and data["entity_type"][:1].isupper() and "/" not in data["entity_id"]
                          else {"display": reference})
    details = [{"type": k, "valueString": str(detail[k])} for k in _DETAIL_KEYS if k in detail
               and detail[k] not in ("", None)]
    if details:
        entity["detail"] = details
    if detail.get("query"):
        entity["query"] = base64.b64encode(str(detail["query"]).encode()).decode()
    if entity:
        resource["entity"] = [entity]
    return AuditEvent.model_validate(resource).model_dump(mode="json", exclude_none=True)


def to_fhir_bundle(rows: Iterable[Any], *, site: str = "radproto") -> dict[str, Any]:
    """AuditEvents as a FHIR `collection` Bundle (for export to an audit repository)."""
    from fhir.resources.R4B.bundle import Bundle

    events = [to_fhir(r, site=site) for r in rows]
    bundle = {"resourceType": "Bundle", "type": "collection",
              "timestamp": datetime.now(UTC).isoformat(),
              "entry": [{"fullUrl": f"urn:uuid:{_uuidish(e['id'])}", "resource": e}
                        for e in events]}
    return Bundle.model_validate(bundle).model_dump(mode="json", exclude_none=True)


def _fhir_id(value: str) -> str:
    # FHIR ids: [A-Za-z0-9-.]{1,64}
    cleaned = "".join(c if c.isalnum() or c in "-." else "-" for c in str(value))
    return cleaned[:64] or "unknown"


def _uuidish(value: str) -> str:
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, "radproto-audit:" + value))
