"""The outbox table: queue, claim in order, mark sent or failed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from radproto.adapter.store.core import StoreCore
from radproto.adapter.store.schema import (
    _OUTBOX_COLS,
    _outbox,
)
from radproto.adapter.store.types import (
    OutboxItem,
    OutboxRow,
    Retraction,
    _epoch,
    _now,
    new_id,
)


class OutboxTables(StoreCore):
    """The outbox: write-backs queued in the transaction that made them, claimed in order by
    the relay (adapter/outbox.py), marked sent or failed."""

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
