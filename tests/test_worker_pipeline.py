"""The worker: stored HL7 messages -> orders -> suggestions -> outbox, and the order's life."""

from __future__ import annotations

import time

import pytest
from conftest import KeywordClassifier, hl7_fixture_files, load_hl7_fixture, orm_message

from radproto.adapter.pipeline import Classifier, MllpWriteback, Pipeline
from radproto.adapter.store import StoredMessage
from radproto.adapter.worker import Worker
from radproto.fhir_mappings.hl7v2 import parse_header


def _accept(store, raw: bytes):
    text = raw.decode().replace("\n", "\r")
    header = parse_header(text)
    return store.accept_message(source="hl7v2", dedup_key="|".join(header.dedup_key), raw=text,
                                content_type="application/hl7-v2")


def _worker(store, classifier=None, writeback=True) -> Worker:
    builders = [MllpWriteback("127.0.0.1:6661")] if writeback else []
    pipeline = Pipeline(store, classifier or KeywordClassifier(), outbox_builders=builders)
    return Worker(store, pipeline, batch_size=4, lease_s=30, poll_s=0.05)


def test_keyword_classifier_is_a_classifier():
    assert isinstance(KeywordClassifier(), Classifier)


def test_new_update_cancel_life_of_an_order(store):
    worker = _worker(store)
    m1 = _accept(store, orm_message("1", placer="ORD1", exam="CT HEAD WITHOUT CONTRAST"))
    assert worker.drain() == 1
    first = store.latest_suggestion_for_order("ORD1")
    assert first.message_id == m1.message_id and first.status == "pending"
    [out1] = store.outbox_rows()
    assert out1.status == "pending" and out1.payload.startswith("MSH|")
    assert "ORM^O01" in out1.payload.split("\r")[0]  # the v2.3.1 site gets ORM back
    assert out1.suggestion_id == first.id

    _accept(store, orm_message("2", placer="ORD1", action="XO", exam="MRI BRAIN"))
    assert worker.drain() == 1
    second = store.latest_suggestion_for_order("ORD1")
    assert second.id != first.id and second.status == "pending"
    assert store.get_suggestion(first.id).status == "superseded"
    assert [r.status for r in store.outbox_rows()] == ["cancelled", "pending"]

    _accept(store, orm_message("3", placer="ORD1", action="CA"))
    assert worker.drain() == 1
    assert store.get_suggestion(second.id).status == "withdrawn"
    assert store.get_order("ORD1").status == "cancelled"
    assert [r.status for r in store.outbox_rows()] == ["cancelled", "cancelled"]
    assert len(store.suggestions_for(order_id=store.get_order("ORD1").id)) == 2
    assert store.message_counts() == {"done": 3}


def test_sent_write_back_is_not_cancelled(store):
    worker = _worker(store)
    _accept(store, orm_message("1", placer="ORD2"))
    worker.drain()
    row = store.claim_outbox("mllp")
    store.mark_outbox_sent(row.id)
    _accept(store, orm_message("2", placer="ORD2", action="DC"))
    worker.drain()
    assert [r.status for r in store.outbox_rows()] == ["sent"]
    assert store.latest_suggestion_for_order("ORD2").status == "withdrawn"


def test_duplicate_never_gives_a_second_suggestion(store):
    worker = _worker(store)
    _accept(store, orm_message("d1", placer="ORD3"))
    _accept(store, orm_message("d1", placer="ORD3"))
    assert worker.drain() == 1
    assert len(store.suggestions_for()) == 1


def test_omi_site_gets_omi(store):
    worker = _worker(store)
    _accept(store, orm_message("o1", placer="ORD4", version="2.5.1").replace(b"ORM^O01",
                                                                             b"OMI^O23"))
    assert worker.drain() == 1
    assert "OMI^O23" in store.outbox_rows()[0].payload.split("\r")[0]


def test_third_party_samples_are_classified(store):
    worker = _worker(store)
    accepted = [_accept(store, load_hl7_fixture(p)) for p in hl7_fixture_files()
                if not p.name.startswith(("01", "02"))]  # v2.2: refused at the listener
    assert worker.drain() == len(accepted)
    assert store.message_counts() == {"done": len(accepted)}
    assert len(store.suggestions_for()) == len(accepted)


def test_model_failure_keeps_the_message_for_a_retry(store):
    class Broken(KeywordClassifier):
        def score_orders(self, orders):
            raise RuntimeError("CUDA out of memory")

    class Short(KeywordClassifier):
        def score_orders(self, orders):
            return []  # a model that loses orders is a model failure too

    _accept(store, orm_message("f1", placer="F1"))
    _accept(store, orm_message("f2", placer="F1", action="CA"))  # a cancel needs no model
    outcomes = _worker(store, Broken()).run_once()
    assert sorted(o.status for o in outcomes) == ["done", "retry"]
    assert store.message_counts() == {"done": 1, "processing": 1}
    assert _worker(store).run_once() == []  # not before its retry time (5 s x attempts)
    store.fail_message(outcomes[0].message_id if outcomes[0].status == "retry"
                       else outcomes[1].message_id, "again", retry=True)  # due now
    assert [o.status for o in _worker(store, Short()).run_once()] == ["retry"]
    for message in store.messages():
        store.fail_message(message.id, "due now", retry=True)
    assert _worker(store).drain() == 1
    assert store.message_counts() == {"done": 2}


def test_unmappable_message_fails_permanently(store):
    store.accept_message(source="hl7v2", dedup_key="x", raw="not hl7",
                         content_type="application/hl7-v2")
    store.accept_message(source="other", dedup_key="y", raw="{}", content_type="text/unknown")
    outcomes = _worker(store).run_once()
    assert sorted(o.status for o in outcomes) == ["failed", "failed"]
    assert store.message_counts() == {"failed": 2}


def test_completion_after_lease_loss_is_applied_once(store):
    """Two workers hold the same message (the first one's lease ran out): one suggestion."""
    _accept(store, orm_message("l1", placer="ORD5"))
    clf = KeywordClassifier()
    slow = Pipeline(store, clf)
    first: StoredMessage = store.claim_next_message("w1", lease_seconds=-1)
    second = store.claim_next_message("w2", lease_seconds=30)
    assert first.id == second.id
    assert [o.status for o in Pipeline(store, clf).process([second])] == ["done"]
    assert [o.status for o in slow.process([first])] == ["skipped"]
    assert len(store.suggestions_for()) == 1


def test_worker_thread_wakes_on_new_messages(store):
    worker = _worker(store).start()
    try:
        for i in range(10):
            _accept(store, orm_message(f"t{i}", placer=f"T{i}"))
            worker.wake()
        deadline = time.monotonic() + 10
        while store.message_counts().get("done", 0) < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert store.message_counts() == {"done": 10}
    finally:
        worker.stop()
    assert not worker.alive


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_real_protocol_classifier_on_a_tiny_model(store, tiny_classifier):
    worker = _worker(store, tiny_classifier)
    _accept(store, orm_message("r1", placer="R1", exam="CT CHEST WITH CONTRAST"))
    assert worker.drain(timeout=120) == 1
    suggestion = store.latest_suggestion_for_order("R1").suggestion
    assert suggestion.model_version == "tiny-random"
    assert len(suggestion.scores) == len(tiny_classifier.catalog.protocols)
    assert abs(sum(s.probability for s in suggestion.scores) - 1) < 1e-3
