"""The Store API against both backends (SQLite file and the real PostgreSQL)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from conftest import KeywordClassifier

from radproto.adapter.store import OutboxItem, StoreUnavailable, open_store
from radproto.model.order import Order, OrderAction, OrderSource


def _order(placer: str, action: OrderAction = OrderAction.NEW, exam: str = "CT head") -> Order:
    return Order(placer_order_number=placer, ordered_exam_text=exam, action=action,
                 source=OrderSource.HL7V2)


def _accept(store, key: str, raw: str = "MSH|x"):
    return store.accept_message(source="hl7v2", dedup_key=key, raw=raw,
                                content_type="application/hl7-v2")


def test_accept_is_deduplicated_and_claimed_once(store):
    first = _accept(store, "RIS|HOSP|1")
    again = _accept(store, "RIS|HOSP|1")
    assert again.duplicate and again.message_id == first.message_id
    claimed = store.claim_next_message("w1", 30)
    assert claimed is not None and claimed.id == first.message_id and claimed.attempts == 1
    assert store.claim_next_message("w2", 30) is None  # leased
    assert store.message_counts() == {"processing": 1}


def test_concurrent_accepts_group_commit(store):
    results = []

    def send(i: int) -> None:
        results.append(_accept(store, f"k{i % 50}"))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(not r.duplicate for r in results) == 50
    assert len({r.message_id for r in results}) == 50
    assert store.message_counts() == {"pending": 50}


def test_expired_lease_is_reclaimed(store):
    mid = _accept(store, "a").message_id
    assert store.claim_next_message("w1", lease_seconds=-1).id == mid  # already expired
    again = store.claim_next_message("w2", 30)
    assert again.id == mid and again.attempts == 2


def test_complete_once_new_update_cancel(store):
    clf = KeywordClassifier()
    m1 = _accept(store, "1").message_id
    store.claim_next_message("w", 30)
    order = _order("P1")
    s1 = clf.score_orders([order])[0]
    item = OutboxItem("mllp", "127.0.0.1:1", "MSH|out1")
    r1 = store.complete_message(m1, order=order, suggestion=s1, outbox=[item])
    assert r1.applied and r1.suggestion_id
    # a second completion of the same message (re-claimed after a crash) changes nothing
    r1b = store.complete_message(m1, order=order, suggestion=s1, outbox=[item])
    assert not r1b.applied
    assert len(store.suggestions_for(message_id=m1)) == 1
    assert len(store.outbox_rows()) == 1

    m2 = _accept(store, "2").message_id
    store.claim_next_message("w", 30)
    upd = _order("P1", OrderAction.UPDATE, exam="MRI brain")
    r2 = store.complete_message(m2, order=upd, suggestion=clf.score_orders([upd])[0],
                                outbox=[OutboxItem("mllp", "d", "MSH|out2")])
    assert r2.withdrawn == (r1.suggestion_id,) and r2.cancelled_outbox == 1
    assert store.get_suggestion(r1.suggestion_id).status == "superseded"
    latest = store.latest_suggestion_for_order("P1")
    assert latest.id == r2.suggestion_id and latest.status == "pending"
    assert store.get_order("P1").order.ordered_exam_text == "MRI brain"

    m3 = _accept(store, "3").message_id
    store.claim_next_message("w", 30)
    r3 = store.complete_message(m3, order=_order("P1", OrderAction.CANCEL), suggestion=None)
    assert r3.withdrawn == (r2.suggestion_id,) and r3.cancelled_outbox == 1
    assert store.get_suggestion(r2.suggestion_id).status == "withdrawn"
    assert store.get_order(r3.order_id).status == "cancelled"
    assert [o.status for o in store.outbox_rows()] == ["cancelled", "cancelled"]
    assert store.get_message(m3).status == "done"


def test_sent_write_backs_of_replaced_suggestions_are_retracted(store):
    """In the completing transaction: a write-back already sent gets the retraction its
    builder makes (with the new status); one still pending is only cancelled."""
    clf = KeywordClassifier()
    seen = []

    def retract(row, new_status):
        seen.append((row.payload, new_status))
        return OutboxItem("fhir", row.destination, f"retract {row.payload} {new_status}")

    def complete(key, order, payload=None):
        mid = _accept(store, key).message_id
        store.claim_next_message("w", 30)
        outbox = [OutboxItem("fhir", "ehr", payload)] if payload else []
        suggestion = None if order.action == OrderAction.CANCEL else clf.score_orders([order])[0]
        return store.complete_message(mid, order=order, suggestion=suggestion, outbox=outbox,
                                      retract=retract)

    complete("1", _order("P9"), "task-1")
    [first] = store.outbox_rows()
    store.claim_outbox("fhir", worker_id="relay")
    store.mark_outbox_sent(first.id)
    complete("2", _order("P9", OrderAction.UPDATE, exam="MRI brain"), "task-2")  # supersedes
    complete("3", _order("P9", OrderAction.CANCEL))  # withdraws task-2, never sent
    assert seen == [("task-1", "superseded")]
    rows = {r.payload: r for r in store.outbox_rows()}
    assert rows["task-1"].status == "sent" and rows["task-2"].status == "cancelled"
    retraction = rows["retract task-1 superseded"]
    assert retraction.status == "pending" and retraction.suggestion_id == first.suggestion_id


def test_subscription_state_is_kept_and_overwritten(store):
    sub = "https://ehr.example/fhir/Subscription/7"
    assert store.subscription_state(sub) is None
    store.save_subscription_state(sub, None, "")
    assert store.subscription_state(sub) == (None, "")
    store.save_subscription_state(sub, 12, "2026-11-29T01:00:00Z")
    assert store.subscription_state(sub) == (12, "2026-11-29T01:00:00Z")
    assert store.subscription_state(sub + "x") is None


def test_stale_message_cannot_resurrect_cancelled_order(store):
    clf = KeywordClassifier()
    m_new = _accept(store, "new").message_id
    m_cancel = _accept(store, "cancel").message_id
    store.complete_message(m_cancel, order=_order("P9", OrderAction.CANCEL), suggestion=None)
    order = _order("P9")
    result = store.complete_message(m_new, order=order, suggestion=clf.score_orders([order])[0],
                                    outbox=[OutboxItem("mllp", "d", "x")])
    assert store.get_suggestion(result.suggestion_id).status == "superseded"
    assert store.outbox_rows() == []
    assert store.get_order("P9").status == "cancelled"


def test_outbox_fifo_retry_and_failure(store):
    a = store.enqueue_outbox(OutboxItem("mllp", "d", "A"))
    b = store.enqueue_outbox(OutboxItem("mllp", "d", "B"))
    row = store.claim_outbox("mllp")
    assert row.id == a and row.status == "sending" and row.attempts == 1
    assert store.claim_outbox("mllp") is None  # the head is in flight
    store.mark_outbox_failed(a, "no ack", retry_at=datetime.now(UTC) + timedelta(seconds=0.4))
    assert store.claim_outbox("mllp") is None  # head waits for its retry time, B must not overtake
    time.sleep(0.45)
    assert store.claim_outbox("mllp").id == a
    store.mark_outbox_sent(a)
    row_b = store.claim_outbox("mllp")
    assert row_b.id == b
    store.mark_outbox_failed(b, "AR from destination")
    assert store.claim_outbox("mllp") is None
    statuses = {r.id: (r.status, r.attempts) for r in store.outbox_rows()}
    assert statuses == {a: ("sent", 2), b: ("failed", 1)}


def test_feedback_audit_and_purge(store):
    clf = KeywordClassifier()
    mid = _accept(store, "f", raw="MSH|secret").message_id
    order = _order("P5")
    res = store.complete_message(mid, order=order, suggestion=clf.score_orders([order])[0])
    fb = store.record_feedback(res.suggestion_id, outcome="changed", protocol="MRI Brain",
                               actor="dr.x")
    assert fb.outcome == "changed" and fb.order.placer_order_number == "P5"
    assert store.get_suggestion(res.suggestion_id).status == "changed"
    with pytest.raises(ValueError):
        store.record_feedback(res.suggestion_id, outcome="maybe", protocol=None, actor="x")
    with pytest.raises(LookupError):
        store.record_feedback("nope", outcome="accepted", protocol=None, actor="x")
    assert [r.id for r in store.feedback_rows()] == [fb.id]
    aid = store.append_audit("dr.x", "feedback", "suggestion", res.suggestion_id, {"n": 1})
    rows = store.audit_rows(entity_type="suggestion")
    assert [r.id for r in rows] == [aid] and rows[0].detail == {"n": 1}
    pending = _accept(store, "g", raw="MSH|still-queued").message_id
    assert store.purge_raw_before(datetime.now(UTC) + timedelta(seconds=1)) == 1
    assert store.get_message(mid).raw == ""
    assert store.get_message(pending).raw == "MSH|still-queued"


def test_closed_store_is_unavailable(store):
    store.close()
    with pytest.raises(StoreUnavailable):
        _accept(store, "x")
    with pytest.raises(StoreUnavailable):
        store.claim_next_message("w", 1)


def test_unreachable_postgres_is_unavailable():
    from radproto.adapter.store.postgres import PostgresStore

    down = PostgresStore("postgresql://postgres@127.0.0.1:1/test", connect_timeout_s=1)
    with pytest.raises(StoreUnavailable):
        _accept(down, "x")
    with pytest.raises(StoreUnavailable):
        open_store("postgresql://postgres@127.0.0.1:1/test")
    down.close()


def test_two_postgres_replicas_share_one_queue(pg_url):
    a, b = open_store(pg_url), open_store(pg_url)
    try:
        ids = {_accept(a, f"m{i}").message_id for i in range(20)}
        claimed: list[str] = []
        lock = threading.Lock()

        def drain(s, name):
            while (m := s.claim_next_message(name, 30)) is not None:
                with lock:
                    claimed.append(m.id)

        threads = [threading.Thread(target=drain, args=(s, n)) for s, n in ((a, "a"), (b, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(claimed) == sorted(ids)  # each exactly once
    finally:
        a.close()
        b.close()


def test_postgres_connection_killed_then_back(pg_url):
    """The database drops our connections (failover, restart): the accept in flight is refused
    (no positive ACK, the engine resends), the next one reconnects and succeeds."""
    import uuid

    import psycopg
    from conftest import PG_BASE_URL

    name = f"radproto-kill-{uuid.uuid4().hex[:8]}"  # only this test's connections are killed
    s = open_store(f"{pg_url}&application_name={name}")
    try:
        _accept(s, "before")
        with psycopg.connect(PG_BASE_URL, autocommit=True) as admin:
            killed = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                   "WHERE application_name = %s", (name,)).fetchall()
        assert killed
        with pytest.raises(StoreUnavailable):
            _accept(s, "during")
        assert _accept(s, "after").duplicate is False  # reconnected
        with pytest.raises(StoreUnavailable):  # this thread's own connection was killed too
            s.message_counts()
        assert s.message_counts() == {"pending": 2}
    finally:
        s.close()
