"""Subscription notifications (R5 Backport IG, R4 rest-hook) and the write-back loop, against a
real FHIR server (Medplum's fhir-router, tests/peers): the EHR holds the orders, notifies us,
we read what we need, classify, and write Task + Provenance (+ a note) back."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from peers.harness import assert_valid_fhir, medplum_server
from test_fhir_api import Service, head_ct

from radproto.adapter.fhir_client import FhirClient, FhirSettings
from radproto.adapter.subscriptions import parse_notification
from radproto.fhir_mappings.fhir import FhirValidationError

SUBSCRIPTION = "Subscription/radproto-orders"


@pytest.fixture(scope="module")
def fhir_server():
    peer = medplum_server()
    yield peer
    peer.stop()


@pytest.fixture
async def ehr(fhir_server):
    client = FhirClient(fhir_server.base + "/fhir", backoff=0.01, retries=1)
    yield client


@pytest.fixture
async def service(tmp_path, ehr):
    settings = FhirSettings(server_url=ehr.base_url, writeback="both", sync_wait_s=5,
                            subscription_criteria={"status": "active"})
    svc = Service(tmp_path, fhir=settings, ehr=ehr)
    yield svc
    await svc.close()


def now() -> str:
    return datetime.now(UTC).isoformat()


def notification(kind: str, since_start: int, events=(), resources=(), references=()) -> dict:
    """A backport (R4) notification Bundle: Parameters status first, then the payload."""
    parameters = [
        {"name": "subscription", "valueReference": {"reference": SUBSCRIPTION}},
        {"name": "topic", "valueCanonical": "http://example.org/topic/imaging-orders"},
        {"name": "status", "valueCode": "active"},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(since_start)},
    ]
    for number, focus, stamp in events:
        part = [{"name": "event-number", "valueString": str(number)},
                {"name": "timestamp", "valueInstant": stamp}]
        if focus:
            part.append({"name": "focus", "valueReference": {"reference": focus}})
        parameters.append({"name": "notification-event", "part": part})
    entries = [{"fullUrl": "urn:uuid:status", "resource": {
        "resourceType": "Parameters", "parameter": parameters}}]
    entries += [{"fullUrl": f"{r['resourceType']}/{r['id']}", "resource": r} for r in resources]
    entries += [{"fullUrl": ref, "request": {"method": "PUT", "url": ref.split("/fhir/")[-1]}}
                for ref in references]
    return {"resourceType": "Bundle", "type": "history", "timestamp": now(), "entry": entries}


async def create_order(ehr: FhirClient, **changes) -> dict:
    """A Patient, a Condition and an active ServiceRequest on the EHR; the stored request."""
    patient = (await ehr.request("POST", "Patient", json_body={
        "resourceType": "Patient", "gender": "male", "birthDate": "1961-06-01"})).json()
    condition = (await ehr.request("POST", "Condition", json_body={
        "resourceType": "Condition", "subject": {"reference": f"Patient/{patient['id']}"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "25064002",
                             "display": "Headache"}]}})).json()
    sr = head_ct("x", subject={"reference": f"Patient/{patient['id']}"},
                 reasonReference=[{"reference": f"Condition/{condition['id']}"}], **changes)
    sr.pop("id")
    return (await ehr.request("POST", "ServiceRequest", json_body=sr)).json()


async def notify(service: Service, bundle: dict, status: int = 200) -> dict:
    response = await service.http.post("/fhir/$subscription-notification", json=bundle,
                                       headers={"Content-Type": "application/fhir+json"})
    assert response.status_code == status, response.text
    return response.json()


async def wait_for_task(ehr: FhirClient, sr_id: str, timeout: float = 15.0) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        tasks = await ehr.search("Task", {"focus": f"ServiceRequest/{sr_id}"})
        if tasks:
            return tasks[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no Task for ServiceRequest/{sr_id} on the EHR")


async def settle(service: Service, timeout: float = 15.0) -> None:
    """Until the worker has processed every stored message."""
    for _ in range(int(timeout / 0.02)):
        counts = service.store.message_counts()
        if not counts.get("pending") and not counts.get("processing"):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the worker did not finish: {counts}")


async def stored_order(service: Service, sr_id: str):
    await settle(service)
    row = service.store.get_order(sr_id)
    assert row is not None, f"ServiceRequest/{sr_id} was not ingested"
    return row.order


async def test_id_only_notification_reads_the_order_and_writes_back(service, ehr):
    sr = await create_order(ehr)
    await notify(service, notification("handshake", 0))
    await notify(service, notification(
        "event-notification", 1, events=[(1, f"ServiceRequest/{sr['id']}", now())],
        references=[f"{ehr.base_url}/ServiceRequest/{sr['id']}"]))
    order = await stored_order(service, sr["id"])
    # The Patient and the Condition were read from the EHR for the prompt.
    assert (order.patient_sex, order.diagnoses[0].code) == ("male", "25064002")
    task = await wait_for_task(ehr, sr["id"])
    assert task["basedOn"] == [{"reference": f"ServiceRequest/{sr['id']}"}]
    provenance = await ehr.search("Provenance", {"target": f"Task/{task['id']}"})
    assert len(provenance) == 1
    for _ in range(50):  # the note is written after the Task
        updated = await ehr.read(f"ServiceRequest/{sr['id']}")
        if updated.get("note"):
            break
        await asyncio.sleep(0.1)
    assert updated["note"][-1]["authorString"].startswith("radproto")
    assert_valid_fhir([task, provenance[0], updated])
    # Our note comes back as an update of the order: not classified (nor written) again.
    await notify(service, notification(
        "event-notification", 2, events=[(2, f"ServiceRequest/{sr['id']}", now())],
        resources=[updated]))
    assert service.store.message_counts() == {"done": 1}

    # The radiologist accepts it in the EHR; the Task update comes back by notification.
    task["status"] = "completed"
    task = (await ehr.request("PUT", f"Task/{task['id']}", json_body=task)).json()
    await notify(service, notification(
        "event-notification", 3, events=[(3, f"Task/{task['id']}", now())], resources=[task]))
    [feedback] = service.store.feedback_rows()
    assert (feedback.outcome, feedback.actor) == ("accepted", "fhir-subscription")


async def test_a_revoked_order_cancels_its_task_at_the_ehr(service, ehr):
    """The EHR revokes an order whose suggestion was already written back: the Task leaves
    the radiologist's worklist (cancelled, businessStatus withdrawn); nothing is re-sent."""
    sr = await create_order(ehr)
    await notify(service, notification(
        "event-notification", 1, events=[(1, f"ServiceRequest/{sr['id']}", now())],
        resources=[sr]))
    task = await wait_for_task(ehr, sr["id"])
    assert task["status"] == "requested"
    for _ in range(100):  # the write-back (Task, Provenance, note) is sent
        if {r.status for r in service.store.outbox_rows(destination_kind="fhir")} == {"sent"}:
            break
        await asyncio.sleep(0.05)
    revoked = dict(await ehr.read(f"ServiceRequest/{sr['id']}"), status="revoked")
    revoked = (await ehr.request("PUT", f"ServiceRequest/{sr['id']}", json_body=revoked)).json()
    await notify(service, notification(
        "event-notification", 2, events=[(2, f"ServiceRequest/{sr['id']}", now())],
        resources=[revoked]))
    for _ in range(150):
        task = await ehr.read(f"Task/{task['id']}")
        if task["status"] == "cancelled":
            break
        await asyncio.sleep(0.1)
    assert task["status"] == "cancelled"
    assert task["businessStatus"]["coding"][0]["code"] == "withdrawn"
    assert_valid_fhir([task])
    rows = service.store.outbox_rows(destination_kind="fhir")
    assert [r.status for r in rows] == ["sent", "sent"]  # the write-back, its retraction
    assert '"retract"' in rows[-1].payload
    assert len(await ehr.search("Task", {"focus": f"ServiceRequest/{sr['id']}"})) == 1


async def test_full_resource_notification_needs_no_read(service, ehr):
    sr = await create_order(ehr)
    await notify(service, notification(
        "event-notification", 1, events=[(1, f"ServiceRequest/{sr['id']}", now())],
        resources=[sr]))
    assert (await stored_order(service, sr["id"])).ordered_exam_text == "CT head without contrast"


async def test_a_gap_in_event_numbers_triggers_a_requery(service, ehr):
    first = await create_order(ehr)
    await notify(service, notification("handshake", 0))
    await notify(service, notification(
        "event-notification", 1, events=[(1, f"ServiceRequest/{first['id']}", now())],
        references=[f"ServiceRequest/{first['id']}"]))
    lost = await create_order(ehr)  # event 2 never arrives
    third = await create_order(ehr)
    await notify(service, notification(
        "event-notification", 3, events=[(3, f"ServiceRequest/{third['id']}", now())],
        references=[f"ServiceRequest/{third['id']}"]))
    assert service.context.subscriptions.requeries == 1
    for sr in (first, lost, third):
        await stored_order(service, sr["id"])
    # The re-query met the orders already stored again; none was classified twice.
    assert service.store.message_counts() == {"done": 3}


async def test_the_event_count_survives_a_restart(service, ehr):
    """The store keeps each subscription's last event: after a restart event 3 follows
    event 2 (no needless re-query), and a real gap re-queries from the last event's time,
    however long the service was down."""
    await notify(service, notification("handshake", 0))
    for number in (1, 2):
        sr = await create_order(ehr)
        await notify(service, notification(
            "event-notification", number, events=[(number, f"ServiceRequest/{sr['id']}",
                                                    now())], resources=[sr]))
    service.context.subscriptions = None  # a new process: nothing in memory
    sr = await create_order(ehr)
    await notify(service, notification(
        "event-notification", 3, events=[(3, f"ServiceRequest/{sr['id']}", now())],
        resources=[sr]))
    assert service.context.subscriptions.requeries == 0  # no gap seen
    last_seen = service.store.subscription_state(SUBSCRIPTION)
    assert last_seen[0] == 3 and last_seen[1]

    service.context.subscriptions = None
    sr = await create_order(ehr)
    await notify(service, notification(  # events 4 and 5 were lost meanwhile
        "event-notification", 6, events=[(6, f"ServiceRequest/{sr['id']}", now())],
        resources=[sr]))
    assert service.context.subscriptions.requeries == 1


async def test_empty_payload_and_heartbeat_gap_search_the_server(service, ehr):
    await notify(service, notification("handshake", 0))
    since = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    await notify(service, notification("heartbeat", 0))
    sr = await create_order(ehr)
    # Empty payload: no resource, no focus, only the event number.
    await notify(service, notification("event-notification", 1, events=[(1, None, since)]))
    await stored_order(service, sr["id"])
    other = await create_order(ehr)
    handler = service.context.subscriptions
    before = handler.requeries
    await notify(service, notification("heartbeat", 1))  # nothing missed
    assert handler.requeries == before
    await notify(service, notification("heartbeat", 2))  # event 2 was never delivered
    assert handler.requeries == before + 1
    await stored_order(service, other["id"])


async def test_server_down_during_a_notification_loses_no_order(service, ehr, fhir_server):
    await notify(service, notification("handshake", 0))
    first = await create_order(ehr)
    await notify(service, notification(
        "event-notification", 1, events=[(1, f"ServiceRequest/{first['id']}", now())],
        references=[f"ServiceRequest/{first['id']}"]))
    second = await create_order(ehr)
    fhir_server.go_down()
    try:
        await notify(service, notification(
            "event-notification", 2, events=[(2, f"ServiceRequest/{second['id']}", now())],
            references=[f"ServiceRequest/{second['id']}"]), status=503)
    finally:
        fhir_server.come_back()
    await settle(service)
    assert service.store.get_order(second["id"]) is None
    third = await create_order(ehr)
    await notify(service, notification(
        "event-notification", 3, events=[(3, f"ServiceRequest/{third['id']}", now())],
        references=[f"ServiceRequest/{third['id']}"]))
    await stored_order(service, second["id"])  # found again by the re-query the gap triggered
    await stored_order(service, third["id"])
    # And every one of them is written back once the worker and relay are through.
    for sr in (first, second, third):
        await wait_for_task(ehr, sr["id"])


@pytest.mark.parametrize("bundle", [
    {"resourceType": "Bundle", "type": "collection", "entry": []},
    {"resourceType": "Bundle", "type": "history", "entry": [{"resource": {
        "resourceType": "Patient"}}]},
])
def test_malformed_notifications_are_refused(bundle):
    with pytest.raises(FhirValidationError):
        parse_notification(bundle)


async def test_a_malformed_notification_gets_an_outcome(service):
    body = await notify(service, {"resourceType": "Bundle", "type": "searchset"}, status=422)
    assert body["issue"][0]["expression"] == ["Bundle.type"]
