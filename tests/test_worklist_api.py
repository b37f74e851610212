"""The worklist's HTTP side against the real service (Service: MLLP + HTTP sockets, store,
worker, outbox relays), a keyword test classifier standing in for the language model, a
listening MLLP peer as the RIS and the Medplum FHIR server as the EHR: access (roles, the
sign-in session, CSRF), audit of clinical-text views, verdict write-backs, Swagger, and
`radproto keys`."""

from __future__ import annotations

import asyncio
import json
import re
import stat
from pathlib import Path

import httpx
import pytest
from conftest import KeywordClassifier, orm_message
from peers.harness import medplum_server
from test_mllp_writeback import Peer

from radproto.adapter.mllp_client import MllpClient
from radproto.adapter.security import hash_api_key
from radproto.adapter.service import Service
from radproto.adapter.settings import load_settings
from radproto.cli import main

KEYS = {"radiologist": "rad-key-0123456789abcdef", "integration": "int-key-0123456789abcdef",
        "admin": "adm-key-0123456789abcdef"}
CLINICAL = "left flank pain radiating to groin, haematuria"


async def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Running:
    """The real service on free ports, its RIS (MLLP peer) and its EHR (Medplum)."""

    def __init__(self, tmp_path: Path, fhir_base: str, classifier=None) -> None:
        self.tmp_path = tmp_path
        self.fhir_base = fhir_base
        self.classifier = classifier or KeywordClassifier()
        self.ris = Peer()
        self.service: Service | None = None

    async def start(self) -> Running:
        await self.ris.start()
        key_file = self.tmp_path / "api-keys"
        key_file.write_text("".join(f"{role} {hash_api_key(key)}  # name={role}-test\n"
                                    for role, key in KEYS.items()))
        settings = load_settings(None, {
            "mllp_port": 0, "http_port": 0, "store": f"sqlite:///{self.tmp_path / 'w.db'}",
            "worker_poll_s": 0.05, "writeback_host": "127.0.0.1",
            "writeback_port": self.ris.port, "writeback_backoff_initial_s": 0.2,
            "fhir": {"server_url": self.fhir_base, "sync_wait_s": 5},
            "security": {"api_keys_file": str(key_file)}})
        self.service = Service(settings, classifier=self.classifier)
        await self.service.start()
        return self

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.service.http_port}"

    @property
    def store(self):
        return self.service.context.store

    async def send_hl7(self, control_id: str, placer: str, exam: str,
                       reason: str = CLINICAL, version: str = "2.3.1") -> None:
        client = MllpClient("127.0.0.1", self.service.context.listener.port)
        try:
            ack = await client.send(orm_message(control_id, placer=placer, exam=exam,
                                                reason=reason, version=version).decode())
            assert ack.accepted
        finally:
            await client.close()

    async def wait_suggested(self, order_ref: str):
        return await wait_for(lambda: self.store.latest_suggestion_for_order(order_ref),
                              what=f"a suggestion for {order_ref}")

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
        await self.ris.stop()


@pytest.fixture(scope="module")
def fhir_server():
    peer = medplum_server()
    yield peer
    peer.stop()


@pytest.fixture
async def running(tmp_path, fhir_server):
    service = await Running(tmp_path, fhir_server.base + "/fhir").start()
    yield service
    await service.stop()


def key(role: str) -> dict[str, str]:
    return {"X-API-Key": KEYS[role]}


async def sign_in(http: httpx.AsyncClient, role: str = "radiologist") -> str:
    """Sign in through the form; returns the page's CSRF token."""
    response = await http.post("/worklist/login", data={"api_key": KEYS[role]})
    assert response.status_code == 303, response.text
    page = await http.get("/worklist")
    assert page.status_code == 200
    return re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)


# ---------------------------------------------------------------------------- access


async def test_access_roles_session_and_csrf(running):
    await running.send_hl7("a1", "ACC-1", "CT ABDOMEN PELVIS WITH CONTRAST")
    stored = await running.wait_suggested("ACC-1")
    async with httpx.AsyncClient(base_url=running.base) as http:
        # No credentials: a browser is sent to sign in, a script gets 401.
        browser = await http.get("/worklist", headers={"Accept": "text/html"})
        assert browser.status_code == 303
        assert browser.headers["location"] == "/worklist/login"
        assert (await http.get("/worklist/items")).status_code == 401
        # The integration role may not read the worklist, with a key or by signing in.
        assert (await http.get("/worklist", headers=key("integration"))).status_code == 403
        assert (await http.get("/worklist/items",
                               headers=key("integration"))).status_code == 403
        refused = await http.post("/worklist/login", data={"api_key": KEYS["integration"]})
        assert refused.status_code == 403 and "set-cookie" not in refused.headers
        assert (await http.post("/worklist/login",
                                data={"api_key": "wrong"})).status_code == 401
        # The API's own credentials read the data routes (scripts, monitoring).
        items = await http.get("/worklist/items", headers=key("radiologist"))
        assert items.status_code == 200 and items.json()["ids"] == [stored.id]
        assert items.headers["cache-control"] == "no-store"
        assert (await http.get("/worklist", headers=key("admin"))).status_code == 200

        # Sign in: the cookie is HttpOnly, SameSite=Strict, limited to /worklist.
        response = await http.post("/worklist/login", data={"api_key": KEYS["radiologist"]})
        cookie = response.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert "Path=/worklist" in cookie
        page = await http.get("/worklist")
        assert page.status_code == 200 and "ACC-1" in page.text and CLINICAL in page.text
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
        # The cookie is no credential for the API itself.
        assert (await http.get(f"/fhir/Task/{stored.message_id}")).status_code == 401
        # A verdict without (or with a wrong) CSRF token is refused and records nothing.
        body = {"suggestion_id": stored.id, "outcome": "accepted"}
        for headers in ({}, {"X-CSRF-Token": "forged"}):
            denied = await http.post("/worklist/verdict", json=body, headers=headers)
            assert denied.status_code == 403, denied.text
        assert running.store.feedback_rows() == []
        ok = await http.post("/worklist/verdict", json=body, headers={"X-CSRF-Token": csrf})
        assert ok.status_code == 201, ok.text
        [row] = running.store.feedback_rows()
        assert row.outcome == "accepted" and row.actor.startswith("api-key:")
        # A tampered cookie is no session.
        value = http.cookies["radproto_session"]
        http.cookies.set("radproto_session", value[:-2] + ("A" if value[-1] != "A" else "B"),
                         path="/worklist")
        assert (await http.get("/worklist/items")).status_code == 401
        # A script with a key needs no CSRF token (no ambient credentials).
        await running.send_hl7("a2", "ACC-2", "XR CHEST")
        second = await running.wait_suggested("ACC-2")
        rejected = await httpx.AsyncClient(base_url=running.base).post(
            "/worklist/verdict", headers=key("radiologist"),
            json={"suggestion_id": second.id, "outcome": "rejected",
                  "reason": "duplicate order"})
        assert rejected.status_code == 201, rejected.text
    rows = running.store.feedback_rows()
    assert [r.reason for r in rows] == ["", "duplicate order"]


async def test_clinical_text_views_are_audited_and_never_logged(running, caplog):
    await running.send_hl7("v1", "ACC-V1", "MRI BRAIN", reason="new onset seizures")
    await running.send_hl7("v2", "ACC-V2", "US ABDOMEN", reason="right upper quadrant pain")
    first = await running.wait_suggested("ACC-V1")
    second = await running.wait_suggested("ACC-V2")
    async with httpx.AsyncClient(base_url=running.base) as http:
        await sign_in(http)
        actor = f"api-key:{hash_api_key(KEYS['radiologist'])[:12]}"
        reads = running.store.audit_rows(actor=actor, action="read", entity_type="Order")
        assert {r.entity_id for r in reads} == {first.order_id, second.order_id}
        assert all(r.detail["view"] == "worklist" for r in reads)
        # A poll that already holds both rows shows no clinical text and audits nothing new.
        known = f"{first.id},{second.id}"
        poll = (await http.get(f"/worklist/items?known={known}")).json()
        assert poll["items"] == [] and set(poll["ids"]) == {first.id, second.id}
        assert len(running.store.audit_rows(actor=actor, action="read")) == 2
        # A poll for one unknown row shows (and audits) that one.
        poll = (await http.get(f"/worklist/items?known={first.id}")).json()
        assert [i["id"] for i in poll["items"]] == [second.id]
        assert poll["items"][0]["reason"] == "right upper quadrant pain"
        reads = running.store.audit_rows(actor=actor, action="read", entity_id=second.order_id)
        assert len(reads) == 2
        logins = running.store.audit_rows(action="login")
        assert [r.actor for r in logins] == [actor]
    text = "\n".join(r.getMessage() + json.dumps(getattr(r, "fields", {}), default=str)
                     for r in caplog.records)
    assert "seizures" not in text and "quadrant" not in text


async def test_filters_priority_order_and_abstention(running):
    # HL7 priority from OBR-27 / TQ1 is kept on the order: STAT goes first.
    await running.send_hl7("f1", "ACC-F1", "CT HEAD WITHOUT CONTRAST")
    await running.wait_suggested("ACC-F1")
    stat_message = orm_message("f2", placer="ACC-F2", exam="XR CHEST").decode()
    stat_message = stat_message.replace("ORC|NW|ACC-F2^RIS||||||||||",
                                        "ORC|NW|ACC-F2^RIS|||||^^^^^S|||||")
    client = MllpClient("127.0.0.1", running.service.context.listener.port)
    assert (await client.send(stat_message)).accepted
    await client.close()
    stat_order = await running.wait_suggested("ACC-F2")
    assert running.store.get_order(stat_order.order_id).order.priority == "stat"
    async with httpx.AsyncClient(base_url=running.base, headers=key("radiologist")) as http:
        items = (await http.get("/worklist/items")).json()["items"]
        assert [i["placer"] for i in items] == ["ACC-F2", "ACC-F1"]
        assert items[0]["priority"] == "stat" and items[0]["source"] == "HL7"
        assert len(items[0]["top3"]) == 3
        ct = (await http.get("/worklist/items?modality=CT")).json()["items"]
        assert [i["placer"] for i in ct] == ["ACC-F1"]
        assert (await http.get("/worklist/items?source=fhir")).json()["items"] == []
        assert (await http.get("/worklist/items?status=accepted")).json()["items"] == []
        # An accepted order leaves the default view and shows under "accepted".
        await http.post("/worklist/verdict", json={"suggestion_id": stat_order.id,
                                                   "outcome": "accepted"})
        assert [i["placer"] for i in (await http.get("/worklist/items")).json()["items"]] \
            == ["ACC-F1"]
        accepted = (await http.get("/worklist/items?status=accepted")).json()["items"]
        assert [(i["placer"], i["status"], i["final_protocol"]) for i in accepted] == \
            [("ACC-F2", "accepted", stat_order.protocol)]
        # A change names a catalog protocol (aliases resolve); junk is refused.
        [open_row] = (await http.get("/worklist/items")).json()["items"]
        bad = await http.post("/worklist/verdict", json={
            "suggestion_id": open_row["id"], "outcome": "changed", "protocol": "no such"})
        assert bad.status_code == 422
        no_reason = await http.post("/worklist/verdict", json={
            "suggestion_id": open_row["id"], "outcome": "rejected"})
        assert no_reason.status_code == 422


async def test_swagger_opens_without_credentials_but_operations_keep_their_roles(running):
    async with httpx.AsyncClient(base_url=running.base) as http:
        docs = await http.get("/docs")
        assert docs.status_code == 200 and "swagger-ui" in docs.text.lower()
        schema = await http.get("/openapi.json")
        assert schema.status_code == 200 and "/worklist/verdict" in schema.json()["paths"]
        assert (await http.get("/fhir/Task/x")).status_code == 401
        assert (await http.post("/feedback", json={})).status_code == 401
        assert (await http.post("/fhir/ServiceRequest", json={},
                                headers=key("radiologist"))).status_code == 403
        assert (await http.get("/audit", headers=key("radiologist"))).status_code == 403


# ---------------------------------------------------------------------------- write-back


async def test_verdicts_write_back_to_the_ris_and_the_ehr(running, fhir_server):
    """An HL7 order's verdict goes to the RIS as OMI^O23 with the final protocol in IPC-6;
    a FHIR order's moves its Task at the EHR (completed / rejected + chosen protocol)."""
    await running.send_hl7("w1", "ACC-W1", "CT ABDOMEN PELVIS WITH CONTRAST", version="2.5.1")
    hl7 = await running.wait_suggested("ACC-W1")
    await wait_for(lambda: len(running.ris.received) >= 1, what="the suggestion at the RIS")
    async with httpx.AsyncClient(base_url=running.base) as http:
        sr = {"resourceType": "ServiceRequest", "id": "sr-w2", "status": "active",
              "intent": "order", "priority": "urgent",
              "code": {"text": "MRI knee"}, "subject": {"reference": "#p"},
              "reasonCode": [{"text": "twisting injury, locking"}]}
        created = await http.post("/fhir/ServiceRequest", json=sr, headers=key("integration"))
        assert created.status_code == 201, created.text
        fhir = await running.wait_suggested("sr-w2")
        ehr = httpx.AsyncClient(base_url=running.fhir_base)
        ident = f"urn:radproto:suggestion|{fhir.message_id}"
        await wait_for(lambda: httpx.get(f"{running.fhir_base}/Task",
                                         params={"identifier": ident}).json().get("entry"),
                       what="the Task at the EHR")
        headers = key("radiologist")
        changed = await http.post("/worklist/verdict", headers=headers, json={
            "suggestion_id": fhir.id, "outcome": "changed",
            "protocol": "mri lumbar spine wo contrast"})  # any case: the catalog resolves it
        assert changed.status_code == 201, changed.text
        accepted = await http.post("/worklist/verdict", headers=headers,
                                   json={"suggestion_id": hl7.id, "outcome": "accepted"})
        assert accepted.status_code == 201

        def task_at_ehr():
            entries = httpx.get(f"{running.fhir_base}/Task",
                                params={"identifier": ident}).json().get("entry") or []
            task = entries[0]["resource"] if entries else {}
            return task if task.get("status") == "rejected" else None

        task = await wait_for(task_at_ehr, what="the verdict at the EHR")
        await ehr.aclose()
    assert task["businessStatus"]["coding"][0]["code"] == "changed"
    chosen = [o for o in task["output"]
              if o["type"]["coding"][0]["code"] == "chosen-protocol"]
    assert chosen[0]["valueCodeableConcept"]["text"] == "MRI Lumbar Spine WO Contrast"
    verdicts = await wait_for(lambda: [m for m in running.ris.received if "RP-VERDICT" in m],
                              what="the verdict at the RIS")
    [message] = verdicts
    segments = {s.split("|")[0]: s.split("|") for s in message.split("\r")}
    assert segments["MSH"][8].startswith("OMI^O23")
    assert segments["ORC"][1:3] == ["SC", "ACC-W1"]
    assert segments["IPC"][6].split("^")[1] == hl7.protocol  # IPC-6: the final protocol
    assert "accepted" in message.split("RP-VERDICT")[1].split("\r")[0]
    # The verdicts are training data, as the FHIR feedback is.
    out = running.tmp_path / "feedback.jsonl"
    assert main(["export-feedback", "--out", str(out), "--store",
                 f"sqlite:///{running.tmp_path / 'w.db'}"]) == 0
    labels = sorted(json.loads(line)["label"] for line in out.read_text().splitlines())
    assert labels == sorted(["MRI Lumbar Spine WO Contrast", hl7.protocol])


# ---------------------------------------------------------------------------- keys


def test_keys_create_list_revoke(tmp_path, capsys, monkeypatch):
    path = tmp_path / "conf" / "api-keys"
    monkeypatch.setenv("RADPROTO_SECURITY__API_KEYS_FILE", str(path))
    assert main(["keys", "create", "--role", "radiologist", "--name", "dr-who"]) == 0
    new_key = capsys.readouterr().out.strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert new_key not in path.read_text()
    from radproto.adapter.security import load_api_keys

    principal = load_api_keys(path).authenticate(new_key)
    assert principal is not None and principal.roles == {"radiologist"}
    assert main(["keys", "create", "--role", "integration", "--keys-file", str(path)]) == 0
    capsys.readouterr()
    assert main(["keys", "create", "--role", "admin", "--name", "dr-who"]) == 2  # taken
    assert main(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert "dr-who" in listing and "integration-1" in listing
    assert new_key not in listing and hash_api_key(new_key)[:12] in listing
    assert hash_api_key(new_key) not in listing  # a prefix only
    assert main(["keys", "revoke", "dr-who"]) == 0
    assert load_api_keys(path).authenticate(new_key) is None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert main(["keys", "revoke", "dr-who"]) == 2


class AbstainingClassifier(KeywordClassifier):
    """Abstains on every order (a model below its confidence threshold)."""

    def _one(self, order):
        suggestion = super()._one(order)
        return suggestion.model_copy(update={"abstained": True,
                                             "abstain_reason": "below threshold"})


async def test_an_abstention_is_marked_and_needs_a_chosen_protocol(running):
    running.service.context.worker.pipeline.classifier = AbstainingClassifier()
    await running.send_hl7("ab1", "ACC-AB1", "XR CHEST")
    stored = await running.wait_suggested("ACC-AB1")
    assert stored.suggestion.abstained
    async with httpx.AsyncClient(base_url=running.base, headers=key("radiologist")) as http:
        page = await http.get("/worklist")
        assert 'class="row abstained"' in page.text and "ABSTAINED" in page.text
        [row] = (await http.get("/worklist/items?status=abstained")).json()["items"]
        assert row["abstained"] and row["status"] == "abstained"
        assert (await http.get("/worklist/items?status=suggested")).json()["items"] == []
        refused = await http.post("/worklist/verdict", json={"suggestion_id": stored.id,
                                                             "outcome": "accepted"})
        assert refused.status_code == 422
        chosen = await http.post("/worklist/verdict", json={
            "suggestion_id": stored.id, "outcome": "changed", "protocol": stored.protocol})
        assert chosen.status_code == 201 and chosen.json()["outcome"] == "changed"


def test_probabilities_show_in_whole_percent_never_as_certainty():
    from radproto.adapter.worklist import percent

    assert [percent(p) for p in (0.999, 0.995, 0.994, 0.5, 0.126, 0.005, 0.0049, 0.0)] == [
        ">99%", ">99%", "99%", "50%", "13%", "1%", "<1%", "<1%"]
