"""The classification worker: a thread that claims stored messages and runs the pipeline.

Started by the service once the model is loaded (`Worker(store, pipeline).start()`); the
listener calls `wake()` after each commit so a message waits for no poll interval. Several
workers (threads or replicas on PostgreSQL) may share one store: claims are leases.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from radproto.adapter.pipeline import Outcome, Pipeline, log_event
from radproto.adapter.store import Store, StoreUnavailable

log = logging.getLogger("radproto.worker")


class Worker:
    def __init__(self, store: Store, pipeline: Pipeline, *, worker_id: str | None = None,
                 batch_size: int = 8, lease_s: float = 120.0, poll_s: float = 1.0) -> None:
        self.store = store
        self.pipeline = pipeline
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.batch_size = batch_size
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.processed = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        """Thread-safe (callable from the event loop): there is work to claim."""
        self._wake.set()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run_once(self) -> list[Outcome]:
        """Claim up to one batch and process it; [] when the queue is empty."""
        if self._stop.is_set():
            return []
        claimed = self.store.claim_messages(self.worker_id, self.lease_s, limit=self.batch_size)
        if not claimed:
            return []
        outcomes = self.pipeline.process(claimed)
        self.processed += sum(o.status == "done" for o in outcomes)
        return outcomes

    def drain(self, timeout: float = 30.0) -> int:
        """Process until the queue is empty (tests, one-shot runs); returns messages done."""
        deadline = time.monotonic() + timeout
        done = 0
        while time.monotonic() < deadline:
            outcomes = self.run_once()
            if not outcomes:
                return done
            done += sum(o.status == "done" for o in outcomes)
        return done

    def start(self) -> Worker:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="radproto-worker", daemon=True)
        self._thread.start()
        log_event(log, "worker_started", worker_id=self.worker_id)
        return self

    def stop(self, timeout: float | None = 30.0) -> None:
        """Finish the batch in hand, then stop (its messages are completed, not abandoned)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        log_event(log, "worker_stopped", worker_id=self.worker_id, processed=self.processed)

    def _loop(self) -> None:
        backoff = self.poll_s
        while not self._stop.is_set():
            try:
                outcomes = self.run_once()
                backoff = self.poll_s
            except StoreUnavailable as exc:
                log_event(log, "worker_store_unavailable", logging.WARNING, error=str(exc)[:200])
                outcomes = []
                backoff = min(backoff * 2, 30.0)
            except Exception as exc:  # keep the worker alive; the lease retries the batch
                log.exception("worker batch failed", extra={"event": "worker_error",
                                                            "fields": {"error": repr(exc)}})
                outcomes = []
                backoff = min(backoff * 2, 30.0)
            if outcomes:
                continue
            self._wake.wait(backoff)
            self._wake.clear()
