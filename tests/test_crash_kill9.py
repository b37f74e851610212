"""Crash safety: kill -9 the service during a burst of 1,000 messages, restart it, and check that
every acknowledged message is classified exactly once and none is lost.

The service runs as a real subprocess: this file is also its entry point (see __main__ below),
with a keyword classifier as a fast test double of the model (not of the store: the store is
the real SQLite file / the real PostgreSQL).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
TOTAL = 1000
CONNECTIONS = 4
KILL_AFTER_ACKS = 400


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(store_url: str, port: int, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, str(Path(__file__)), store_url, str(port)],
                            stdout=subprocess.DEVNULL, stderr=log_path.open("ab"), env=env)


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the service exited during start-up"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("the service did not start listening")


async def _burst(port: int, control_ids: list[str], acked: set[str], *,
                 kill: Callable[[], None] | None = None) -> None:
    """Engines sending over several connections; stop at the first broken connection."""
    from conftest import orm_message
    from hl7.mllp import open_hl7_connection

    chunks = [control_ids[i::CONNECTIONS] for i in range(CONNECTIONS)]

    async def engine(ids: list[str]) -> None:
        try:
            reader, writer = await open_hl7_connection("127.0.0.1", port)
        except OSError:
            return
        try:
            for cid in ids:
                writer.writeblock(orm_message(cid, placer=f"PL-{cid}",
                                              exam="CT ABDOMEN PELVIS WITH CONTRAST"))
                await writer.drain()
                block = await asyncio.wait_for(reader.readblock(), 10)
                if b"MSA|AA|" + cid.encode() in block:
                    acked.add(cid)
                if kill is not None and len(acked) >= KILL_AFTER_ACKS:
                    kill()
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            return  # the service died: the engine keeps the rest for later
        finally:
            writer.close()

    await asyncio.gather(*(engine(ids) for ids in chunks))


@pytest.mark.parametrize("store_url", ["sqlite", "postgresql"], indirect=True)
def test_kill9_during_a_burst_loses_nothing_and_suggests_once(store_url, tmp_path):
    from radproto.adapter.store import open_store

    port = _free_port()
    log_path = tmp_path / "service.log"
    control_ids = [f"K{i:05d}" for i in range(TOTAL)]
    acked_before: set[str] = set()

    proc = _start(store_url, port, log_path)
    killed = []

    def kill() -> None:
        if not killed:
            killed.append(time.monotonic())
            os.kill(proc.pid, signal.SIGKILL)

    started = time.monotonic()
    try:
        _wait_listening(port, proc)
        asyncio.run(_burst(port, control_ids, acked_before, kill=kill))
    finally:
        if proc.poll() is None and not killed:
            proc.kill()
        proc.wait(10)
    assert killed and proc.returncode == -signal.SIGKILL
    assert KILL_AFTER_ACKS <= len(acked_before) < TOTAL
    crashed = open_store(store_url)
    at_kill = crashed.message_counts()
    crashed.close()
    # the kill left acknowledged work unfinished (queued or mid-classification)
    assert at_kill.get("pending", 0) + at_kill.get("processing", 0) > 0, at_kill
    print("at kill:", at_kill, "acknowledged:", len(acked_before))

    # Restart; the engines resend everything not acknowledged (and, like engines that lost an
    # ACK in the crash, some that were acknowledged: duplicates must not be classified again).
    proc = _start(store_url, port, log_path)
    try:
        _wait_listening(port, proc)
        resend = [c for c in control_ids if c not in acked_before] + sorted(acked_before)[:50]
        acked_after: set[str] = set()
        asyncio.run(_burst(port, resend, acked_after))
        assert acked_after == set(resend)

        store = open_store(store_url)
        try:
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                counts = store.message_counts()
                if counts.get("done", 0) == TOTAL:
                    break
                time.sleep(0.1)
            assert store.message_counts() == {"done": TOTAL}, store.message_counts()
            messages = store.messages(limit=TOTAL * 2)
            keys = {m.dedup_key.split("|")[-1] for m in messages}
            assert keys == set(control_ids)  # every acknowledged message is there, none lost
            suggestions = store.suggestions_for(limit=TOTAL * 2)
            per_message: dict[str, int] = {}
            for s in suggestions:
                per_message[s.message_id] = per_message.get(s.message_id, 0) + 1
            assert len(suggestions) == TOTAL and set(per_message.values()) == {1}
            assert {m.id for m in messages} == set(per_message)
        finally:
            store.close()
        proc.send_signal(signal.SIGTERM)  # graceful stop exits cleanly
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert time.monotonic() - started < 60


if __name__ == "__main__":
    # The service under test: python tests/test_crash_kill9.py STORE_URL MLLP_PORT
    sys.path.insert(0, str(HERE))
    from conftest import KeywordClassifier

    from radproto.adapter.service import configure_logging, run_service
    from radproto.adapter.settings import load_settings

    settings = load_settings(None, {
        "store": sys.argv[1], "mllp_port": int(sys.argv[2]), "http_enabled": False,
        "worker_batch_size": 16, "worker_lease_s": 2.0, "worker_poll_s": 0.2,
        "security": {"allow_anonymous": True},
    })
    configure_logging("WARNING")
    # The model's stand-in takes 1 ms per order so that kill -9 lands mid-classification too.
    raise SystemExit(asyncio.run(run_service(settings, classifier=KeywordClassifier(
        delay_s=0.001))))
