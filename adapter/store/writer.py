"""Durable accepts, group-committed by one writer thread."""

from __future__ import annotations

import queue
import threading

from radproto.adapter.store.core import StoreCore
from radproto.adapter.store.types import (
    _GROUP_COMMIT_MAX,
    AcceptResult,
    StoreUnavailable,
    _AcceptRequest,
    _now,
    new_id,
)


class GroupCommitWriter(StoreCore):
    """Accepts received messages through one writer thread that commits every accept waiting
    at that moment in one transaction (one fsync); each caller waits for its own commit."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._accept_queue: queue.Queue[_AcceptRequest | None] = queue.Queue()
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()

    def accept_message(self, *, source: str, dedup_key: str, raw: str, content_type: str,
                       claim_by: str | None = None, lease_seconds: float = 60.0
                       ) -> AcceptResult:
        """Store a received message durably (committed before return) unless its dedup_key is
        known; then return the first copy's id with duplicate=True. `claim_by` stores it already
        claimed by that worker (a synchronous caller that classifies it itself)."""
        if self._closed:
            raise StoreUnavailable("the store is closed")
        request = _AcceptRequest(source, dedup_key, raw.replace("\x00", ""), content_type,
                                 claim_by, lease_seconds)
        self._ensure_writer()
        self._accept_queue.put(request)
        if not request.done.wait(timeout=30):
            raise StoreUnavailable("the store did not commit within 30 s")
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def _ensure_writer(self) -> None:
        if self._writer is not None and self._writer.is_alive():
            return
        with self._writer_lock:
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(target=self._writer_loop, daemon=True,
                                                name="store-writer")
                self._writer.start()

    def _writer_loop(self) -> None:
        # Group commit: one transaction (one fsync) for every accept waiting at that moment.
        while True:
            first = self._accept_queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < _GROUP_COMMIT_MAX:
                try:
                    nxt = self._accept_queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._accept_queue.put(None)
                    break
                batch.append(nxt)
            try:
                results = self._accept_batch(batch)
                for request, result in zip(batch, results, strict=True):
                    request.result = result
            except BaseException as exc:
                error = exc if isinstance(exc, StoreUnavailable) else StoreUnavailable(
                    f"store unavailable: {exc}")
                for request in batch:
                    request.error = error
            for request in batch:
                request.done.set()
        for request in self._drain_queue():
            request.error = StoreUnavailable("the store is closed")
            request.done.set()

    def _drain_queue(self) -> list[_AcceptRequest]:
        left = []
        while True:
            try:
                item = self._accept_queue.get_nowait()
            except queue.Empty:
                return left
            if item is not None:
                left.append(item)

    def _accept_batch(self, batch: list[_AcceptRequest]) -> list[AcceptResult]:
        results = []
        now = _now()
        with self._tx() as cur:
            for i, r in enumerate(batch):
                message_id = new_id()
                received = now + i * 1e-6  # keeps arrival order inside one group commit
                status = "processing" if r.claim_by else "pending"
                lease = now + r.lease_seconds if r.claim_by else None
                cur.execute(self._sql(
                    "INSERT INTO messages (id, source, dedup_key, content_type, raw, status, "
                    "attempts, lease_owner, lease_until, received_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (dedup_key) DO NOTHING RETURNING id"),
                    (message_id, r.source, r.dedup_key, r.content_type, r.raw, status,
                     1 if r.claim_by else 0, r.claim_by, lease, received))
                row = cur.fetchone()
                if row is not None:
                    results.append(AcceptResult(row[0], False))
                    continue
                cur.execute(self._sql("SELECT id FROM messages WHERE dedup_key = ?"),
                            (r.dedup_key,))
                results.append(AcceptResult(cur.fetchone()[0], True))
        return results


    def _stop_writer(self) -> None:
        if self._writer is not None:
            self._accept_queue.put(None)
            self._writer.join(timeout=5)
