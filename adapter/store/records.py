"""Orders, suggestions, worklist, feedback, audit, subscription state, purge."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from radproto.adapter.store.outbox_rows import OutboxTables
from radproto.adapter.store.schema import (
    _ORDER_COLS,
    _SUGGESTION_COLS,
    _order,
    _suggestion,
)
from radproto.adapter.store.types import (
    FEEDBACK_OUTCOMES,
    AuditRow,
    FeedbackOutcome,
    FeedbackRow,
    NotFound,
    OutboxItem,
    StoredOrder,
    StoredSuggestion,
    WorklistRow,
    _dt,
    _epoch,
    _now,
    new_id,
)
from radproto.model.order import Order


class Records(OutboxTables):
    """What the service keeps besides the queue: orders and suggestions, the worklist,
    feedback, audit events, FHIR subscription state, and the retention purge."""

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
