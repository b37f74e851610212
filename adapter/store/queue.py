"""The message queue: claim, complete in one transaction, fail, read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from radproto.adapter.store.outbox_rows import OutboxTables
from radproto.adapter.store.schema import (
    _MESSAGE_COLS,
    _message,
    order_ref_of,
)
from radproto.adapter.store.types import (
    MAX_CLAIMS,
    CompletionResult,
    NotFound,
    OutboxItem,
    Retraction,
    StoredMessage,
    _now,
    new_id,
)
from radproto.model.order import Order, OrderAction
from radproto.model.suggestion import Suggestion


class MessageQueue(OutboxTables):
    """The queue of received messages: claim (leases), complete (order, suggestion, outbox
    and status in one transaction), fail, read."""

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
            cancel = order.action == OrderAction.CANCEL
            order_id, stale = self._apply_order(cur, order, message_id, received_at, now)
            for item in acks:  # the answer to the message goes before the suggestion
                self._insert_outbox(cur, item, None, message_id, now)
            withdrawn: list[str] = []
            cancelled = 0
            if not stale:
                withdrawn, cancelled = self._replace_pending(
                    cur, order_id, "withdrawn" if cancel else "superseded", retract,
                    message_id, now)
            suggestion_id = None
            if suggestion is not None and not cancel:
                suggestion_id = self._insert_suggestion(cur, order_id, message_id, suggestion,
                                                        stale, now)
                if not stale:
                    for item in outbox:
                        self._insert_outbox(cur, item, suggestion_id, message_id, now)
            cur.execute(self._sql(
                "UPDATE messages SET status = ?, lease_owner = NULL, lease_until = NULL, "
                "processed_at = ?, error = '' WHERE id = ?"), (status, now, message_id))
        return CompletionResult(True, order_id, suggestion_id, tuple(withdrawn), cancelled)

    def _apply_order(self, cur: Any, order: Order, message_id: str, received_at: float,
                     now: float) -> tuple[str, bool]:
        """(order id, stale): the order row created or updated, unless the message is older
        than the one last applied to it (two workers raced: stale, the row stays)."""
        source = str(order.source)
        ref = order_ref_of(order, message_id)
        key = f"{source}:{ref}"
        cur.execute(self._sql(
            "SELECT id, status, last_received_at FROM orders WHERE order_key = ?"), (key,))
        existing = cur.fetchone()
        status = "cancelled" if order.action == OrderAction.CANCEL else "active"
        # A stale message must not resurrect a cancelled order nor replace a newer suggestion.
        stale = existing is not None and float(existing[2]) > received_at
        order_json = order.model_dump_json()
        if existing is None:
            order_id = new_id()
            cur.execute(self._sql(
                "INSERT INTO orders (id, order_key, order_ref, source, status, order_json, "
                "last_message_id, last_received_at, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                (order_id, key, ref, source, status, order_json, message_id, received_at,
                 now, now))
            return order_id, False
        order_id = existing[0]
        if not stale:
            cur.execute(self._sql(
                "UPDATE orders SET status = ?, order_json = ?, last_message_id = ?, "
                "last_received_at = ?, updated_at = ? WHERE id = ?"),
                (status, order_json, message_id, received_at, now, order_id))
        return order_id, stale

    def _replace_pending(self, cur: Any, order_id: str, new_status: str,
                         retract: Retraction | None, message_id: str, now: float
                         ) -> tuple[list[str], int]:
        """(ids, unsent write-backs cancelled): the order's pending suggestions withdrawn or
        superseded, their unsent write-backs cancelled, the sent ones retracted."""
        cur.execute(self._sql(
            "SELECT id FROM suggestions WHERE order_id = ? AND status = 'pending'"),
            (order_id,))
        withdrawn = [r[0] for r in cur.fetchall()]
        cancelled = 0
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
        return withdrawn, cancelled

    def _insert_suggestion(self, cur: Any, order_id: str, message_id: str,
                           suggestion: Suggestion, stale: bool, now: float) -> str:
        suggestion_id = new_id()
        cur.execute(self._sql(
            "INSERT INTO suggestions (id, order_id, message_id, status, protocol, "
            "confidence, abstained, model_version, suggestion_json, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
            (suggestion_id, order_id, message_id, "superseded" if stale else "pending",
             suggestion.protocol, float(suggestion.confidence), int(suggestion.abstained),
             suggestion.model_version, suggestion.model_dump_json(), now))
        return suggestion_id

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
