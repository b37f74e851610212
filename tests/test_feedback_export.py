"""Feedback recorded through the FHIR API comes out of `radproto export-feedback` as
training rows in the order file format."""

from __future__ import annotations

import copy

import pytest
from test_fhir_api import Service, head_ct

from radproto.cli import main
from radproto.model.prompt import render_prompt
from radproto.training.orderfile import read_orders


@pytest.fixture
async def service(tmp_path):
    svc = Service(tmp_path)
    yield svc
    await svc.close()


async def give_feedback(service: Service) -> tuple[str, str]:
    """Three orders: accepted, changed (then changed again), rejected without a protocol."""
    tasks = []
    for sr_id, exam in [("fb-1", "CT head without contrast"), ("fb-2", "MRI knee"),
                        ("fb-3", "XR chest")]:
        tasks.append((await service.http.post(
            "/fhir/ServiceRequest", json=head_ct(sr_id, code={"text": exam}))).json())
    accepted = copy.deepcopy(tasks[0])
    accepted["status"] = "completed"
    assert (await service.http.put(f"/fhir/Task/{accepted['id']}",
                                   json=accepted)).status_code == 200
    for protocol in ("MRI Brain WO Contrast", "MRI Knee WO Contrast"):
        response = await service.http.post("/feedback", json={
            "task_id": tasks[1]["id"], "outcome": "changed", "protocol": protocol})
        assert response.status_code == 201, response.text
    rejected = dict(copy.deepcopy(tasks[2]), status="rejected")
    assert (await service.http.put(f"/fhir/Task/{rejected['id']}",
                                   json=rejected)).status_code == 200
    return tasks[0]["output"][0]["valueCodeableConcept"]["text"], "MRI Knee WO Contrast"


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
async def test_export_feedback_writes_training_rows(service, tmp_path, suffix, capsys):
    accepted, changed = await give_feedback(service)
    out = tmp_path / f"feedback{suffix}"
    code = main(["export-feedback", "--out", str(out), "--store", service.store.url])
    assert code == 0
    assert "wrote 2 training rows" in capsys.readouterr().out
    rows = read_orders(out, require_label=True)
    by_exam = {r["ordered_exam"]: r for r in rows}
    assert set(by_exam) == {"CT head without contrast", "MRI knee"}
    assert by_exam["CT head without contrast"]["label"] == accepted
    assert by_exam["MRI knee"]["label"] == changed  # the latest verdict wins
    assert by_exam["MRI knee"]["outcome"] == "changed"
    # The same text the model saw for the order.
    order = service.store.get_order("fb-2").order
    assert render_prompt(by_exam["MRI knee"]) == render_prompt(order.prompt_fields())


async def test_export_since_a_later_date_is_empty(service, tmp_path, capsys):
    await give_feedback(service)
    out = tmp_path / "later.jsonl"
    assert main(["export-feedback", "--out", str(out), "--store", service.store.url,
                 "--since", "2999-01-01"]) == 0
    assert read_orders(out) == []
    assert main(["export-feedback", "--out", str(out), "--store", service.store.url,
                 "--since", "yesterday"]) == 2
