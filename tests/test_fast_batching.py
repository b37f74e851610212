"""The dynamic batcher groups a burst into batches and returns each caller its own result."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from radproto.model.fast_batching import DynamicBatcher


def test_burst_is_batched_and_results_stay_with_their_callers():
    calls: list[list[int]] = []

    def score(items):
        calls.append(list(items))
        time.sleep(0.02)  # a forward pass: more submissions queue meanwhile
        return [i * 10 for i in items]

    with DynamicBatcher(score, max_batch=8, max_wait_ms=20) as batcher:
        futures = [batcher.submit(i) for i in range(30)]
        results = [f.result(timeout=5) for f in futures]
    assert results == [i * 10 for i in range(30)]
    assert max(batcher.batch_sizes) > 1 and max(batcher.batch_sizes) <= 8
    assert sum(batcher.batch_sizes) == 30
    assert sorted(i for c in calls for i in c) == list(range(30))


def test_concurrent_threads_each_get_their_own_answer():
    with DynamicBatcher(lambda items: [f"r{i}" for i in items], max_batch=16,
                        max_wait_ms=5) as batcher:
        answers: dict[int, str] = {}

        def worker(i: int) -> None:
            answers[i] = batcher.submit(i).result(timeout=5)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert answers == {i: f"r{i}" for i in range(40)}


async def test_async_callers():
    with DynamicBatcher(lambda items: [i + 1 for i in items], max_wait_ms=10) as batcher:
        got = await asyncio.gather(*(batcher.score(i) for i in range(12)))
    assert got == [i + 1 for i in range(12)]


def test_failure_reaches_every_caller_of_the_batch_and_worker_survives():
    def score(items):
        if -1 in items:
            raise ValueError("bad order")
        return items

    with DynamicBatcher(score, max_batch=4, max_wait_ms=50) as batcher:
        bad = [batcher.submit(i) for i in (1, -1)]
        for f in bad:
            with pytest.raises(ValueError):
                f.result(timeout=5)
        assert batcher.submit(7).result(timeout=5) == 7


def test_wrong_result_count_is_an_error_and_closed_batcher_refuses():
    batcher = DynamicBatcher(lambda items: [], max_wait_ms=1)
    with pytest.raises(RuntimeError):
        batcher.submit(1).result(timeout=5)
    batcher.close()
    with pytest.raises(RuntimeError):
        batcher.submit(2)
