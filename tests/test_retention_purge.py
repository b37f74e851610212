"""Retention on SQLite and the real PostgreSQL: raw messages and notes go, suggestions,
feedback and the audit trail stay."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta

from radproto.adapter import retention
from radproto.adapter.audit import harden_audit_table
from radproto.adapter.store import OutboxItem
from radproto.cli import main
from radproto.model.order import Diagnosis, Order, OrderSource

MARKERS = ("PHI-NOTE-MARKER", "Zyxwvut", "Qwertyson", "1931-02-03", "19310203", "HISTORY-MARK")


def _raw(control_id: str) -> str:
    return ("MSH|^~\\&|RIS|HOSP|RADPROTO|RAD|20260101120000||ORM^O01|" + control_id
            + "|P|2.5.1\rPID|1||MRN-PHI-98765^^^HOSP^MR||Qwertyson^Zyxwvut||19310203|F\r"
            "ORC|NW|P-" + control_id + "\rOBR|1|P-" + control_id
            + "||X1^CT HEAD^L\rNTE|1||PHI-NOTE-MARKER\r")


def _order(control_id: str, message_id: str) -> Order:
    return Order(placer_order_number=f"P-{control_id}", patient_id="MRN-PHI-98765",
                 patient_birth_date=date(1931, 2, 3), patient_age_years=95,
                 patient_sex="female", ordered_exam_text="CT HEAD",
                 reason_for_study="HISTORY-MARK fall", clinical_history="HISTORY-MARK",
                 diagnoses=(Diagnosis(code="R51", system="ICD-10-CM",
                                      text="HISTORY-MARK headache"),),
                 notes=("PHI-NOTE-MARKER",), source=OrderSource.HL7V2,
                 raw_message_id=message_id, extra={"patient_notes": "PHI-NOTE-MARKER"})


def _processed_order(store, classifier, control_id: str) -> tuple[str, str]:
    accepted = store.accept_message(source="hl7v2", dedup_key=f"RIS:HOSP:{control_id}",
                                    raw=_raw(control_id), content_type="application/hl7-v2")
    claimed = store.claim_next_message("w", 30)
    assert claimed is not None and claimed.id == accepted.message_id
    order = _order(control_id, accepted.message_id)
    result = store.complete_message(
        accepted.message_id, order=order, suggestion=classifier.score_orders([order])[0],
        outbox=[OutboxItem("mllp", "127.0.0.1:1", _raw(control_id))])
    (row,) = store.outbox_rows()[-1:]
    store.mark_outbox_sent(row.id)
    store.record_feedback(result.suggestion_id, outcome="accepted",
                          protocol=None, actor="dr-a")
    store.append_audit("dr-a", "read", "Task", accepted.message_id, {"status": 200})
    return accepted.message_id, result.suggestion_id


def _all_text(store) -> str:
    """Every row of every table as text: where PHI could still hide."""
    tables = ("messages", "orders", "suggestions", "outbox", "feedback", "audit")
    chunks = []
    with store._tx() as cur:
        for table in tables:
            cur.execute(f"SELECT * FROM {table}")
            chunks += [repr(row) for row in cur.fetchall()]
    return "\n".join(chunks)


def test_purge_keeps_suggestions_feedback_and_audit(store, keyword_classifier):
    harden_audit_table(store)  # the purge must work with the append-only audit table
    message_id, suggestion_id = _processed_order(store, keyword_classifier, "1")
    before = _all_text(store)
    assert all(marker in before for marker in MARKERS)

    # Nothing is old enough yet.
    kept = retention.purge(store, older_than_days=1)
    assert (kept.raw_messages, kept.orders, kept.outbox_payloads) == (0, 0, 0)
    assert "PHI-NOTE-MARKER" in store.get_message(message_id).raw

    later = datetime.now(UTC) + timedelta(days=31)
    result = retention.purge(store, older_than_days=30, now=later)
    assert (result.raw_messages, result.orders, result.outbox_payloads) == (1, 1, 1)
    after = _all_text(store)
    leaked = [marker for marker in MARKERS if marker in after]
    assert not leaked, f"still stored after the purge: {leaked}"

    assert store.get_message(message_id).raw == ""
    order = store.get_order("P-1").order
    assert order.notes == () and order.clinical_history == "" and order.patient_birth_date is None
    assert order.ordered_exam_text == "CT HEAD" and order.diagnoses[0].code == "R51"
    assert order.patient_age_years == 95  # what the model reads stays
    (suggestion,) = store.suggestions_for(message_id=message_id)
    assert suggestion.id == suggestion_id and suggestion.status == "accepted"
    (feedback,) = store.feedback_rows()
    assert feedback.outcome == "accepted" and feedback.order is not None
    actions = [(r.actor, r.action) for r in store.audit_rows()]
    assert ("dr-a", "read") in actions
    assert actions[-2:] == [("system:retention", "purge")] * 2
    assert store.audit_rows(action="purge")[-1].detail["purged"] == 1

    again = retention.purge(store, older_than_days=30, now=later)  # idempotent
    assert (again.raw_messages, again.orders, again.outbox_payloads) == (0, 0, 0)


def test_pending_messages_keep_their_raw_text(store):
    accepted = store.accept_message(source="hl7v2", dedup_key="RIS:HOSP:p",
                                    raw=_raw("p"), content_type="application/hl7-v2")
    retention.purge(store, older_than_days=0, now=datetime.now(UTC) + timedelta(days=1))
    assert "PHI-NOTE-MARKER" in store.get_message(accepted.message_id).raw


def test_the_purge_command(store, keyword_classifier, capsys):
    message_id, _ = _processed_order(store, keyword_classifier, "c")
    assert main(["purge", "--store", store.url, "--older-than-days", "0"]) == 0
    assert "1 raw message(s)" in capsys.readouterr().out
    assert store.get_message(message_id).raw == ""
    assert main(["purge", "--store", store.url, "--older-than-days", "-1"]) == 2
    assert "--older-than-days" in capsys.readouterr().err


async def test_the_periodic_task_runs_until_stopped(store, keyword_classifier):
    message_id, _ = _processed_order(store, keyword_classifier, "t")
    stop = asyncio.Event()
    task = asyncio.create_task(retention.run_periodic(store, 0, 0.05, stop))
    for _ in range(100):
        await asyncio.sleep(0.02)
        if len(store.audit_rows(action="purge")) >= 2:
            break
    stop.set()
    await asyncio.wait_for(task, 2)
    assert len(store.audit_rows(action="purge")) >= 2
    assert store.get_message(message_id).raw == ""
