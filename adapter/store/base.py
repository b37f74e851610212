"""The store's one API over both backends: the group-commit writer, the queue (accept, claim,
complete), orders and suggestions, the outbox, feedback, audit, subscription state, purge.
A backend (sqlite.py, postgres.py) supplies connections and transactions."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import Any

from radproto.adapter.store.schema import (
    _MESSAGE_COLS,
    _ORDER_COLS,
    _OUTBOX_COLS,
    _SCHEMA,
    _SUGGESTION_COLS,
    _message,
    _order,
    _outbox,
    _suggestion,
    order_ref_of,
)
from radproto.adapter.store.types import (
    _GROUP_COMMIT_MAX,
    FEEDBACK_OUTCOMES,
    MAX_CLAIMS,
    AcceptResult,
    AuditRow,
    CompletionResult,
    FeedbackOutcome,
    FeedbackRow,
    NotFound,
    OutboxItem,
    OutboxRow,
    Retraction,
    StoredMessage,
    StoredOrder,
    StoredSuggestion,
    StoreUnavailable,
    WorklistRow,
    _AcceptRequest,
    _dt,
    _epoch,
    _now,
    new_id,
)
from radproto.model.order import Order, OrderAction
from radproto.model.suggestion import Suggestion


class Store:
    """The backend-independent store. Subclasses supply connections and the claim queries."""

    dialect = "generic"
    _real = "REAL"

    def __init__(self, url: str) -> None:
        self.url = url
        self._closed = False
        self._local = threading.local()
        self._connections: list[Any] = []
        self._conn_lock = threading.Lock()
        self._accept_queue: queue.Queue[_AcceptRequest | None] = queue.Queue()
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()

    # -- backend hooks --------------------------------------------------------------------

    def _connect(self) -> Any:
        raise NotImplementedError

    def _is_unavailable(self, exc: BaseException) -> bool:
        raise NotImplementedError

    @contextmanager
    def _begin(self, conn: Any) -> Iterator[Any]:
        """A write transaction on `conn`, yielding a cursor; commits on success."""
        raise NotImplementedError

    def _sql(self, statement: str) -> str:
        return statement

    def _lock_message(self, cur: Any, message_id: str) -> Sequence[Any] | None:
        cur.execute(self._sql("SELECT status, received_at FROM messages WHERE id = ?"),
                    (message_id,))
        return cur.fetchone()

    def _claim_message_rows(self, cur: Any, now: float, limit: int) -> list[Sequence[Any]]:
        raise NotImplementedError

    def _claim_outbox_row(self, cur: Any, kind: str, now: float) -> Sequence[Any] | None:
        raise NotImplementedError

    # -- connections and transactions -----------------------------------------------------

    def initialize(self) -> Store:
        """Create the schema if needed (idempotent). Returns self."""
        with self._tx() as cur:
            for statement in _SCHEMA.format(real=self._real).split(";"):
                if statement.strip():
                    cur.execute(statement)
        self._add_column("feedback", "reason", "TEXT")  # stores made before the column
        return self

    def _add_column(self, table: str, column: str, kind: str) -> None:
        try:
            self._one(f"SELECT {column} FROM {table} LIMIT 0", ())
        except StoreUnavailable:
            raise
        except Exception:
            with self._tx() as cur:
                cur.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def _conn(self) -> Any:
        if self._closed:
            raise StoreUnavailable("the store is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = self._connect()
            except Exception as exc:
                raise StoreUnavailable(f"cannot connect to the store: {exc}") from exc
            self._local.conn = conn
            with self._conn_lock:
                self._connections.append(conn)
        return conn

    def _drop_conn(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with self._conn_lock:
                if conn in self._connections:
                    self._connections.remove(conn)
            with suppress(Exception):
                conn.close()

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        conn = self._conn()
        try:
            with self._begin(conn) as cur:
                yield cur
        except StoreUnavailable:
            raise
        except Exception as exc:
            if self._closed or self._is_unavailable(exc):
                self._drop_conn()
                raise StoreUnavailable(f"store unavailable: {exc}") from exc
            raise

    def close(self) -> None:
        """Close every connection; later calls raise StoreUnavailable."""
        self._closed = True
        if self._writer is not None:
            self._accept_queue.put(None)
            self._writer.join(timeout=5)
        with self._conn_lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            with suppress(Exception):
                conn.close()

    def ping(self) -> bool:
        try:
            with self._tx() as cur:
                cur.execute("SELECT 1")
                cur.fetchone()
            return True
        except StoreUnavailable:
            return False

    # -- messages -------------------------------------------------------------------------

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

    def claim_next_message(self, worker_id: str, lease_seconds: float = 60.0
                           ) -> StoredMessage | None:
        """Lease the oldest pending message (or one whose lease expired) to `worker_id`."""
        claimed = self.claim_messages(worker_id, lease_seconds, limit=1)
        return claimed[0] if claimed else None

    def claim_messages(self, worker_id: str, lease_seconds: float = 60.0, *,
                       limit: int = 16) -> list[StoredMessage]:
        """Lease up to `limit` of the oldest claimable messages in one transaction."""
        now = _now()
        with self._tx() as cur:
            rows = self._claim_message_rows(cur, now, limit)
            claimed = []
            for message_id, attempts in ((r[0], int(r[1])) for r in rows):
                if attempts >= MAX_CLAIMS:
                    # A message that crashed its workers this often is set aside, not retried.
                    cur.execute(self._sql(
                        "UPDATE messages SET status = 'failed', lease_owner = NULL, "
                        "lease_until = NULL, error = ?, processed_at = ? WHERE id = ?"),
                        (f"abandoned after {attempts} claims", now, message_id))
                    continue
                cur.execute(self._sql(
                    "UPDATE messages SET status = 'processing', attempts = attempts + 1, "
                    "lease_owner = ?, lease_until = ? WHERE id = ?"),
                    (worker_id, now + lease_seconds, message_id))
                cur.execute(self._sql(f"SELECT {_MESSAGE_COLS} FROM messages WHERE id = ?"),
                            (message_id,))
                claimed.append(_message(cur.fetchone()))
            return claimed

    def release_message(self, message_id: str) -> None:
        """Give a claimed message back to the queue (e.g. on shutdown before scoring)."""
        with self._tx() as cur:
            cur.execute(self._sql(
                "UPDATE messages SET status = 'pending', lease_owner = NULL, lease_until = NULL,"
                " attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END "
                "WHERE id = ? AND status = 'processing'"), (message_id,))

    def complete_message(self, message_id: str, *, order: Order,
                         suggestion: Suggestion | None, outbox: Sequence[OutboxItem] = (),
                         status: str = "done", acks: Sequence[OutboxItem] = (),
                         retract: Retraction | None = None) -> CompletionResult:
        """In one transaction: the order row, the suggestion row, its outbox rows and the
        message status. A message already completed is left alone (applied=False), so a
        message re-claimed after a crash never yields a second suggestion.

        The order's action drives its life: new/update store the order and its suggestion and
        supersede the previous pending one; cancel withdraws pending suggestions. Either way
        unsent write-backs of the suggestions replaced are cancelled, and for each one already
        sent (or being sent) `retract(row, "withdrawn" | "superseded")` may queue a write-back
        that takes it back at the destination (e.g. the FHIR Task cancelled). `acks`
        (enhanced-mode application ACKs) are queued whatever the action: they answer the
        message, not the suggestion, so a later cancel does not withdraw them."""
        now = _now()
        with self._tx() as cur:
            locked = self._lock_message(cur, message_id)
            if locked is None:
                raise NotFound(f"no message {message_id}")
            if locked[0] in ("done", "failed"):
                return CompletionResult(applied=False)
            received_at = float(locked[1])
            source = str(order.source)
            ref = order_ref_of(order, message_id)
            key = f"{source}:{ref}"
            cur.execute(self._sql(
                "SELECT id, status, last_received_at FROM orders WHERE order_key = ?"), (key,))
            existing = cur.fetchone()
            cancel = order.action == OrderAction.CANCEL
            # A message older than the one last applied to the order (two workers raced) must
            # not resurrect a cancelled order nor replace a newer suggestion.
            stale = existing is not None and float(existing[2]) > received_at
            order_json = order.model_dump_json()
            if existing is None:
                order_id = new_id()
                cur.execute(self._sql(
                    "INSERT INTO orders (id, order_key, order_ref, source, status, order_json, "
                    "last_message_id, last_received_at, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                    (order_id, key, ref, source, "cancelled" if cancel else "active",
                     order_json, message_id, received_at, now, now))
            else:
                order_id = existing[0]
                if not stale:
                    cur.execute(self._sql(
                        "UPDATE orders SET status = ?, order_json = ?, last_message_id = ?, "
                        "last_received_at = ?, updated_at = ? WHERE id = ?"),
                        ("cancelled" if cancel else "active", order_json, message_id,
                         received_at, now, order_id))
            for item in acks:  # the answer to the message goes before the suggestion
                self._insert_outbox(cur, item, None, message_id, now)
            withdrawn: list[str] = []
            cancelled = 0
            if not stale:
                cur.execute(self._sql(
                    "SELECT id FROM suggestions WHERE order_id = ? AND status = 'pending'"),
                    (order_id,))
                withdrawn = [r[0] for r in cur.fetchall()]
                new_status = "withdrawn" if cancel else "superseded"
                for sid in withdrawn:
                    cur.execute(self._sql("UPDATE suggestions SET status = ? WHERE id = ?"),
                                (new_status, sid))
                    cur.execute(self._sql(
                        "UPDATE outbox SET status = 'cancelled', last_error = ? "
                        "WHERE suggestion_id = ? AND status = 'pending'"),
                        (f"suggestion {new_status}", sid))
                    cancelled += cur.rowcount or 0
                    if retract is not None:
                        self._queue_retractions(cur, sid, new_status, retract, message_id, now)
            suggestion_id = None
            if suggestion is not None and not cancel:
                suggestion_id = new_id()
                cur.execute(self._sql(
                    "INSERT INTO suggestions (id, order_id, message_id, status, protocol, "
                    "confidence, abstained, model_version, suggestion_json, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                    (suggestion_id, order_id, message_id,
                     "superseded" if stale else "pending", suggestion.protocol,
                     float(suggestion.confidence), int(suggestion.abstained),
                     suggestion.model_version, suggestion.model_dump_json(), now))
                if not stale:
                    for item in outbox:
                        self._insert_outbox(cur, item, suggestion_id, message_id, now)
            cur.execute(self._sql(
                "UPDATE messages SET status = ?, lease_owner = NULL, lease_until = NULL, "
                "processed_at = ?, error = '' WHERE id = ?"), (status, now, message_id))
        return CompletionResult(True, order_id, suggestion_id, tuple(withdrawn), cancelled)

    def fail_message(self, message_id: str, error: str, *, retry: bool = False,
                     retry_after_s: float = 0.0) -> None:
        """Record a failure: permanent (status failed) or, with retry, claimable again after
        `retry_after_s` (each claim counts; MAX_CLAIMS of them fail the message for good)."""
        now = _now()
        with self._tx() as cur:
            if retry:
                cur.execute(self._sql(
                    "UPDATE messages SET status = 'processing', lease_owner = NULL, "
                    "lease_until = ?, error = ? WHERE id = ? AND status <> 'done'"),
                    (now + retry_after_s, error[:2000], message_id))
            else:
                cur.execute(self._sql(
                    "UPDATE messages SET status = 'failed', lease_owner = NULL, "
                    "lease_until = NULL, error = ?, processed_at = ? "
                    "WHERE id = ? AND status <> 'done'"), (error[:2000], now, message_id))

    def get_message(self, message_id: str) -> StoredMessage | None:
        row = self._one(f"SELECT {_MESSAGE_COLS} FROM messages WHERE id = ?", (message_id,))
        return None if row is None else _message(row)

    def message_counts(self) -> dict[str, int]:
        """Messages by status (queue depth for health checks and tests)."""
        rows = self._all("SELECT status, COUNT(*) FROM messages GROUP BY status", ())
        return {r[0]: int(r[1]) for r in rows}

    def messages(self, *, status: str | None = None, limit: int = 1000) -> list[StoredMessage]:
        where, args = ("WHERE status = ?", (status,)) if status else ("", ())
        rows = self._all(f"SELECT {_MESSAGE_COLS} FROM messages {where} "
                         f"ORDER BY received_at, id LIMIT {int(limit)}", args)
        return [_message(r) for r in rows]

    # -- FHIR subscriptions ---------------------------------------------------------------

    def subscription_state(self, subscription: str) -> tuple[int | None, str] | None:
        """(last event number, newest event timestamp) seen of a subscription, or None."""
        row = self._one("SELECT last_event, last_timestamp FROM subscription_state "
                        "WHERE subscription = ?", (subscription,))
        return None if row is None else (None if row[0] is None else int(row[0]), row[1])

    def save_subscription_state(self, subscription: str, last_event: int | None,
                                last_timestamp: str) -> None:
        """Kept across restarts, so a gap re-query starts where the last event left off."""
        with self._tx() as cur:
            cur.execute(self._sql(
                "INSERT INTO subscription_state (subscription, last_event, last_timestamp, "
                "updated_at) VALUES (?, ?, ?, ?) ON CONFLICT (subscription) DO UPDATE SET "
                "last_event = excluded.last_event, last_timestamp = excluded.last_timestamp, "
                "updated_at = excluded.updated_at"),
                (subscription, last_event, last_timestamp, _now()))

    # -- orders and suggestions -----------------------------------------------------------

    def get_order(self, order_id: str) -> StoredOrder | None:
        """An order by its store id, or else by its reference (placer number / FHIR id)."""
        row = self._one(f"SELECT {_ORDER_COLS} FROM orders WHERE id = ?", (order_id,))
        if row is None:
            row = self._one(f"SELECT {_ORDER_COLS} FROM orders WHERE order_ref = ? "
                            "ORDER BY updated_at DESC LIMIT 1", (order_id,))
        return None if row is None else _order(row)

    def get_suggestion(self, suggestion_id: str) -> StoredSuggestion | None:
        row = self._one(f"SELECT {_SUGGESTION_COLS} FROM suggestions WHERE id = ?",
                        (suggestion_id,))
        return None if row is None else _suggestion(row)

    def suggestions_for(self, *, order_id: str | None = None, message_id: str | None = None,
                        status: str | None = None, limit: int = 1000) -> list[StoredSuggestion]:
        """Suggestions of one order or one message (or all), oldest first."""
        clauses, args = [], []
        for column, value in (("order_id", order_id), ("message_id", message_id),
                              ("status", status)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        rows = self._all(f"SELECT {_SUGGESTION_COLS} FROM suggestions {where} "
                         f"ORDER BY created_at, id LIMIT {int(limit)}", tuple(args))
        return [_suggestion(r) for r in rows]

    def latest_suggestion_for_order(self, order_ref: str, *, source: str | None = None
                                    ) -> StoredSuggestion | None:
        """The newest suggestion of the order with this placer number / FHIR id (or store id)."""
        sql = (f"SELECT {', '.join('s.' + c.strip() for c in _SUGGESTION_COLS.split(','))} "
               "FROM suggestions s JOIN orders o ON o.id = s.order_id "
               "WHERE (o.order_ref = ? OR o.id = ?)")
        args: list[Any] = [order_ref, order_ref]
        if source is not None:
            sql += " AND o.source = ?"
            args.append(source)
        row = self._one(sql + " ORDER BY s.created_at DESC, s.id DESC LIMIT 1", tuple(args))
        return None if row is None else _suggestion(row)

    # -- outbox ---------------------------------------------------------------------------

    def _queue_retractions(self, cur: Any, suggestion_id: str, new_status: str,
                           retract: Retraction, message_id: str, now: float) -> None:
        cur.execute(self._sql(
            f"SELECT {_OUTBOX_COLS} FROM outbox WHERE suggestion_id = ? "
            "AND status IN ('sent', 'sending') ORDER BY created_at"), (suggestion_id,))
        for row in [_outbox(r) for r in cur.fetchall()]:
            item = retract(row, new_status)
            if item is not None:
                self._insert_outbox(cur, item, suggestion_id, message_id, now)

    def _insert_outbox(self, cur: Any, item: OutboxItem, suggestion_id: str | None,
                       message_id: str | None, now: float) -> str:
        outbox_id = new_id()
        cur.execute(self._sql(
            "INSERT INTO outbox (id, destination_kind, destination, payload, content_type, "
            "status, suggestion_id, message_id, next_attempt_at, created_at) "
            "VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?)"),
            (outbox_id, item.destination_kind, item.destination, item.payload,
             item.content_type, suggestion_id, message_id, now, now))
        return outbox_id

    def enqueue_outbox(self, item: OutboxItem, *, suggestion_id: str | None = None,
                       message_id: str | None = None) -> str:
        with self._tx() as cur:
            return self._insert_outbox(cur, item, suggestion_id, message_id, _now())

    def claim_outbox(self, destination_kind: str, *, worker_id: str = "relay",
                     lease_seconds: float = 60.0) -> OutboxRow | None:
        """Lease the oldest unsent item of this kind, in order: while the oldest one waits for
        its retry time nothing after it is sent (an update must not overtake its order)."""
        now = _now()
        with self._tx() as cur:
            row = self._claim_outbox_row(cur, destination_kind, now)
            if row is None:
                return None
            cur.execute(self._sql(
                "UPDATE outbox SET status = 'sending', attempts = attempts + 1, lease_owner = ?, "
                "lease_until = ? WHERE id = ?"), (worker_id, now + lease_seconds, row[0]))
            cur.execute(self._sql(f"SELECT {_OUTBOX_COLS} FROM outbox WHERE id = ?"), (row[0],))
            return _outbox(cur.fetchone())

    def mark_outbox_sent(self, outbox_id: str, *, detail: str = "") -> None:
        with self._tx() as cur:
            cur.execute(self._sql(
                "UPDATE outbox SET status = 'sent', sent_at = ?, lease_owner = NULL, "
                "lease_until = NULL, last_error = ? WHERE id = ?"), (_now(), detail, outbox_id))

    def mark_outbox_failed(self, outbox_id: str, error: str, *,
                           retry_at: datetime | None = None) -> None:
        """retry_at=None: failed for good (recorded); else pending again from retry_at."""
        with self._tx() as cur:
            if retry_at is None:
                cur.execute(self._sql(
                    "UPDATE outbox SET status = 'failed', last_error = ?, lease_owner = NULL, "
                    "lease_until = NULL WHERE id = ?"), (error[:2000], outbox_id))
            else:
                cur.execute(self._sql(
                    "UPDATE outbox SET status = 'pending', last_error = ?, lease_owner = NULL, "
                    "lease_until = NULL, next_attempt_at = ? WHERE id = ? "
                    "AND status = 'sending'"), (error[:2000], _epoch(retry_at), outbox_id))

    def outbox_rows(self, *, status: str | None = None, destination_kind: str | None = None
                    ) -> list[OutboxRow]:
        clauses, args = [], []
        for column, value in (("status", status), ("destination_kind", destination_kind)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        rows = self._all(f"SELECT {_OUTBOX_COLS} FROM outbox {where} ORDER BY created_at, id",
                         tuple(args))
        return [_outbox(r) for r in rows]

    # -- feedback and audit ---------------------------------------------------------------

    def record_feedback(self, suggestion_id: str, *, outcome: FeedbackOutcome,
                        protocol: str | None, actor: str, reason: str = "",
                        outbox: Sequence[OutboxItem] = ()) -> FeedbackRow:
        """A radiologist's verdict on a suggestion; the suggestion's status becomes `outcome`.
        `outbox` (the verdict's write-backs: the Task at the EHR, the final protocol to the
        RIS) is queued in the same transaction."""
        if outcome not in FEEDBACK_OUTCOMES:
            raise ValueError(f"outcome must be one of {FEEDBACK_OUTCOMES}, not {outcome!r}")
        feedback_id, now = new_id(), _now()
        with self._tx() as cur:
            cur.execute(self._sql("SELECT id FROM suggestions WHERE id = ?"), (suggestion_id,))
            if cur.fetchone() is None:
                raise NotFound(f"no suggestion {suggestion_id}")
            cur.execute(self._sql(
                "INSERT INTO feedback (id, suggestion_id, outcome, protocol, actor, created_at, "
                "reason) VALUES (?, ?, ?, ?, ?, ?, ?)"),
                (feedback_id, suggestion_id, outcome, protocol, actor, now, reason or None))
            cur.execute(self._sql("UPDATE suggestions SET status = ? WHERE id = ?"),
                        (outcome, suggestion_id))
            cur.execute(self._sql("SELECT message_id FROM suggestions WHERE id = ?"),
                        (suggestion_id,))
            message_id = cur.fetchone()[0]
            for item in outbox:
                self._insert_outbox(cur, item, suggestion_id, message_id, now)
        rows = self.feedback_rows(suggestion_id=suggestion_id)
        return next(r for r in rows if r.id == feedback_id)

    def feedback_rows(self, *, suggestion_id: str | None = None, since: datetime | None = None,
                      limit: int = 100000) -> list[FeedbackRow]:
        """Feedback with what was suggested and the order it was for (for retraining)."""
        sql = ("SELECT f.id, f.suggestion_id, f.outcome, f.protocol, f.actor, f.created_at, "
               "s.protocol, s.model_version, o.order_json, f.reason FROM feedback f "
               "JOIN suggestions s ON s.id = f.suggestion_id "
               "LEFT JOIN orders o ON o.id = s.order_id")
        clauses, args = [], []
        if suggestion_id is not None:
            clauses.append("f.suggestion_id = ?")
            args.append(suggestion_id)
        if since is not None:
            clauses.append("f.created_at >= ?")
            args.append(_epoch(since))
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        rows = self._all(sql + f" ORDER BY f.created_at, f.id LIMIT {int(limit)}", tuple(args))
        return [FeedbackRow(id=r[0], suggestion_id=r[1], outcome=r[2], protocol=r[3], actor=r[4],
                            created_at=_dt(r[5]), suggested_protocol=r[6], model_version=r[7],
                            order=Order.model_validate_json(r[8]) if r[8] else None,
                            reason=r[9] or "")
                for r in rows]

    def worklist(self, statuses: Sequence[str], *, limit: int = 500) -> list[WorklistRow]:
        """The newest suggestions in these statuses (pending, accepted, changed, rejected) of
        active orders, with their orders; newest first (the caller ranks by priority)."""
        if not statuses:
            return []
        cols = ", ".join("s." + c.strip() for c in _SUGGESTION_COLS.split(","))
        ocols = ", ".join("o." + c.strip() for c in _ORDER_COLS.split(","))
        marks = ", ".join("?" for _ in statuses)
        rows = self._all(f"SELECT {cols}, {ocols} FROM suggestions s JOIN orders o "
                         f"ON o.id = s.order_id WHERE s.status IN ({marks}) "
                         "AND o.status = 'active' ORDER BY s.created_at DESC, s.id DESC "
                         f"LIMIT {int(limit)}", tuple(statuses))
        return [WorklistRow(_suggestion(r[:6]), _order(r[6:])) for r in rows]

    def append_audit(self, actor: str, action: str, entity_type: str, entity_id: str,
                     detail: dict[str, Any] | None = None) -> str:
        audit_id = new_id()
        with self._tx() as cur:
            cur.execute(self._sql(
                "INSERT INTO audit (id, at, actor, action, entity_type, entity_id, detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)"),
                (audit_id, _now(), actor, action, entity_type, entity_id,
                 json.dumps(detail or {}, sort_keys=True, default=str)))
        return audit_id

    def append_audit_many(self, events: Sequence[tuple[str, str, str, str, dict[str, Any]]]
                          ) -> list[str]:
        """Several (actor, action, entity_type, entity_id, detail) events, one transaction."""
        ids, now = [], _now()
        with self._tx() as cur:
            for actor, action, entity_type, entity_id, detail in events:
                ids.append(new_id())
                cur.execute(self._sql(
                    "INSERT INTO audit (id, at, actor, action, entity_type, entity_id, detail) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)"),
                    (ids[-1], now, actor, action, entity_type, entity_id,
                     json.dumps(detail or {}, sort_keys=True, default=str)))
        return ids

    def audit_rows(self, *, actor: str | None = None, action: str | None = None,
                   entity_type: str | None = None, entity_id: str | None = None,
                   since: datetime | None = None, limit: int = 1000) -> list[AuditRow]:
        clauses, args = [], []
        for column, value in (("actor", actor), ("action", action),
                              ("entity_type", entity_type), ("entity_id", entity_id)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            clauses.append("at >= ?")
            args.append(_epoch(since))
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        rows = self._all("SELECT id, at, actor, action, entity_type, entity_id, detail FROM audit "
                         f"{where} ORDER BY at, id LIMIT {int(limit)}", tuple(args))
        return [AuditRow(id=r[0], at=_dt(r[1]), actor=r[2], action=r[3], entity_type=r[4],
                         entity_id=r[5], detail=json.loads(r[6])) for r in rows]

    # -- retention ------------------------------------------------------------------------

    def purge_raw_before(self, before: datetime) -> int:
        """Blank the raw text of finished messages received before `before` (PHI retention).
        Pending or in-progress messages keep theirs. Returns how many were purged."""
        with self._tx() as cur:
            cur.execute(self._sql(
                "UPDATE messages SET raw = '', raw_purged = 1 WHERE received_at < ? "
                "AND raw_purged = 0 AND status IN ('done', 'failed')"), (_epoch(before),))
            return cur.rowcount or 0

    # -- helpers --------------------------------------------------------------------------

    def _one(self, sql: str, args: tuple) -> Sequence[Any] | None:
        with self._tx() as cur:
            cur.execute(self._sql(sql), args)
            return cur.fetchone()

    def _all(self, sql: str, args: tuple) -> list[Sequence[Any]]:
        with self._tx() as cur:
            cur.execute(self._sql(sql), args)
            return list(cur.fetchall())
