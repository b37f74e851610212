"""The FHIR intake API end to end: the real store (SQLite), worker and pipeline, the app of
http_app.create_app, a keyword test classifier standing in for the language model."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path

import httpx
import pytest
from conftest import KeywordClassifier
from peers.harness import assert_valid_fhir

from radproto.adapter.fhir_client import FhirSettings
from radproto.adapter.fhir_writeback import fhir_writeback_builders
from radproto.adapter.http_app import ServiceContext, create_app
from radproto.adapter.pipeline import Pipeline
from radproto.adapter.settings import ServiceSettings
from radproto.adapter.store import open_store
from radproto.adapter.worker import Worker

FIXTURES = Path(__file__).parents[1] / ".." / "shared" / "fixtures" / "third_party" / "fhir"
FHIR_JSON = {"Content-Type": "application/fhir+json"}


class Service:
    """A running service without sockets: store + worker thread + app (ASGI)."""

    def __init__(self, tmp_path: Path, fhir: FhirSettings | None = None,
                 ehr=None, classifier=None) -> None:
        url = f"sqlite:///{tmp_path / 'radproto.db'}"
        self.classifier = classifier or KeywordClassifier()
        self.store = open_store(url)
        self.context = ServiceContext(settings=ServiceSettings(store=url), store=self.store,
                                      catalog=self.classifier.catalog,
                                      classifier=self.classifier, model_status="ready")
        self.context.fhir_settings = fhir or FhirSettings(sync_wait_s=5)
        if ehr is not None:
            self.context.fhir_client = ehr
        self.pipeline = Pipeline(self.store, self.classifier,
                                 outbox_builders=fhir_writeback_builders(self.context))
        self.context.worker = Worker(self.store, self.pipeline, poll_s=0.05).start()
        self.app = create_app(self.context, parts=("fhir",))
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app),
                                      base_url="http://radproto.test")

    async def close(self) -> None:
        await self.http.aclose()
        relay = self.context.fhir_relay
        if relay is not None:
            await relay.stop()
        self.context.worker.stop()
        self.store.close()


@pytest.fixture
async def service(tmp_path):
    svc = Service(tmp_path)
    yield svc
    await svc.close()


def di_request() -> dict:
    return json.loads((FIXTURES / "01_r4spec_servicerequest-example-di.json").read_text())


def head_ct(sr_id: str = "sr-head", **changes) -> dict:
    sr = {"resourceType": "ServiceRequest", "id": sr_id, "status": "active", "intent": "order",
          "subject": {"reference": "Patient/p1"},
          "code": {"text": "CT head without contrast"},
          "reasonCode": [{"text": "fall, head trauma"}]}
    sr.update(changes)
    return sr


async def test_post_service_request_answers_with_the_task(service):
    response = await service.http.post("/fhir/ServiceRequest", json=di_request(),
                                       headers=FHIR_JSON)
    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    task = response.json()
    assert response.headers["location"] == f"/fhir/Task/{task['id']}"
    assert task["focus"] == {"reference": "ServiceRequest/di"}
    assert task["for"] == {"reference": "Patient/dicom"}
    assert (task["status"], task["intent"]) == ("requested", "proposal")
    assert task["output"][0]["valueCodeableConcept"]["text"] in service.classifier.catalog
    again = await service.http.get(f"/fhir/Task/{task['id']}")
    assert again.json() == task
    found = (await service.http.get("/fhir/Task",
                                    params={"focus": "ServiceRequest/di"})).json()
    assert found["type"] == "searchset" and [e["resource"]["id"] for e in found["entry"]] == [
        task["id"]]
    assert_valid_fhir([task, found])


async def test_the_same_request_twice_is_one_task(service):
    first = (await service.http.post("/fhir/ServiceRequest", json=head_ct())).json()
    second = (await service.http.post("/fhir/ServiceRequest", json=head_ct())).json()
    assert first["id"] == second["id"]
    assert service.classifier.calls == 1


async def test_an_updated_request_supersedes_the_old_task(service):
    first = (await service.http.post("/fhir/ServiceRequest", json=head_ct())).json()
    changed = head_ct(code={"text": "MR brain with and without contrast"})
    second = (await service.http.put("/fhir/ServiceRequest/sr-head", json=changed)).json()
    assert second["id"] != first["id"]
    old = (await service.http.get(f"/fhir/Task/{first['id']}")).json()
    assert old["status"] == "cancelled"
    assert old["businessStatus"]["coding"][0]["code"] == "superseded"
    bundle = (await service.http.get("/fhir/Task?focus=ServiceRequest/sr-head")).json()
    assert {e["resource"]["id"] for e in bundle["entry"]} == {first["id"], second["id"]}


async def test_respond_async_gives_202_and_a_location_to_poll(service):
    response = await service.http.post("/fhir/ServiceRequest", json=head_ct("sr-async"),
                                       headers={"Prefer": "respond-async", **FHIR_JSON})
    assert response.status_code == 202
    assert response.json()["resourceType"] == "OperationOutcome"
    location = response.headers["location"]
    assert_valid_fhir([(await service.http.get(location)).json()])  # pending or done: a Task
    for _ in range(200):
        task = (await service.http.get(location)).json()
        if task["status"] == "requested":
            break
        assert task["status"] in ("received", "in-progress")
        await asyncio.sleep(0.02)
    assert task["status"] == "requested" and task["focus"]["reference"] == "ServiceRequest/sr-async"


@pytest.mark.parametrize(("change", "status", "element"), [
    ({"status": "bogus"}, 422, "ServiceRequest.status"),
    ({"intent": "wish"}, 422, "ServiceRequest.intent"),
    ({"priority": "now"}, 422, "ServiceRequest.priority"),
    ({"code": None}, 422, "ServiceRequest.code"),
    ({"subject": None}, 422, "ServiceRequest.subject"),
    ({"reasonCode": {"text": "not a list"}}, 400, "ServiceRequest.reasonCode"),
    ({"colour": "blue"}, 400, "ServiceRequest.colour"),
    ({"resourceType": "Patient"}, 400, "resourceType"),
])
async def test_an_invalid_request_gets_an_outcome_naming_the_element(service, change, status,
                                                                     element):
    sr = head_ct()
    for key, value in change.items():
        if value is None:
            sr.pop(key)
        else:
            sr[key] = value
    response = await service.http.post("/fhir/ServiceRequest", json=sr)
    assert response.status_code == status, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert element in [e for issue in outcome["issue"] for e in issue.get("expression", [])]
    assert service.store.message_counts() == {}  # nothing stored


async def test_a_body_that_is_not_json_is_a_400(service):
    response = await service.http.post("/fhir/ServiceRequest", content=b"{not json",
                                       headers=FHIR_JSON)
    assert response.status_code == 400
    assert response.json()["issue"][0]["severity"] == "error"


async def test_transaction_bundle_of_service_requests(service):
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:a", "resource": head_ct("tx-1"),
         "request": {"method": "POST", "url": "ServiceRequest"}},
        {"fullUrl": "urn:uuid:b", "resource": di_request(),
         "request": {"method": "POST", "url": "ServiceRequest"}},
    ]}
    response = await service.http.post("/fhir", json=bundle, headers=FHIR_JSON)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["type"] == "transaction-response"
    assert [e["response"]["status"] for e in body["entry"]] == ["201 Created"] * 2
    assert [e["resource"]["focus"]["reference"] for e in body["entry"]] == [
        "ServiceRequest/tx-1", "ServiceRequest/di"]
    assert_valid_fhir([body])


async def test_a_transaction_with_one_bad_entry_stores_nothing(service):
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": head_ct("tx-ok"), "request": {"method": "POST", "url": "ServiceRequest"}},
        {"resource": head_ct("tx-bad", status="bogus"),
         "request": {"method": "POST", "url": "ServiceRequest"}},
    ]}
    response = await service.http.post("/fhir", json=bundle)
    assert response.status_code == 422
    expressions = [e for i in response.json()["issue"] for e in i["expression"]]
    assert "Bundle.entry[1].resource.ServiceRequest.status" in expressions
    assert service.store.message_counts() == {}


async def test_a_batch_answers_each_entry(service):
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": head_ct("b-ok"), "request": {"method": "POST", "url": "ServiceRequest"}},
        {"resource": head_ct("b-bad", intent="wish"),
         "request": {"method": "POST", "url": "ServiceRequest"}},
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST",
                                                               "url": "Patient"}},
    ]}
    body = (await service.http.post("/fhir", json=bundle)).json()
    assert body["type"] == "batch-response"
    assert [e["response"]["status"][:3] for e in body["entry"]] == ["201", "422", "422"]
    assert "ServiceRequest.intent" in json.dumps(body["entry"][1]["response"]["outcome"])


async def test_capability_statement(service):
    response = await service.http.get("/fhir/metadata")
    statement = response.json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    assert_valid_fhir([statement])


async def test_unknown_task_is_404_with_an_outcome(service):
    response = await service.http.get("/fhir/Task/nope")
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"


async def test_feedback_by_task_update_and_by_post(service):
    task = (await service.http.post("/fhir/ServiceRequest", json=head_ct())).json()
    suggested = task["output"][0]["valueCodeableConcept"]["text"]

    accepted = copy.deepcopy(task)
    accepted["status"] = "completed"
    response = await service.http.put(f"/fhir/Task/{task['id']}", json=accepted)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed"

    other = "MRI Brain W and WO Contrast"
    assert other in service.classifier.catalog and other != suggested
    rejected = copy.deepcopy(task)
    rejected["status"] = "rejected"
    rejected["output"].append({
        "type": {"coding": [{"system": "urn:radproto:task-output", "code": "chosen-protocol"}]},
        "valueCodeableConcept": {"text": other}})
    view = (await service.http.put(f"/fhir/Task/{task['id']}", json=rejected)).json()
    assert view["status"] == "rejected"
    assert view["output"][-1]["valueCodeableConcept"]["text"] == other

    rows = service.store.feedback_rows()
    assert [(r.outcome, r.protocol) for r in rows] == [("accepted", suggested),
                                                       ("changed", other)]
    # The same update again records nothing new.
    await service.http.put(f"/fhir/Task/{task['id']}", json=rejected)
    assert len(service.store.feedback_rows()) == 2

    posted = await service.http.post("/feedback", json={"task_id": task["id"],
                                                        "outcome": "rejected"})
    assert posted.status_code == 201 and posted.json()["outcome"] == "rejected"
    bad = await service.http.post("/feedback", json={"task_id": task["id"],
                                                     "outcome": "changed",
                                                     "protocol": "No Such Protocol"})
    assert bad.status_code == 422 and bad.json()["field"] == "protocol"


async def test_a_task_update_that_records_nothing_is_refused(service):
    task = (await service.http.post("/fhir/ServiceRequest", json=head_ct())).json()
    response = await service.http.put(f"/fhir/Task/{task['id']}",
                                      json=dict(task, status="in-progress"))
    assert response.status_code == 422
    assert response.json()["issue"][0]["expression"] == ["Task.status"]
    unknown = dict(task, status="rejected", statusReason={"text": "Ultrasound of the moon"})
    response = await service.http.put(f"/fhir/Task/{task['id']}", json=unknown)
    assert response.status_code == 422
    assert response.json()["issue"][0]["expression"] == ["Task.statusReason"]
    assert service.store.feedback_rows() == []


async def test_behind_the_security_middleware_roles_apply(tmp_path):
    """The app with every extension (security first): who may call the FHIR routes."""
    import hashlib

    keys = {"integration": "int-key-0123456789", "radiologist": "rad-key-0123456789"}
    key_file = tmp_path / "api-keys"
    key_file.write_text("".join(f"{role} {hashlib.sha256(k.encode()).hexdigest()}\n"
                                for role, k in keys.items()))
    svc = Service(tmp_path)
    try:
        svc.context.settings.security = svc.context.settings.security.model_copy(
            update={"api_keys_file": key_file})
        app = create_app(svc.context)  # every part, security included
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://radproto.test") as http:
            assert (await http.post("/fhir/ServiceRequest", json=head_ct())).status_code == 401
            denied = await http.post("/fhir/ServiceRequest", json=head_ct(),
                                     headers={"X-API-Key": keys["radiologist"]})
            assert denied.status_code == 403
            task = await http.post("/fhir/ServiceRequest", json=head_ct(),
                                   headers={"X-API-Key": keys["integration"]})
            assert task.status_code == 201
            done = dict(task.json(), status="completed")
            response = await http.put(f"/fhir/Task/{done['id']}", json=done,
                                      headers={"X-API-Key": keys["radiologist"]})
            assert response.status_code == 200
        [row] = svc.store.feedback_rows()
        assert row.actor.startswith("api-key:")  # the caller, from the middleware
    finally:
        await svc.close()
