"""Write-back against a real FHIR server (Medplum's fhir-router over HTTP, tests/peers).

Conditional create under retry, the server down and back (the outbox loses nothing), and
every Task and Provenance the server stores passes the FHIR.js validator.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from peers.harness import assert_valid_fhir, medplum_server
from test_fhir_mapping import CATALOG, PATIENT, full_service_request, make_suggestion

from radproto.adapter.fhir_client import (
    FhirClient,
    FhirClientError,
    outbox_payload,
    retraction_payload,
)
from radproto.adapter.outbox import FhirSender, OutboxRelay
from radproto.fhir_mappings.fhir import (
    service_request_to_order,
    suggestion_to_annotation,
    suggestion_to_task,
)


@pytest.fixture(scope="module")
def server():
    peer = medplum_server()
    yield peer
    peer.stop()


def control(server, **settings) -> dict:
    return httpx.post(f"{server.base}/__control", json=settings).json()


async def seed(client: FhirClient) -> tuple[str, str]:
    """A Patient and a ServiceRequest on the server; returns their references."""
    patient = (await client.request("POST", "Patient", json_body=PATIENT)).json()
    sr = dict(full_service_request(), subject={"reference": f"Patient/{patient['id']}"})
    sr.pop("id")
    stored = (await client.request("POST", "ServiceRequest", json_body=sr)).json()
    return f"Patient/{patient['id']}", f"ServiceRequest/{stored['id']}"


def task_for(sr_ref: str, patient_ref: str, task_id: str, suggestion=None) -> dict:
    order = service_request_to_order(full_service_request(), patient=PATIENT)
    return suggestion_to_task(suggestion or make_suggestion(), order, CATALOG,
                              service_request_ref=sr_ref, patient_ref=patient_ref,
                              task_id=task_id)


async def tasks_with_identifier(client: FhirClient, task_id: str) -> list[dict]:
    return await client.search("Task", {"identifier": f"urn:radproto:suggestion|{task_id}"})


async def test_write_back_creates_a_valid_task_and_provenance(server):
    async with FhirClient(server.base + "/fhir", backoff=0.01) as client:
        patient_ref, sr_ref = await seed(client)
        suggestion = make_suggestion()
        result = await client.write_suggestion(
            task_for(sr_ref, patient_ref, "wb-1", suggestion), suggestion,
            service_request_ref=sr_ref, annotation=suggestion_to_annotation(suggestion))
        assert result.task_created and result.annotated
        task = await client.read(result.task_ref)
        provenance = await client.read(result.provenance_ref)
        assert task["focus"]["reference"] == sr_ref and task["for"]["reference"] == patient_ref
        assert provenance["target"] == [{"reference": result.task_ref}]
        sr = await client.read(sr_ref)
        assert sr["note"][-1]["authorString"].startswith("radproto")
        # The server's copies (with its ids and meta) still pass the validator.
        assert_valid_fhir([task, provenance, sr])

        again = await client.write_suggestion(
            task_for(sr_ref, patient_ref, "wb-1", suggestion), suggestion,
            service_request_ref=sr_ref, annotation=suggestion_to_annotation(suggestion))
        assert again.task_ref == result.task_ref and not again.task_created
        assert again.provenance_ref == result.provenance_ref and not again.annotated
        assert len((await client.read(sr_ref))["note"]) == len(sr["note"])


async def test_conditional_create_survives_a_lost_response(server):
    async with FhirClient(server.base + "/fhir", backoff=0.01, retries=3) as client:
        patient_ref, sr_ref = await seed(client)
        # The server commits the Task but the response never arrives; then a 503.
        control(server, dropAfterCommit=1, failBefore=1)
        result = await client.write_suggestion(task_for(sr_ref, patient_ref, "retry-1"),
                                               make_suggestion(), service_request_ref=sr_ref)
        assert not result.task_created  # the retry found the first attempt's Task
        assert len(await tasks_with_identifier(client, "retry-1")) == 1
        provenances = await client.search("Provenance", {"target": result.task_ref})
        assert len(provenances) == 1


async def test_client_gives_up_with_a_retryable_error_when_down(server):
    async with FhirClient(server.base + "/fhir", backoff=0.01, retries=1) as client:
        server.go_down()
        try:
            with pytest.raises(FhirClientError) as info:
                await client.read("Patient/x")
            assert info.value.retryable
        finally:
            server.come_back()
        with pytest.raises(FhirClientError) as info:
            await client.read("Patient/does-not-exist")
        assert info.value.status == 404 and not info.value.retryable


@pytest.fixture
def store(tmp_path):
    from radproto.adapter.store import open_store

    s = open_store(f"sqlite:///{tmp_path / 'outbox.db'}")
    yield s
    s.close()


def enqueue(store, payload: str) -> str:
    from radproto.adapter.store import OutboxItem

    return store.enqueue_outbox(OutboxItem("fhir", "ehr", payload, "application/fhir+json"))


async def test_outbox_relay_loses_nothing_while_the_server_is_down(server, store):
    async with FhirClient(server.base + "/fhir", backoff=0.01, retries=1) as client:
        patient_ref, sr_ref = await seed(client)
        ids = [f"outbox-{i}" for i in range(3)]
        for i in ids:
            enqueue(store, outbox_payload(task_for(sr_ref, patient_ref, i), make_suggestion(),
                                          service_request_ref=sr_ref))
        relay = OutboxRelay(store, FhirSender(client), backoff_max_s=0.05)
        server.go_down()
        try:
            for _ in range(3):
                await relay.send_one()
                await asyncio.sleep(0.06)
            rows = store.outbox_rows(destination_kind="fhir")
            assert {r.status for r in rows} == {"pending"}  # kept, to be retried
            assert rows[0].attempts >= 2 and rows[0].last_error
        finally:
            server.come_back()
        for _ in range(100):
            if not await relay.send_one():
                if all(r.status == "sent" for r in store.outbox_rows()):
                    break
                await asyncio.sleep(0.02)
        assert [r.status for r in store.outbox_rows()] == ["sent"] * 3
        for task_id in ids:
            assert len(await tasks_with_identifier(client, task_id)) == 1


async def test_relay_marks_a_malformed_row_failed(server, store):
    async with FhirClient(server.base + "/fhir", backoff=0.01) as client:
        enqueue(store, json.dumps({"nope": 1}))
        assert await OutboxRelay(store, FhirSender(client)).send_one()
        [row] = store.outbox_rows()
        assert row.status == "failed" and "bad outbox payload" in row.last_error


async def test_search_follows_next_links():
    # Medplum's MemoryRepository does not page, so a MockTransport serves two pages.
    def handler(request: httpx.Request) -> httpx.Response:
        page2 = "page=2" in str(request.url)
        bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [
            {"resource": {"resourceType": "Patient", "id": "b" if page2 else "a"},
             "search": {"mode": "match"}},
            {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}}]}
        if not page2:
            bundle["link"] = [{"relation": "next", "url": "http://x/fhir/Patient?page=2"}]
        return httpx.Response(200, json=bundle)

    async with FhirClient("http://x/fhir", transport=httpx.MockTransport(handler)) as client:
        found = await client.search("Patient", {"name": "z"})
    assert [p["id"] for p in found] == ["a", "b"]


async def test_a_retraction_cancels_the_task_once(server, store):
    async with FhirClient(server.base + "/fhir", backoff=0.01) as client:
        patient_ref, sr_ref = await seed(client)
        suggestion = make_suggestion()
        sent = outbox_payload(task_for(sr_ref, patient_ref, "rt-1", suggestion), suggestion,
                              service_request_ref=sr_ref)
        written = await client.write_suggestion(
            task_for(sr_ref, patient_ref, "rt-1", suggestion), suggestion,
            service_request_ref=sr_ref)
        enqueue(store, retraction_payload(sent, "superseded"))
        assert await OutboxRelay(store, FhirSender(client)).send_one()
        [row] = store.outbox_rows()
        assert row.status == "sent" and row.last_error.startswith(written.task_ref)
        task = await client.read(written.task_ref)
        assert task["status"] == "cancelled"
        assert task["businessStatus"]["coding"][0]["code"] == "superseded"
        assert_valid_fhir([task])
        # Repeated (a relay retry after a lost response): no second version.
        identifier = task["identifier"][0]
        assert await client.retract_task(identifier, "superseded") == written.task_ref
        assert (await client.read(written.task_ref))["meta"]["versionId"] == \
            task["meta"]["versionId"]
        # A note-only write-back has no Task to take back; an unknown Task is no error.
        note_only = outbox_payload(None, suggestion, service_request_ref=sr_ref)
        assert retraction_payload(note_only, "withdrawn") is None
        unknown = dict(identifier, value="never-written")
        assert await client.retract_task(unknown, "withdrawn") == ""
