"""The outbox relay: sends stored write-backs over MLLP, in order, until each is acknowledged.

AA/CA: sent. AE/AR/CE/CR: failed for good (recorded with the destination's text).
No connection or no ACK: retried with exponential backoff; the row stays in the store, so a
restart loses nothing. A retried message keeps its MSH-10, so a destination that did get the
first copy can recognise the resend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from radproto.adapter.mllp_client import MllpClient, TransientSendError
from radproto.adapter.observability import WRITEBACK_FAILURES
from radproto.adapter.pipeline import log_event
from radproto.adapter.store import OutboxRow, Store, StoreUnavailable

log = logging.getLogger("radproto.outbox")


def backoff_seconds(attempts: int, initial: float, maximum: float) -> float:
    """Exponential backoff with +-10 % jitter (attempts counts from 1)."""
    base = min(maximum, initial * (2 ** max(0, attempts - 1)))
    return base * random.uniform(0.9, 1.1)


class OutboxRelay:
    def __init__(self, store: Store, *, kind: str = "mllp",
                 client_factory: Callable[[str], MllpClient] | None = None,
                 backoff_initial_s: float = 1.0, backoff_max_s: float = 60.0,
                 poll_s: float = 1.0, worker_id: str = "relay",
                 lease_s: float = 120.0) -> None:
        self.store = store
        self.kind = kind
        self.client_factory = client_factory or _default_client
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.poll_s = poll_s
        self.worker_id = worker_id
        self.lease_s = lease_s
        self.sent = 0
        self.failed = 0
        self._clients: dict[str, MllpClient] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task | None = None

    def wake(self) -> None:
        """Call from the loop's thread (or via loop.call_soon_threadsafe)."""
        self._wake.set()

    def start(self) -> OutboxRelay:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="outbox-relay")
        return self

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 15)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
        for client in self._clients.values():
            await client.close()

    async def run(self) -> None:
        while not self._stopping:
            try:
                busy = await self.send_one()
            except StoreUnavailable as exc:
                log_event(log, "outbox_store_unavailable", logging.WARNING, error=str(exc)[:200])
                busy = False
            except Exception as exc:  # keep relaying; the lease retries the row
                log_event(log, "outbox_error", logging.ERROR, error=repr(exc)[:200])
                busy = False
            if not busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)
                self._wake.clear()

    async def send_one(self) -> bool:
        """Claim and send the next due row; False when there is none."""
        row = await asyncio.to_thread(self.store.claim_outbox, self.kind,
                                      worker_id=self.worker_id, lease_seconds=self.lease_s)
        if row is None:
            return False
        await self._deliver(row)
        return True

    async def _deliver(self, row: OutboxRow) -> None:
        client = self._client(row.destination)
        try:
            ack = await client.send(row.payload)
        except TransientSendError as exc:
            WRITEBACK_FAILURES.labels(destination_kind=self.kind).inc()
            delay = backoff_seconds(row.attempts, self.backoff_initial_s, self.backoff_max_s)
            retry_at = datetime.now(UTC) + timedelta(seconds=delay)
            await asyncio.to_thread(self.store.mark_outbox_failed, row.id, str(exc),
                                    retry_at=retry_at)
            log_event(log, "outbox_retry", outbox_id=row.id, attempts=row.attempts,
                      retry_in_s=round(delay, 2), error=str(exc)[:200])
            return
        if ack.accepted:
            await asyncio.to_thread(self.store.mark_outbox_sent, row.id, detail=ack.code)
            self.sent += 1
            log_event(log, "outbox_sent", outbox_id=row.id, suggestion_id=row.suggestion_id,
                      ack=ack.code, attempts=row.attempts)
        else:
            await asyncio.to_thread(self.store.mark_outbox_failed, row.id,
                                    f"{ack.code}: {ack.text}"[:500])
            self.failed += 1
            WRITEBACK_FAILURES.labels(destination_kind=self.kind).inc()
            log_event(log, "outbox_refused", logging.WARNING, outbox_id=row.id, ack=ack.code)

    def _client(self, destination: str) -> MllpClient:
        if destination not in self._clients:
            self._clients[destination] = self.client_factory(destination)
        return self._clients[destination]


def _default_client(destination: str) -> MllpClient:
    host, _, port = destination.rpartition(":")
    return MllpClient(host, int(port))
