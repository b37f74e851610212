"""Stopping the real `radproto serve` (a subprocess) with SIGINT or SIGTERM at any moment:
during start-up, while the model loads and while serving, the shipped default model included.
Each stop exits with status 0, without "terminate called" (a C++ abort), and leaves a store
that opens cleanly."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from radproto.adapter.store import open_store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    """`radproto serve` in `cwd`, its stderr collected as it comes."""

    def __init__(self, cwd: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.http = _free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "radproto", "serve", "--mllp-port", str(_free_port()),
             "--http-port", str(self.http), *extra],
            cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "RADPROTO_SECURITY__ALLOW_ANONYMOUS": "true", **(env or {})})
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return
            assert self.proc.poll() is None, "".join(self.lines)[-3000:]
            time.sleep(0.1)
        raise AssertionError(f"no {text!r} in {timeout} s:\n" + "".join(self.lines)[-3000:])

    def health(self) -> dict:
        try:
            return httpx.get(f"http://127.0.0.1:{self.http}/healthz", timeout=2).json()
        except httpx.HTTPError:
            return {}

    def stop(self, sig: signal.Signals, timeout: float = 120) -> str:
        self.proc.send_signal(sig)
        try:
            status = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(10)
        stderr = "".join(self.lines)
        assert status == 0, stderr[-3000:]
        assert "terminate called" not in stderr and "Traceback" not in stderr, stderr[-3000:]
        return stderr


def _store_opens_cleanly(cwd: Path) -> None:
    path = cwd / "radproto-data" / "radproto.db"
    assert path.is_file()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store = open_store(f"sqlite:///{path}")
    try:
        assert store.ping()
    finally:
        store.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_during_start_up(tmp_path, sig):
    serve = Serve(tmp_path, "--model", str(tmp_path / "no-model"))
    time.sleep(1.0)  # importing, reading settings: before the service is listening
    serve.stop(sig)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_while_the_model_loads_and_while_serving(tmp_path, sig):
    serve = Serve(tmp_path, "--model", "embedded")
    serve.wait_for("radproto serving", 60)  # listening; the model is loading in a thread
    serve.stop(sig)
    _store_opens_cleanly(tmp_path)

    serve = Serve(tmp_path, "--model", "embedded")
    deadline = time.monotonic() + 180
    while serve.health().get("model") != "ready":
        assert time.monotonic() < deadline, "".join(serve.lines)[-3000:]
        time.sleep(0.3)
    serve.stop(sig)
    _store_opens_cleanly(tmp_path)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_default_model_serves_an_hl7_order_within_a_minute_and_stops(tmp_path, sig):
    """No model configured and an empty registry: the shipped model loads (no training) and
    an order that came over MLLP gets its suggestion within a minute of the start."""
    import hl7.client  # python-hl7's MLLP client, a real peer
    from conftest import orm_message

    env = {"RADPROTO_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    started = time.monotonic()
    serve = Serve(tmp_path, env=env)
    serve.wait_for("radproto serving", 60)
    mllp = int(serve.proc.args[serve.proc.args.index("--mllp-port") + 1])
    with hl7.client.MLLPClient("127.0.0.1", mllp) as client:
        ack = client.send_message(orm_message(
            "DEF1", placer="DEF1", exam="CT ABDOMEN PELVIS",
            reason="RLQ pain, fever, WBC 15, ?appendicitis").decode())
    assert b"MSA|AA" in ack
    deadline = started + 60
    suggested = None
    while suggested is None:
        assert time.monotonic() < deadline, "".join(serve.lines)[-3000:]
        suggested = _suggestion_of(tmp_path, "DEF1")
        time.sleep(0.5)
    assert serve.health()["model"] == "ready"
    assert serve.health()["model_version"].startswith("m-")  # the shipped directory's hash
    assert suggested  # a catalog protocol
    serve.stop(sig)
    _store_opens_cleanly(tmp_path)


def _suggestion_of(cwd: Path, placer: str) -> str | None:
    """The suggested protocol of an order in the service's store, once there is one."""
    store = open_store(f"sqlite:///{cwd / 'radproto-data' / 'radproto.db'}")
    try:
        found = store.latest_suggestion_for_order(placer)
    finally:
        store.close()
    return found.protocol if found is not None else None
