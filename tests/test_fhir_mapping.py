"""ServiceRequest -> Order, Suggestion -> Task / Provenance / Annotation, history bundles.

The Tasks and Provenances are also checked by the FHIR.js validator (npm `fhir`, R4).
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from peers.harness import assert_valid_fhir, fhir_validate

from radproto.fhir_mappings.fhir import (
    AI_CONFIDENCE_URL,
    FhirValidationError,
    history_from_bundle,
    references_to_fetch,
    service_request_to_order,
    suggestion_to_annotation,
    suggestion_to_provenance,
    suggestion_to_task,
)
from radproto.model.catalog import CODE_SYSTEMS, default_catalog
from radproto.model.errors import MappingError
from radproto.model.order import OrderAction
from radproto.model.suggestion import ProtocolScore, Suggestion

FIXTURES = Path(__file__).parents[1] / ".." / "shared" / "fixtures" / "third_party" / "fhir"
CATALOG = default_catalog()


def make_suggestion(protocols=("CT Head WO Contrast", "CT Head W and WO Contrast",
                               "CTA Head and Neck"), probs=(0.81, 0.12, 0.05),
                    abstained=False) -> Suggestion:
    rest = [n for n in CATALOG.names if n not in protocols]
    left = (1 - sum(probs)) / len(rest)
    scores = [ProtocolScore(protocol=p, probability=q) for p, q in zip(protocols, probs,
                                                                      strict=True)]
    scores += [ProtocolScore(protocol=n, probability=left) for n in rest]
    return Suggestion(scores=tuple(scores), protocol=protocols[0], confidence=probs[0],
                      abstained=abstained, abstain_reason="below 0.5" if abstained else "",
                      model_version="m-test-1", catalog_version=CATALOG.version,
                      prompt_version="p1",
                      created_at=datetime(2026, 11, 28, 12, 0, tzinfo=UTC))


def full_service_request() -> dict:
    return {
        "resourceType": "ServiceRequest",
        "id": "sr-1",
        "contained": [
            {"resourceType": "Condition", "id": "dx1",
             "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "R51.9",
                                  "display": "Headache, unspecified"}]},
             "subject": {"reference": "Patient/p1"}},
            {"resourceType": "Observation", "id": "hx", "status": "final",
             "code": {"text": "history"}, "valueString": "fall on warfarin"},
        ],
        "identifier": [
            {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                  "code": "PLAC"}]}, "value": "PL-77"},
            {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                  "code": "ACSN"}]}, "value": "ACC-9"},
        ],
        "status": "active",
        "intent": "order",
        "priority": "stat",
        "code": {"coding": [{"system": "http://loinc.org", "code": "30799-1"}],
                 "text": "CT head without contrast"},
        "orderDetail": [{"text": "no contrast: eGFR 25"}],
        "subject": {"reference": "Patient/p1"},
        "authoredOn": "2026-03-01T10:00:00Z",
        "reasonCode": [{"text": "sudden severe headache"}],
        "reasonReference": [{"reference": "#dx1"}, {"reference": "Condition/c2"}],
        "supportingInfo": [{"reference": "#hx"}],
        "note": [{"text": "patient is claustrophobic"},
                 {"authorString": "radproto (AI protocol suggestion)", "text": "old suggestion"}],
    }


PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1950-03-02"}
CONDITION = {"resourceType": "Condition", "id": "c2", "subject": {"reference": "Patient/p1"},
             "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003",
                                  "display": "Hypertension"}]}}


def test_service_request_maps_every_element():
    order = service_request_to_order(full_service_request(), patient=PATIENT,
                                     conditions={"Condition/c2": CONDITION}, raw_message_id="m1")
    assert order.ordered_exam_code == "30799-1"
    assert order.ordered_exam_system == "http://loinc.org"
    assert order.ordered_exam_text == "CT head without contrast"
    assert order.priority == "stat"
    assert order.placer_order_number == "PL-77" and order.accession_number == "ACC-9"
    assert order.patient_id == "p1" and order.patient_sex == "female"
    assert order.patient_birth_date == date(1950, 3, 2)
    assert order.patient_age_years == 75  # at authoredOn, one day before the 76th birthday
    assert order.reason_for_study == "sudden severe headache"
    assert [d.code for d in order.diagnoses] == ["R51.9", "38341003"]
    assert order.clinical_history == "fall on warfarin"
    assert order.notes == ("patient is claustrophobic", "no contrast: eGFR 25")  # ours skipped
    assert order.extra["fhir_id"] == "sr-1"
    fields = order.prompt_fields()
    assert fields["history"].startswith("75 y/o female; sudden severe headache")


def test_references_to_fetch_lists_what_is_not_contained():
    assert references_to_fetch(full_service_request()) == ["Patient/p1", "Condition/c2"]


def test_revoked_request_is_a_cancel():
    sr = dict(full_service_request(), status="revoked")
    assert service_request_to_order(sr).action == OrderAction.CANCEL


@pytest.mark.parametrize(("element", "value", "location"), [
    ("status", "bogus", "ServiceRequest.status"),
    ("intent", "wish", "ServiceRequest.intent"),
    ("priority", "whenever", "ServiceRequest.priority"),
    ("subject", None, "ServiceRequest.subject"),
    ("code", None, "ServiceRequest.code"),
    ("reasonCode", "not a list", "ServiceRequest.reasonCode"),
    ("bogusElement", 1, "ServiceRequest.bogusElement"),
])
def test_invalid_request_names_the_element(element, value, location):
    sr = full_service_request()
    if value is None:
        sr.pop(element)
    else:
        sr[element] = value
    with pytest.raises(FhirValidationError) as info:
        service_request_to_order(sr)
    assert location in [i.location for i in info.value.issues]
    assert isinstance(info.value, MappingError)


def test_wrong_resource_type_is_refused():
    with pytest.raises(FhirValidationError) as info:
        service_request_to_order({"resourceType": "Patient", "id": "x"})
    assert info.value.issues[0].location == "resourceType"


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.json")), ids=lambda p: p.name)
def test_every_third_party_service_request_maps(path):
    data = json.loads(path.read_text())
    if data.get("resourceType") == "ServiceRequest":
        requests = [data]
    elif "context" in data:  # a CDS Hooks request: its draft orders
        requests = [e["resource"] for e in data["context"]["draftOrders"]["entry"]]
    else:  # a CDS Hooks response: the ServiceRequests its actions carry
        actions = data.get("extension", {}).get("systemActions", []) + [
            a for card in data.get("cards", []) for s in card.get("suggestions", [])
            for a in s.get("actions", [])]
        requests = [a["resource"] for a in actions]
    assert requests
    for sr in requests:
        order = service_request_to_order(sr)
        assert order.ordered_exam_text and order.patient_id
        assert order.prompt_fields()["ordered_exam"]


def test_task_carries_the_suggestion_with_ai_labels_and_codes():
    order = service_request_to_order(full_service_request(), patient=PATIENT)
    task = suggestion_to_task(make_suggestion(), order, CATALOG,
                              service_request_ref="ServiceRequest/sr-1",
                              patient_ref="Patient/p1", task_id="t1")
    assert (task["status"], task["intent"]) == ("requested", "proposal")
    assert task["focus"] == {"reference": "ServiceRequest/sr-1"}
    assert task["basedOn"] == [{"reference": "ServiceRequest/sr-1"}]
    assert task["for"] == {"reference": "Patient/p1"}
    assert task["code"]["text"] == "protocol suggestion"
    assert task["meta"]["security"][0]["code"] == "AIAST"
    assert task["extension"] == [{"url": AI_CONFIDENCE_URL, "valueDecimal": 0.81}]
    assert task["businessStatus"]["coding"][0]["code"] == "suggested"
    first, *top3 = task["output"]
    concept = first["valueCodeableConcept"]
    assert concept["text"] == "CT Head WO Contrast"
    assert {(c["system"], c["code"]) for c in concept["coding"]} == {
        (CODE_SYSTEMS["loinc"], "30799-1"), (CODE_SYSTEMS["radlex_rpid"], "RPID22"),
        (CODE_SYSTEMS["cpt"], "70450"), (CODE_SYSTEMS["local"], "RP-CT-001")}
    assert [o["valueCodeableConcept"]["text"] for o in top3] == [
        "CT Head WO Contrast", "CT Head W and WO Contrast", "CTA Head and Neck"]
    assert [o["extension"][0]["valueDecimal"] for o in top3] == [0.81, 0.12, 0.05]


def test_abstained_task_lists_candidates_only():
    order = service_request_to_order(full_service_request())
    task = suggestion_to_task(make_suggestion(probs=(0.4, 0.35, 0.2), abstained=True), order,
                              CATALOG, service_request_ref="ServiceRequest/sr-1",
                              patient_ref="Patient/p1", task_id="t2")
    assert task["businessStatus"]["coding"][0]["code"] == "abstained"
    assert {o["type"]["coding"][0]["code"] for o in task["output"]} == {"candidate-protocol"}


def test_task_provenance_and_annotation_pass_the_fhir_js_validator():
    order = service_request_to_order(full_service_request(), patient=PATIENT)
    suggestion = make_suggestion()
    task = suggestion_to_task(suggestion, order, CATALOG,
                              service_request_ref="ServiceRequest/sr-1",
                              patient_ref="Patient/p1", task_id="t1")
    abstained = suggestion_to_task(make_suggestion(abstained=True), order, CATALOG,
                                   service_request_ref="ServiceRequest/sr-1", patient_ref="",
                                   task_id="t2")
    provenance = suggestion_to_provenance(suggestion, target_ref="Task/t1",
                                          service_request_ref="ServiceRequest/sr-1")
    assert provenance["agent"][0]["who"]["reference"] == "#model"
    device = provenance["contained"][0]
    assert device["resourceType"] == "Device"
    assert {"model": "m-test-1"}.items() <= {
        v["type"]["text"]: v["value"] for v in device["version"]}.items()
    annotated = dict(full_service_request(), note=[suggestion_to_annotation(suggestion)])
    assert_valid_fhir([task, abstained, provenance, annotated])


def test_the_validator_is_not_a_rubber_stamp():
    verdict = fhir_validate([{"resourceType": "Task", "status": "bogus", "intent": "proposal"}])
    assert not verdict[0]["valid"]


def test_annotation_is_not_fed_back_as_a_note():
    suggestion = make_suggestion()
    sr = dict(full_service_request(), note=[suggestion_to_annotation(suggestion)])
    assert "CT Head WO Contrast" in sr["note"][0]["text"]
    assert service_request_to_order(sr).notes == ("no contrast: eGFR 25",)


def test_history_from_bundle_pairs_orders_with_completed_tasks():
    sr1 = full_service_request()
    sr2 = dict(full_service_request(), id="sr-2", contained=[], reasonReference=[],
               supportingInfo=[])
    sr3 = dict(sr2, id="sr-3")
    done = {"resourceType": "Task", "id": "t1", "status": "completed", "intent": "order",
            "focus": {"reference": "ServiceRequest/sr-1"},
            "output": [{"type": {"text": "protocol"},
                        "valueCodeableConcept": {"text": "CT Head W and WO Contrast"}}]}
    open_task = dict(done, id="t0", status="requested",
                     output=[{"type": {"text": "protocol"},
                              "valueCodeableConcept": {"text": "CTA Head and Neck"}}])
    coded = {"resourceType": "Task", "id": "t2", "status": "completed", "intent": "order",
             "basedOn": [{"reference": "urn:uuid:sr2"}],
             "output": [{"type": {"text": "protocol"}, "valueCodeableConcept": {
                 "coding": [{"system": CODE_SYSTEMS["local"], "code": "RP-CT-003"}]}}]}
    # Our own Task after the radiologist chose another protocol (see GET /fhir/Task).
    changed = suggestion_to_task(make_suggestion(), service_request_to_order(sr3), CATALOG,
                                 service_request_ref="ServiceRequest/sr-3", patient_ref="",
                                 task_id="t3")
    changed["status"] = "rejected"
    changed["output"].append({
        "type": {"coding": [{"system": "urn:radproto:task-output", "code": "chosen-protocol"}]},
        "valueCodeableConcept": {"text": "MRI Brain WO Contrast"}})
    proposal = dict(changed, id="t4", status="requested",
                    focus={"reference": "ServiceRequest/sr-4"}, basedOn=[])
    sr4 = dict(sr2, id="sr-4")
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:p1", "resource": PATIENT},
        {"resource": CONDITION},
        {"resource": open_task}, {"resource": sr1}, {"resource": done},
        {"fullUrl": "urn:uuid:sr2", "resource": sr2}, {"resource": coded},
        {"resource": sr3}, {"resource": changed}, {"resource": sr4}, {"resource": proposal},
    ]}
    pairs = list(history_from_bundle(bundle))
    assert [(o.extra["fhir_id"], p) for o, p in pairs] == [
        ("sr-1", "CT Head W and WO Contrast"), ("sr-2", "RP-CT-003"),
        ("sr-3", "MRI Brain WO Contrast"), ("sr-4", None)]  # a proposal is no decision
    first = pairs[0][0]
    assert first.patient_sex == "female"  # Patient/p1 found in the bundle
    assert [d.code for d in first.diagnoses] == ["R51.9", "38341003"]
    assert CATALOG.resolve(pairs[1][1]) == "CTA Head and Neck"


def test_history_from_bundle_names_the_bad_entry():
    bad = dict(full_service_request(), status="bogus")
    with pytest.raises(MappingError, match=r"Bundle.entry\[1\]"):
        list(history_from_bundle({"resourceType": "Bundle", "type": "collection",
                                  "entry": [{"resource": PATIENT}, {"resource": bad}]}))
