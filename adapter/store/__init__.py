"""The store: the durable queue of received messages, orders, suggestions, outbox, feedback, audit.

One sync, thread-safe API over two backends: SQLite (WAL, synchronous=FULL; the default) and
PostgreSQL (several replicas share one queue). `open_store(url)` picks the backend by URL.

Durability before ACK: `accept_message` returns only after its row is committed. Concurrent
accepts are group-committed by one writer thread (one fsync for many messages); every caller
still waits for the commit that holds its own row.

asyncio callers use `asyncio.to_thread` (or an executor); nothing here is async.

    types.py        value types, errors, ids
    schema.py       the tables (one DDL for both backends), row -> value type
    core.py         connections and transactions over a backend's hooks
    writer.py       durable accepts, group-committed by one writer thread
    queue.py        claim, complete (order, suggestion, outbox: one transaction), fail
    outbox_rows.py  the outbox table: queue, claim in order, mark sent or failed
    records.py      orders, suggestions, worklist, feedback, audit, subscriptions, purge
    base.py         Store: the parts above composed into one API
    sqlite.py       SqliteStore (and sqlite_path);  postgres.py  PostgresStore
"""

from __future__ import annotations

from radproto.adapter.store.base import Store
from radproto.adapter.store.schema import order_ref_of
from radproto.adapter.store.sqlite import SqliteStore, sqlite_path
from radproto.adapter.store.types import (
    FEEDBACK_OUTCOMES,
    MAX_CLAIMS,
    AcceptResult,
    AuditRow,
    CompletionResult,
    FeedbackOutcome,
    FeedbackRow,
    MessageStatus,
    NotFound,
    OutboxItem,
    OutboxRow,
    Retraction,
    StoredMessage,
    StoredOrder,
    StoredSuggestion,
    StoreUnavailable,
    WorklistRow,
    new_id,
)

__all__ = [
    "FEEDBACK_OUTCOMES",
    "MAX_CLAIMS",
    "AcceptResult",
    "AuditRow",
    "CompletionResult",
    "FeedbackOutcome",
    "FeedbackRow",
    "MessageStatus",
    "NotFound",
    "OutboxItem",
    "OutboxRow",
    "Retraction",
    "SqliteStore",
    "Store",
    "StoreUnavailable",
    "StoredMessage",
    "StoredOrder",
    "StoredSuggestion",
    "WorklistRow",
    "new_id",
    "open_store",
    "order_ref_of",
    "sqlite_path",
]


def open_store(url: str) -> Store:
    """A ready store for "sqlite:///path.db" (relative path) / "sqlite:////abs/path.db" or
    "postgresql://user@host:port/db". Raises StoreUnavailable if it cannot be reached."""
    if url.startswith("sqlite:"):
        return SqliteStore(url).initialize()
    if url.startswith(("postgresql:", "postgres:", "postgresql+psycopg:")):
        # psycopg is loaded only for a PostgreSQL store.
        from radproto.adapter.store.postgres import PostgresStore

        return PostgresStore(url).initialize()
    raise ValueError(f"unsupported store URL {url!r}: use sqlite:///PATH or postgresql://...")
