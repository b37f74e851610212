"""CDS Hooks: discovery, order-select / order-sign on the third-party requests, the card and its
update action (shaped like the third-party responses), and the time budget."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from conftest import KeywordClassifier
from peers.harness import assert_valid_fhir
from test_fhir_api import Service

from radproto.adapter.fhir_client import FhirSettings

FIXTURES = Path(__file__).parents[1] / ".." / "shared" / "fixtures" / "third_party" / "fhir"
REQUESTS = sorted(p for p in FIXTURES.glob("*.json") if "_request_" in p.name)
RESPONSES = sorted(p for p in FIXTURES.glob("*.json") if "_response_" in p.name)


@pytest.fixture
async def service(tmp_path):
    svc = Service(tmp_path)
    yield svc
    await svc.close()


async def test_discovery_lists_both_hooks(service):
    body = (await service.http.get("/cds-services")).json()
    assert {s["hook"] for s in body["services"]} == {"order-select", "order-sign"}
    for s in body["services"]:
        assert s["id"] and s["description"] and s["prefetch"]["patient"]


@pytest.mark.parametrize("path", REQUESTS, ids=lambda p: p.name)
async def test_third_party_order_select_requests_get_a_card(service, path):
    request = json.loads(path.read_text())
    draft = request["context"]["draftOrders"]["entry"][0]["resource"]
    started = time.perf_counter()
    response = await service.http.post("/cds-services/radproto-order-select", json=request)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text
    [card] = response.json()["cards"]
    assert card["summary"].startswith("Suggested protocol: ") and len(card["summary"]) <= 140
    assert card["indicator"] == "info" and card["source"]["label"]
    assert card["detail"].count("\n| ") == 3  # the top 3
    [action] = card["suggestions"][0]["actions"]
    assert action["type"] == "update"
    updated = action["resource"]
    assert (updated["id"], updated["code"]) == (draft["id"], draft["code"])
    protocol = card["summary"].removeprefix("Suggested protocol: ").rsplit(" (", 1)[0]
    assert updated["orderDetail"][-1]["text"] == protocol
    assert protocol in service.classifier.catalog
    assert updated["note"][-1]["authorString"].startswith("radproto")
    assert_valid_fhir([updated])
    assert elapsed < 1.0  # an ordering screen does not wait for more


@pytest.mark.parametrize("path", RESPONSES, ids=lambda p: p.name)
async def test_our_update_action_has_the_shape_of_third_party_responses(service, path):
    theirs = json.loads(path.read_text())
    their_actions = theirs.get("extension", {}).get("systemActions", []) + [
        a for c in theirs["cards"] for s in c.get("suggestions", []) for a in s["actions"]]
    request = json.loads(REQUESTS[0].read_text())
    ours = (await service.http.post("/cds-services/radproto-order-select",
                                    json=request)).json()
    our_action = ours["cards"][0]["suggestions"][0]["actions"][0]
    for action in their_actions:
        assert action["type"] == our_action["type"] == "update"
        assert action["resource"]["resourceType"] == our_action["resource"]["resourceType"]
        assert action["resource"]["id"] == our_action["resource"]["id"]
        assert set(action["resource"]) - {"extension"} <= set(our_action["resource"])


async def test_order_sign_answers_every_draft_and_order_select_only_the_selection(service):
    request = json.loads(REQUESTS[0].read_text())
    second = json.loads(REQUESTS[1].read_text())["context"]["draftOrders"]["entry"][0]
    second = json.loads(json.dumps(second))
    second["resource"]["id"] = "second-draft"
    request["context"]["draftOrders"]["entry"].append(second)
    medication = {"resource": {"resourceType": "MedicationRequest", "id": "m1"}}
    request["context"]["draftOrders"]["entry"].append(medication)
    selected = (await service.http.post("/cds-services/radproto-order-select",
                                        json=request)).json()
    assert len(selected["cards"]) == 1
    signing = dict(request, hook="order-sign")
    signing["context"] = {k: v for k, v in request["context"].items() if k != "selections"}
    signed = (await service.http.post("/cds-services/radproto-order-sign",
                                      json=signing)).json()
    assert len(signed["cards"]) == 2


async def test_prefetched_patient_reaches_the_model(tmp_path):
    seen = []

    class Spy(KeywordClassifier):
        def score_orders(self, orders):
            seen.extend(orders)
            return super().score_orders(orders)

    svc = Service(tmp_path, classifier=Spy())
    try:
        request = json.loads(REQUESTS[0].read_text())
        request["prefetch"] = {"patient": {"resourceType": "Patient", "id": "MRI-59879846",
                                           "gender": "female", "birthDate": "1980-01-01"}}
        await svc.http.post("/cds-services/radproto-order-select", json=request)
        assert seen[0].patient_sex == "female" and seen[0].patient_age_years >= 40
    finally:
        await svc.close()


async def test_concurrent_hook_calls_share_one_model_pass(tmp_path):
    batches = []

    class Spy(KeywordClassifier):
        def score_orders(self, orders):
            batches.append(len(orders))
            return super().score_orders(orders)

    svc = Service(tmp_path, fhir=FhirSettings(cds_batch_wait_ms=300), classifier=Spy())
    try:
        calls = [json.loads(path.read_text()) for path in REQUESTS[:2]]
        assert len(calls) == 2
        answers = await asyncio.gather(*(
            svc.http.post("/cds-services/radproto-order-select", json=c) for c in calls))
        assert [len(a.json()["cards"]) for a in answers] == [1, 1]
        assert batches == [2]  # both drafts in one forward pass
        svc.context.fhir.stop()
    finally:
        await svc.close()


async def test_a_slow_model_gives_no_card_rather_than_a_late_one(tmp_path):
    slow = KeywordClassifier(delay_s=0.8)
    svc = Service(tmp_path, fhir=FhirSettings(cds_timeout_s=0.2), classifier=slow)
    try:
        request = json.loads(REQUESTS[0].read_text())
        started = time.perf_counter()
        response = await svc.http.post("/cds-services/radproto-order-select", json=request)
        assert response.status_code == 200 and response.json() == {"cards": []}
        assert time.perf_counter() - started < 0.6
        # The scoring went on; signing the same draft gets its card at once.
        await asyncio.sleep(1.0)
        signing = dict(request, hook="order-sign")
        started = time.perf_counter()
        signed = (await svc.http.post("/cds-services/radproto-order-sign",
                                      json=signing)).json()
        assert len(signed["cards"]) == 1 and time.perf_counter() - started < 0.2
        assert slow.calls == 1
    finally:
        await svc.close()


@pytest.mark.parametrize(("service_id", "change", "status"), [
    ("nope", {}, 404),
    ("radproto-order-select", {"hook": "order-sign"}, 400),
    ("radproto-order-select", {"context": None}, 400),
    ("radproto-order-select", {"hookInstance": None}, 400),
])
async def test_bad_hook_calls(service, service_id, change, status):
    request = json.loads(REQUESTS[0].read_text())
    request.update(change)
    response = await service.http.post(f"/cds-services/{service_id}", json=request)
    assert response.status_code == status
