"""The outbox relays: stored write-backs sent in order until each is acknowledged, retried with
one backoff (`backoff_seconds`). `OutboxRelay` sends "mllp" rows over MLLP; `FhirOutboxRelay`
sends "fhir" rows (Task + Provenance, retractions, verdicts) through a FhirClient.

MLLP:

AA/CA: sent. AE/AR/CE/CR: failed for good (recorded with the destination's text).
No connection or no ACK: retried with exponential backoff; the row stays in the store, so a
restart loses nothing. A retried message keeps its MSH-10, so a destination that did get the
first copy can recognise the resend.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from radproto.adapter.fhir_client import OUTBOX_KIND, FhirClient, FhirClientError
from radproto.adapter.mllp_client import MllpClient, TransientSendError
from radproto.adapter.observability import WRITEBACK_FAILURES
from radproto.adapter.pipeline import log_event
from radproto.adapter.store import OutboxRow, Store, StoreUnavailable
from radproto.model.suggestion import Suggestion

log = logging.getLogger("radproto.outbox")
fhir_log = logging.getLogger("radproto.fhir_client")  # the FHIR relay logs as before


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


class FhirOutboxRelay:
    """Sends the store's "fhir" outbox rows in order; a server that is down loses nothing.

    A transient failure puts the row back with a growing delay (never dropped); a permanent
    one (a 4xx the server will answer again) marks it failed after `max_permanent_attempts`.
    """

    def __init__(self, store: Any, client: FhirClient, *, worker_id: str = "fhir-relay",
                 idle_sleep: float = 0.5, max_delay: float = 60.0,
                 max_permanent_attempts: int = 3) -> None:
        self.store = store
        self.client = client
        self.worker_id = worker_id
        self.idle_sleep = idle_sleep
        self.max_delay = max_delay
        self.max_permanent_attempts = max_permanent_attempts
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = await self.run_once()
            except Exception as exc:  # the store is down, say: keep relaying once it is back
                fhir_log.warning("fhir outbox relay: %s", type(exc).__name__)
                busy = False
            if not busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.idle_sleep)

    async def run_once(self) -> bool:
        """Send one row if one is due; True if a row was handled."""
        row = await asyncio.to_thread(self.store.claim_outbox, OUTBOX_KIND,
                                      worker_id=self.worker_id)
        if row is None:
            return False
        try:
            data = json.loads(row.payload)
            if "retract" in data:
                retract = data["retract"]
                task_ref = await self.client.retract_task(retract["identifier"],
                                                          retract["business"])
                detail = f"{task_ref or 'no Task'} cancelled ({retract['business']})"
            elif "verdict" in data:
                verdict = data["verdict"]
                task_ref = await self.client.record_verdict(verdict["identifier"], verdict)
                detail = f"{task_ref or 'no Task'} {verdict['business']}"
            else:
                result = await self.client.write_suggestion(
                    data.get("task"), Suggestion.model_validate(data["suggestion"]),
                    service_request_ref=data.get("service_request_ref", ""),
                    annotation=data.get("annotation"))
                detail = f"{result.task_ref} {result.provenance_ref}"
        except FhirClientError as exc:
            permanent = not exc.retryable and row.attempts >= self.max_permanent_attempts
            retry_at = None if permanent else datetime.now(UTC) + timedelta(
                seconds=backoff_seconds(row.attempts, 1.0, self.max_delay))
            fhir_log.warning("fhir outbox %s failed (attempt %s): %s", row.id, row.attempts, exc)
            await asyncio.to_thread(self.store.mark_outbox_failed, row.id, str(exc),
                                    retry_at=retry_at)
            return True
        except (ValueError, KeyError) as exc:  # a malformed row never becomes valid
            await asyncio.to_thread(self.store.mark_outbox_failed, row.id,
                                    f"bad outbox payload: {exc}", retry_at=None)
            return True
        await asyncio.to_thread(self.store.mark_outbox_sent, row.id, detail=detail)
        return True
