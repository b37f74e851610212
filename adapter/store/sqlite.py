"""SQLite backend of the store: WAL journal, synchronous=FULL, one connection per thread."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from radproto.adapter.store.base import Store


class SqliteStore(Store):
    dialect = "sqlite"
    _real = "REAL"

    def __init__(self, url: str, *, busy_timeout_s: float = 10.0) -> None:
        super().__init__(url)
        self.path = sqlite_path(url)
        self._busy_timeout_s = busy_timeout_s

    def _connect(self) -> sqlite3.Connection:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed message survives power loss, which is what the ACK promises.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def _is_unavailable(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError | sqlite3.ProgrammingError
                          | sqlite3.DatabaseError) and not isinstance(exc, sqlite3.IntegrityError)

    @contextmanager
    def _begin(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Cursor]:
        cur = conn.cursor()
        # IMMEDIATE takes the write lock up front: claims cannot interleave between read and write.
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            with suppress(sqlite3.Error):
                conn.rollback()
            raise
        else:
            conn.commit()
        finally:
            cur.close()

    def _claim_message_rows(self, cur: Any, now: float, limit: int) -> list[Sequence[Any]]:
        cur.execute("SELECT id, attempts FROM messages WHERE status = 'pending' "
                    "OR (status = 'processing' AND lease_until < ?) "
                    "ORDER BY received_at, id LIMIT ?", (now, int(limit)))
        return list(cur.fetchall())

    def _claim_outbox_row(self, cur: Any, kind: str, now: float) -> Sequence[Any] | None:
        cur.execute("SELECT id, status, lease_until, next_attempt_at FROM outbox "
                    "WHERE destination_kind = ? AND status IN ('pending', 'sending') "
                    "ORDER BY created_at, id LIMIT 1", (kind,))
        row = cur.fetchone()
        return _claimable(row, now)


def _claimable(row: Sequence[Any] | None, now: float) -> Sequence[Any] | None:
    if row is None:
        return None
    _, status, lease_until, next_attempt_at = row
    if status == "sending" and lease_until is not None and float(lease_until) > now:
        return None
    if status == "pending" and next_attempt_at is not None and float(next_attempt_at) > now:
        return None
    return row


def sqlite_path(url: str) -> str:
    """The file path of a sqlite:/// URL (":memory:" is not allowed: the queue must survive)."""
    path = url.split("sqlite:///", 1)[1] if url.startswith("sqlite:///") else ""
    if not path or path == ":memory:":
        raise ValueError(f"bad SQLite store URL {url!r}: use sqlite:///PATH")
    return os.path.expanduser(path)
