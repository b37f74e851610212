"""The outbox relay: stored write-backs sent in order until each is acknowledged. One loop
(`OutboxRelay`), one backoff (`backoff_seconds`), two senders:

    MllpSender   "mllp" rows over MLLP. AA/CA: sent. AE/AR/CE/CR: failed for good (recorded
                 with the destination's text). No connection or no ACK: retried. A retried
                 message keeps its MSH-10, so a destination that did get the first copy can
                 recognise the resend.
    FhirSender   "fhir" rows (Task + Provenance, retractions, verdicts) through a FhirClient.
                 A transient failure is retried; a permanent one (a 4xx the server will answer
                 again) fails for good after `max_permanent_attempts`.

A row to retry stays in the store with its next time (exponential backoff), so a destination
that is down, or a restart, loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from radproto.adapter.fhir_client import OUTBOX_KIND, FhirClient, FhirClientError
from radproto.adapter.mllp_client import MllpClient, TransientSendError
from radproto.adapter.observability import WRITEBACK_FAILURES
from radproto.adapter.pipeline import log_event
from radproto.adapter.store import OutboxRow, Store, StoreUnavailable
from radproto.model.suggestion import Suggestion

log = logging.getLogger("radproto.outbox")


def backoff_seconds(attempts: int, initial: float, maximum: float) -> float:
    """Exponential backoff with +-10 % jitter (attempts counts from 1)."""
    base = min(maximum, initial * (2 ** max(0, attempts - 1)))
    return base * random.uniform(0.9, 1.1)


@dataclass(frozen=True)
class Delivery:
    """What became of one send: sent, to be retried later, or failed for good."""

    status: str  # "sent" | "retry" | "failed"
    detail: str = ""


class Sender(Protocol):
    """Sends one outbox row of its `kind` to its destination."""

    kind: str

    async def send(self, row: OutboxRow) -> Delivery: ...

    async def close(self) -> None: ...


class OutboxRelay:
    """Claims the due rows of its sender's kind, in order, and records what became of each."""

    def __init__(self, store: Store, sender: Sender | None = None, *,
                 client_factory: Callable[[str], MllpClient] | None = None,
                 backoff_initial_s: float = 1.0, backoff_max_s: float = 60.0,
                 poll_s: float = 1.0, worker_id: str = "relay",
                 lease_s: float = 120.0) -> None:
        self.store = store
        self.sender = sender or MllpSender(client_factory)
        self.kind = self.sender.kind
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.poll_s = poll_s
        self.worker_id = worker_id
        self.lease_s = lease_s
        self.sent = 0
        self.failed = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task | None = None

    def wake(self) -> None:
        """Call from the loop's thread (or via loop.call_soon_threadsafe)."""
        self._wake.set()

    def start(self) -> OutboxRelay:
        self._task = asyncio.get_running_loop().create_task(
            self.run(), name=f"{self.kind}-outbox-relay")
        return self

    async def stop(self, timeout_s: float = 15.0) -> None:
        """Finish the row in hand (at most `timeout_s`), then close the sender."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout_s)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
        await self.sender.close()

    async def run(self) -> None:
        while not self._stopping:
            try:
                busy = await self.send_one()
            except StoreUnavailable as exc:
                log_event(log, "outbox_store_unavailable", logging.WARNING, kind=self.kind,
                          error=str(exc)[:200])
                busy = False
            except Exception as exc:  # keep relaying; the lease retries the row
                log_event(log, "outbox_error", logging.ERROR, kind=self.kind,
                          error=repr(exc)[:200])
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
        delivery = await self.sender.send(row)
        if delivery.status == "sent":
            await asyncio.to_thread(self.store.mark_outbox_sent, row.id, detail=delivery.detail)
            self.sent += 1
            log_event(log, "outbox_sent", outbox_id=row.id, suggestion_id=row.suggestion_id,
                      kind=self.kind, attempts=row.attempts)
        elif delivery.status == "retry":
            WRITEBACK_FAILURES.labels(destination_kind=self.kind).inc()
            delay = backoff_seconds(row.attempts, self.backoff_initial_s, self.backoff_max_s)
            await asyncio.to_thread(self.store.mark_outbox_failed, row.id, delivery.detail,
                                    retry_at=datetime.now(UTC) + timedelta(seconds=delay))
            log_event(log, "outbox_retry", outbox_id=row.id, kind=self.kind,
                      attempts=row.attempts, retry_in_s=round(delay, 2),
                      error=delivery.detail[:200])
        else:
            await asyncio.to_thread(self.store.mark_outbox_failed, row.id, delivery.detail,
                                    retry_at=None)
            self.failed += 1
            WRITEBACK_FAILURES.labels(destination_kind=self.kind).inc()
            log_event(log, "outbox_refused", logging.WARNING, outbox_id=row.id,
                      kind=self.kind, attempts=row.attempts)
        return True


# ---------------------------------------------------------------------------- MLLP


class MllpSender:
    """Sends "mllp" rows over one persistent connection per destination."""

    kind = "mllp"

    def __init__(self, client_factory: Callable[[str], MllpClient] | None = None) -> None:
        self.client_factory = client_factory or _default_client
        self._clients: dict[str, MllpClient] = {}

    async def send(self, row: OutboxRow) -> Delivery:
        client = self._clients.get(row.destination)
        if client is None:
            client = self._clients[row.destination] = self.client_factory(row.destination)
        try:
            ack = await client.send(row.payload)
        except TransientSendError as exc:
            return Delivery("retry", str(exc))
        if ack.accepted:
            return Delivery("sent", ack.code)
        return Delivery("failed", f"{ack.code}: {ack.text}"[:500])

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()


def _default_client(destination: str) -> MllpClient:
    host, _, port = destination.rpartition(":")
    return MllpClient(host, int(port))


# ---------------------------------------------------------------------------- FHIR


class FhirSender:
    """Sends "fhir" rows (a suggestion's Task + Provenance, a retraction, a verdict) through
    a FhirClient it does not own (the service closes it)."""

    kind = OUTBOX_KIND

    def __init__(self, client: FhirClient, *, max_permanent_attempts: int = 3) -> None:
        self.client = client
        self.max_permanent_attempts = max_permanent_attempts

    async def send(self, row: OutboxRow) -> Delivery:
        try:
            data = json.loads(row.payload)
            if "retract" in data:
                retract = data["retract"]
                task_ref = await self.client.retract_task(retract["identifier"],
                                                          retract["business"])
                return Delivery("sent",
                                f"{task_ref or 'no Task'} cancelled ({retract['business']})")
            if "verdict" in data:
                verdict = data["verdict"]
                task_ref = await self.client.record_verdict(verdict["identifier"], verdict)
                return Delivery("sent", f"{task_ref or 'no Task'} {verdict['business']}")
            result = await self.client.write_suggestion(
                data.get("task"), Suggestion.model_validate(data["suggestion"]),
                service_request_ref=data.get("service_request_ref", ""),
                annotation=data.get("annotation"))
            return Delivery("sent", f"{result.task_ref} {result.provenance_ref}")
        except FhirClientError as exc:
            permanent = not exc.retryable and row.attempts >= self.max_permanent_attempts
            return Delivery("failed" if permanent else "retry", str(exc))
        except (ValueError, KeyError) as exc:  # a malformed row never becomes valid
            return Delivery("failed", f"bad outbox payload: {exc}")

    async def close(self) -> None:
        pass
