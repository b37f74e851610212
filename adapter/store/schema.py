"""The store's tables (one DDL for SQLite and PostgreSQL), their column lists and the mapping
of a row to its value type."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from radproto.adapter.store.types import (
    OutboxRow,
    StoredMessage,
    StoredOrder,
    StoredSuggestion,
    _dt,
)
from radproto.model.order import Order
from radproto.model.suggestion import Suggestion

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    dedup_key TEXT NOT NULL UNIQUE,
    content_type TEXT NOT NULL,
    raw TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until {real},
    received_at {real} NOT NULL,
    processed_at {real},
    raw_purged INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS messages_queue ON messages (status, received_at);
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY,
    order_key TEXT NOT NULL UNIQUE,
    order_ref TEXT NOT NULL,
    source TEXT NOT NULL,
    status TEXT NOT NULL,
    order_json TEXT NOT NULL,
    last_message_id TEXT NOT NULL,
    last_received_at {real} NOT NULL,
    created_at {real} NOT NULL,
    updated_at {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_ref ON orders (order_ref);
CREATE TABLE IF NOT EXISTS suggestions (
    id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    message_id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    protocol TEXT NOT NULL,
    confidence {real} NOT NULL,
    abstained INTEGER NOT NULL,
    model_version TEXT NOT NULL,
    suggestion_json TEXT NOT NULL,
    created_at {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS suggestions_order ON suggestions (order_id, created_at);
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,
    destination_kind TEXT NOT NULL,
    destination TEXT NOT NULL,
    payload TEXT NOT NULL,
    content_type TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    suggestion_id TEXT,
    message_id TEXT,
    last_error TEXT NOT NULL DEFAULT '',
    lease_owner TEXT,
    lease_until {real},
    next_attempt_at {real},
    created_at {real} NOT NULL,
    sent_at {real}
);
CREATE INDEX IF NOT EXISTS outbox_queue ON outbox (destination_kind, status, created_at);
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY,
    suggestion_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    protocol TEXT,
    actor TEXT NOT NULL,
    created_at {real} NOT NULL,
    reason TEXT
);
CREATE TABLE IF NOT EXISTS audit (
    id TEXT PRIMARY KEY,
    at {real} NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    entity_type TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_entity ON audit (entity_type, entity_id);
CREATE TABLE IF NOT EXISTS subscription_state (
    subscription TEXT PRIMARY KEY,
    last_event INTEGER,
    last_timestamp TEXT NOT NULL,
    updated_at {real} NOT NULL
);
"""

_MESSAGE_COLS = ("id, source, dedup_key, content_type, raw, status, attempts, received_at, "
                 "error, processed_at")
_ORDER_COLS = ("id, order_ref, source, status, order_json, last_message_id, created_at, "
               "updated_at")
_SUGGESTION_COLS = "id, order_id, message_id, status, suggestion_json, created_at"
_OUTBOX_COLS = ("id, destination_kind, destination, payload, content_type, status, attempts, "
                "suggestion_id, message_id, last_error, created_at, next_attempt_at, sent_at")


def _message(row: Sequence[Any]) -> StoredMessage:
    return StoredMessage(id=row[0], source=row[1], dedup_key=row[2], content_type=row[3],
                         raw=row[4], status=row[5], attempts=int(row[6]),
                         received_at=_dt(row[7]), error=row[8] or "",
                         processed_at=_dt(row[9]))


def _order(row: Sequence[Any]) -> StoredOrder:
    return StoredOrder(id=row[0], order_ref=row[1], source=row[2], status=row[3],
                       order=Order.model_validate_json(row[4]), last_message_id=row[5],
                       created_at=_dt(row[6]), updated_at=_dt(row[7]))


def _suggestion(row: Sequence[Any]) -> StoredSuggestion:
    return StoredSuggestion(id=row[0], order_id=row[1], message_id=row[2], status=row[3],
                            suggestion=Suggestion.model_validate_json(row[4]),
                            created_at=_dt(row[5]))


def _outbox(row: Sequence[Any]) -> OutboxRow:
    return OutboxRow(id=row[0], destination_kind=row[1], destination=row[2], payload=row[3],
                     content_type=row[4], status=row[5], attempts=int(row[6]),
                     suggestion_id=row[7], message_id=row[8], last_error=row[9] or "",
                     created_at=_dt(row[10]), next_attempt_at=_dt(row[11]), sent_at=_dt(row[12]))


def order_ref_of(order: Order, message_id: str) -> str:
    """The sender's identifier for an order: placer number first (FHIR: the ServiceRequest id)."""
    return (order.placer_order_number or order.filler_order_number or order.accession_number
            or f"msg:{message_id}")


# ---------------------------------------------------------------------------- base store
