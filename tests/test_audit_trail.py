"""The audit trail: events for every protected request, fail-closed recording, append-only
tables (SQLite and PostgreSQL), FHIR AuditEvent export and `radproto audit`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from radproto.adapter import audit
from radproto.adapter.security import hash_api_key, install_security
from radproto.adapter.security.settings import SecuritySettings
from radproto.cli import main

KEYS = {"integration": "k-int", "radiologist": "k-rad", "admin": "k-adm"}


def _security(tmp_path) -> SecuritySettings:
    path = tmp_path / "keys.txt"
    path.write_text("".join(f"{r} {hash_api_key(k)}\n" for r, k in KEYS.items()))
    return SecuritySettings(api_keys_file=path)


def _app(tmp_path, store) -> FastAPI:
    app = FastAPI()

    @app.get("/fhir/Task/{task_id}")
    def read_task(task_id: str) -> JSONResponse:
        return JSONResponse({"resourceType": "Task", "id": task_id, "note": "PHI-IN-BODY"})

    @app.get("/fhir/Task")
    def search_tasks() -> JSONResponse:
        return JSONResponse({"resourceType": "Bundle", "type": "searchset"})

    @app.post("/fhir/ServiceRequest")
    def create() -> JSONResponse:
        return JSONResponse({}, status_code=201,
                            headers={"Location": "/fhir/ServiceRequest/sr-9/_history/1"})

    @app.post("/feedback")
    def feedback(request: Request) -> JSONResponse:
        request.state.audit_detail = {"protocol": "CT Head without contrast",
                                      "outcome": "accepted"}
        return JSONResponse({"ok": True})

    @app.get("/fhir/ServiceRequest/{sr_id}")
    def broken(sr_id: str) -> JSONResponse:
        raise RuntimeError("handler bug")

    install_security(app, _security(tmp_path), store)
    return app


async def _call(app, method, path, role=None, **kwargs) -> httpx.Response:
    headers = {"X-API-Key": KEYS[role]} if role else {}
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.request(method, path, headers=headers, **kwargs)


async def test_reads_creates_searches_and_denials_are_recorded(tmp_path, store):
    app = _app(tmp_path, store)
    assert (await _call(app, "GET", "/fhir/Task/t-1", "radiologist")).status_code == 200
    assert (await _call(app, "GET", "/fhir/Task?focus=ServiceRequest/sr-1",
                        "integration")).status_code == 200
    assert (await _call(app, "POST", "/fhir/ServiceRequest", "integration",
                        json={})).status_code == 201
    assert (await _call(app, "POST", "/feedback", "radiologist", json={})).status_code == 200
    assert (await _call(app, "GET", "/fhir/Task/t-2", "admin")).status_code == 403
    assert (await _call(app, "GET", "/fhir/Task/t-3")).status_code == 401
    assert (await _call(app, "GET", "/healthz")).status_code in (200, 503)  # not audited

    rows = store.audit_rows()
    seen = [(r.actor, r.action, r.entity_type, r.entity_id) for r in rows]
    rad, integ, adm = (f"api-key:{hash_api_key(KEYS[r])[:12]}"
                       for r in ("radiologist", "integration", "admin"))
    assert seen == [
        (rad, "read", "Task", "t-1"),
        (integ, "search", "Task", ""),
        (integ, "create", "ServiceRequest", "sr-9"),
        (rad, "create", "Feedback", ""),
        (adm, "deny", "Route", "/fhir/Task/{task_id}"),
        ("anonymous", "deny", "Route", "/fhir/Task/{task_id}"),
    ]
    assert rows[0].detail["status"] == 200 and rows[0].detail["roles"] == ["radiologist"]
    assert rows[1].detail["query"] == "focus=ServiceRequest/sr-1"
    assert rows[3].detail["protocol"] == "CT Head without contrast"
    assert rows[4].detail["reason"] == "forbidden" and rows[5].detail["status"] == 401


class _BrokenAudit:
    """The real store, except that audit writes fail (a full disk, a revoked grant)."""

    def __init__(self, store):
        self._store = store
        self.dialect = store.dialect

    def __getattr__(self, name):
        return getattr(self._store, name)

    def append_audit(self, *args, **kwargs):
        raise RuntimeError("audit table unavailable")


async def test_no_data_leaves_without_an_audit_record(tmp_path, sqlite_url):
    from radproto.adapter.store import open_store

    store = open_store(sqlite_url)
    try:
        app = _app(tmp_path, _BrokenAudit(store))
        response = await _call(app, "GET", "/fhir/Task/t-1", "radiologist")
        assert response.status_code == 503
        assert "PHI-IN-BODY" not in response.text
        assert response.json()["issue"][0]["code"] == "transient"
        # Denials do not depend on the audit store.
        assert (await _call(app, "GET", "/fhir/Task/t-1")).status_code == 401
    finally:
        store.close()


async def test_a_failing_handler_is_recorded_with_status_500(tmp_path, sqlite_url):
    from radproto.adapter.store import open_store

    store = open_store(sqlite_url)
    try:
        app = _app(tmp_path, store)
        response = await _call(app, "GET", "/fhir/ServiceRequest/sr-1", "radiologist")
        assert response.status_code == 500
        (row,) = store.audit_rows(entity_type="ServiceRequest")
        assert row.action == "read" and row.detail["status"] == 500
        assert row.detail["outcome"] == "failure"
    finally:
        store.close()


def test_the_audit_table_is_append_only(store):
    audit.harden_audit_table(store)
    audit.harden_audit_table(store)  # idempotent
    audit_id = store.append_audit("dr-a", "read", "Task", "t-1", {"status": 200})
    for statement in ("UPDATE audit SET actor = 'someone-else'", "DELETE FROM audit",
                      *(["TRUNCATE audit"] if store.dialect == "postgresql" else [])):
        with pytest.raises(Exception, match="append-only"), store._tx() as cur:
            cur.execute(statement)
    (row,) = store.audit_rows()
    assert row.id == audit_id and row.actor == "dr-a"
    store.append_audit("dr-b", "read", "Task", "t-2", {})  # appending still works
    assert len(store.audit_rows()) == 2


def _suggestion():
    from radproto.model.suggestion import ProtocolScore, Suggestion

    return Suggestion(scores=(ProtocolScore(protocol="CT Head without contrast",
                                            probability=0.91),),
                      protocol="CT Head without contrast", confidence=0.91,
                      model_version="m-7", catalog_version="cat-abc", prompt_version="p1",
                      raw_message_id="msg-1")


def test_decisions_and_feedback_name_the_model_and_catalog(store):
    audit.record_decision(store, suggestion_id="s-1", suggestion=_suggestion(),
                          order_ref="P1")
    audit.record_feedback(store, actor="dr-b", suggestion_id="s-1", outcome="changed",
                          protocol="MR Brain", suggested_protocol="CT Head without contrast",
                          model_version="m-7", catalog_version="cat-abc")
    with pytest.raises(ValueError):
        audit.record_feedback(store, actor="x", suggestion_id="s-1", outcome="maybe",
                              protocol=None)
    decide, change = audit.query(store, entity="Suggestion/s-1")
    assert decide.actor == "system:classifier" and decide.detail["model_version"] == "m-7"
    assert decide.detail["catalog_version"] == "cat-abc"
    assert change.actor == "dr-b" and change.action == "changed"
    assert change.detail["protocol"] == "MR Brain"


def test_every_kind_of_event_exports_as_a_valid_r4_audit_event(store):
    from fhir.resources.R4B.auditevent import AuditEvent
    from fhir.resources.R4B.bundle import Bundle

    audit.record_decision(store, suggestion_id="s-1", suggestion=_suggestion())
    audit.record_feedback(store, actor="dr-b", suggestion_id="s-1", outcome="accepted",
                          protocol="CT Head without contrast")
    store.append_audit("api-key:abc", "read", "Task", "t-1",
                       {"method": "GET", "route": "/fhir/Task/{task_id}", "status": 200,
                        "roles": ["radiologist"], "client": "10.0.0.7"})
    store.append_audit("api-key:abc", "search", "Task", "",
                       {"route": "/fhir/Task", "status": 200, "query": "status=requested"})
    store.append_audit("anonymous", "deny", "Route", "/admin/x",
                       {"status": 401, "reason": "no_credentials"})
    store.append_audit("system:retention", "purge", "Message", "", {"purged": 3})
    rows = store.audit_rows()
    events = [audit.to_fhir(r) for r in rows]
    for event in events:
        AuditEvent.model_validate(event)  # raises if invalid
        assert event["resourceType"] == "AuditEvent" and event["agent"] and event["source"]
    decide, accept, read, search, deny, purge = events
    assert {"type": "model_version", "valueString": "m-7"} in decide["entity"][0]["detail"]
    assert decide["entity"][0]["what"] == {"reference": "Suggestion/s-1"}
    assert decide["agent"][0]["requestor"] is False
    assert accept["action"] == "U" and accept["agent"][0]["who"]["display"] == "dr-b"
    assert read["action"] == "R" and read["outcome"] == "0"
    assert read["subtype"][0]["code"] == "read" and read["type"]["code"] == "rest"
    assert read["agent"][0]["network"]["address"] == "10.0.0.7"
    assert search["subtype"][0]["code"] == "search-type" and "query" in search["entity"][0]
    assert deny["outcome"] == "4" and deny["type"]["code"] == "110113"
    assert purge["action"] == "D"
    bundle = audit.to_fhir_bundle(rows)
    Bundle.model_validate(bundle)
    assert len(bundle["entry"]) == 6


def test_the_audit_command_filters_and_formats(store, capsys):
    store.append_audit("dr-a", "read", "Task", "t-1", {"status": 200})
    store.append_audit("dr-b", "read", "Task", "t-2", {"status": 200})
    store.append_audit("dr-a", "changed", "Suggestion", "s-1", {"protocol": "MR Brain"})

    assert main(["audit", "--store", store.url, "--format", "json", "--actor", "dr-a"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(x["actor"], x["entity_id"]) for x in lines] == [("dr-a", "t-1"), ("dr-a", "s-1")]

    assert main(["audit", "--store", store.url, "--entity", "Task/t-2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["AT", "ACTOR", "ACTION", "ENTITY"]
    assert len(table) == 2 and "dr-b" in table[1] and "Task/t-2" in table[1]

    assert main(["audit", "--store", store.url, "--format", "fhir", "--entity", "Suggestion"]
                ) == 0
    bundle = json.loads(capsys.readouterr().out)
    assert bundle["resourceType"] == "Bundle" and len(bundle["entry"]) == 1

    future = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    assert main(["audit", "--store", store.url, "--since", future, "--format", "json"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["audit", "--store", store.url, "--since", "1h", "--format", "json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3

    assert main(["audit", "--store", store.url, "--since", "last tuesday"]) == 2
    assert "--since" in capsys.readouterr().err
