"""Dynamic batching for the scoring worker: a burst of orders shares one forward pass.

Callers submit one item each and get a future; a single worker thread takes what is
queued (up to `max_batch` items, waiting at most `max_wait_ms` for more once the first
arrives), calls `score_batch(items)` once and hands each caller its own result. The GPU
then sees batches of the burst's size instead of one order at a time.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
_STOP = object()


class DynamicBatcher(Generic[T, R]):
    """Collects single submissions into batches for `score_batch` (one worker thread)."""

    def __init__(self, score_batch: Callable[[Sequence[T]], Sequence[R]], *,
                 max_batch: int = 64, max_wait_ms: float = 5.0, name: str = "batcher") -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError("max_batch must be positive and max_wait_ms not negative")
        self._score = score_batch
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self._queue: queue.Queue[Any] = queue.Queue()
        self._closed = False
        self.batch_sizes: list[int] = []  # for metrics and tests
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: T) -> Future[R]:
        if self._closed:
            raise RuntimeError("the batcher is closed")
        future: Future[R] = Future()
        self._queue.put((item, future))
        return future

    async def score(self, item: T) -> R:
        """Async callers: await one item's result."""
        return await asyncio.wrap_future(self.submit(item))

    def close(self, timeout: float | None = 10.0) -> None:
        """Finish what is queued, then stop the worker."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join(timeout)

    def __enter__(self) -> DynamicBatcher[T, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _collect(self, first: Any) -> tuple[list[Any], bool]:
        batch = [first]
        stop = False
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                entry = self._queue.get(timeout=max(0.0, remaining)) if remaining > 0 \
                    else self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is _STOP:
                stop = True
                break
            batch.append(entry)
        return batch, stop

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stop = self._collect(first)
            live = [(item, f) for item, f in batch if f.set_running_or_notify_cancel()]
            if not live:
                continue
            self.batch_sizes.append(len(live))
            try:
                results = list(self._score([item for item, _ in live]))
                if len(results) != len(live):
                    raise RuntimeError(
                        f"score_batch returned {len(results)} results for {len(live)} items")
            except Exception as exc:  # every caller of the batch sees the failure
                log.warning("batch of %d failed: %s", len(live), type(exc).__name__)
                for _, future in live:
                    future.set_exception(exc)
                continue
            for (_, future), result in zip(live, results, strict=True):
                future.set_result(result)
        # drain: anything submitted after close still gets an answer
        while True:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is not _STOP:
                entry[1].set_exception(RuntimeError("the batcher is closed"))
