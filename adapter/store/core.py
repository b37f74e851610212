"""The store's connections and transactions, over a backend's hooks."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, Self

from radproto.adapter.store.schema import _SCHEMA
from radproto.adapter.store.types import StoreUnavailable


class StoreCore:
    """Connections and transactions of the backend-independent store; the backends
    (sqlite.py, postgres.py) supply connections and the claim queries."""

    dialect = "generic"
    _real = "REAL"

    def __init__(self, url: str) -> None:
        self.url = url
        self._closed = False
        self._local = threading.local()
        self._connections: list[Any] = []
        self._conn_lock = threading.Lock()

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

    def initialize(self) -> Self:
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
        self._stop_writer()
        with self._conn_lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            with suppress(Exception):
                conn.close()

    def _stop_writer(self) -> None:
        """Let the writer thread (writer.py) finish before the connections close."""

    def ping(self) -> bool:
        try:
            with self._tx() as cur:
                cur.execute("SELECT 1")
                cur.fetchone()
            return True
        except StoreUnavailable:
            return False


    # -- helpers --------------------------------------------------------------------------

    def _one(self, sql: str, args: tuple) -> Sequence[Any] | None:
        with self._tx() as cur:
            cur.execute(self._sql(sql), args)
            return cur.fetchone()

    def _all(self, sql: str, args: tuple) -> list[Sequence[Any]]:
        with self._tx() as cur:
            cur.execute(self._sql(sql), args)
            return list(cur.fetchall())
