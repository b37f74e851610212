"""PostgreSQL backend of the store: replicas share one queue, claimed with FOR UPDATE SKIP LOCKED.

The URL is a libpq URI; `?options=-csearch_path%3Dschema` selects a schema (used by tests).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from radproto.adapter.store.base import Store
from radproto.adapter.store.schema import _SCHEMA
from radproto.adapter.store.sqlite import _claimable


class PostgresStore(Store):
    dialect = "postgresql"
    _real = "DOUBLE PRECISION"

    def __init__(self, url: str, *, connect_timeout_s: int = 5) -> None:
        super().__init__(url)
        self._conninfo = url.replace("postgresql+psycopg:", "postgresql:", 1)
        self._connect_timeout_s = connect_timeout_s

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(self._conninfo, autocommit=True,
                               connect_timeout=self._connect_timeout_s)

    def _is_unavailable(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)

    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s")

    @contextmanager
    def _begin(self, conn: psycopg.Connection) -> Iterator[psycopg.Cursor]:
        with conn.transaction(), conn.cursor() as cur:
            yield cur

    def initialize(self) -> PostgresStore:
        # A running replica's schema is left alone: CREATE INDEX IF NOT EXISTS still takes a
        # table lock, which could deadlock with that replica's transactions.
        with self._tx() as cur:
            cur.execute("SELECT to_regclass('audit') IS NOT NULL")
            exists = cur.fetchone()[0]
        if exists:
            # A store made before feedback.reason: the column is added once (checked first,
            # so a current schema takes no table lock).
            with self._tx() as cur:
                cur.execute("SELECT 1 FROM information_schema.columns WHERE table_name = "
                            "'feedback' AND column_name = 'reason' "
                            "AND table_schema = current_schema()")
                if cur.fetchone() is None:
                    cur.execute("ALTER TABLE feedback ADD COLUMN IF NOT EXISTS reason TEXT")
            return self
        # Replicas starting together must not race on CREATE TABLE IF NOT EXISTS.
        with self._tx() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(727274)")
            for statement in _SCHEMA.format(real=self._real).split(";"):
                if statement.strip():
                    cur.execute(statement)
        return self

    def _lock_message(self, cur: Any, message_id: str) -> Sequence[Any] | None:
        cur.execute("SELECT status, received_at FROM messages WHERE id = %s FOR UPDATE",
                    (message_id,))
        return cur.fetchone()

    def _claim_message_rows(self, cur: Any, now: float, limit: int) -> list[Sequence[Any]]:
        cur.execute("SELECT id, attempts FROM messages WHERE status = 'pending' "
                    "OR (status = 'processing' AND lease_until < %s) "
                    "ORDER BY received_at, id LIMIT %s FOR UPDATE SKIP LOCKED", (now, int(limit)))
        return list(cur.fetchall())

    def _claim_outbox_row(self, cur: Any, kind: str, now: float) -> Sequence[Any] | None:
        # Plain FOR UPDATE (not SKIP LOCKED): the head of the queue goes first, whoever sends it.
        cur.execute("SELECT id, status, lease_until, next_attempt_at FROM outbox "
                    "WHERE destination_kind = %s AND status IN ('pending', 'sending') "
                    "ORDER BY created_at, id LIMIT 1 FOR UPDATE", (kind,))
        return _claimable(cur.fetchone(), now)
