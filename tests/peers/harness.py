"""Start, stop and talk to the Node peers of this folder from pytest.

node_modules is installed by `make test` (`npm ci` here); a missing install fails the test
with that instruction instead of downloading anything from a test.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

PEERS_DIR = Path(__file__).resolve().parent
READY_TIMEOUT_S = 30.0


def require_node_modules() -> None:
    if not (PEERS_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir():
        pytest.fail("tests/peers/node_modules is missing: run `make test` "
                    "(or `cd tests/peers && npm ci`) first", pytrace=False)


class NodePeer:
    """One Node script as a child process that prints "READY <port>" once it serves."""

    def __init__(self, script: str, *args: str, node_flags: tuple[str, ...] = ()) -> None:
        require_node_modules()
        self.argv = ["node", *node_flags, str(PEERS_DIR / script), *args]
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def start(self) -> NodePeer:
        self.proc = subprocess.Popen(self.argv, cwd=PEERS_DIR, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.port = int(self.wait_for("READY").split()[1])
        return self

    def wait_for(self, word: str, timeout: float = READY_TIMEOUT_S) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                if line.startswith(word):
                    return line.strip()
                if not line and self.proc.poll() is not None:
                    break
        raise RuntimeError(f"{self.argv[-1]} did not print {word} (exit {self.proc.poll()})")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, line: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def go_down(self) -> None:
        """The FHIR server stops listening (connections refused); its data stays."""
        self.command("down")
        self.wait_for("DOWN")

    def come_back(self) -> None:
        self.command("up")
        self.wait_for("READY")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def medplum_server() -> NodePeer:
    """The FHIR server: @medplum/fhir-router + MemoryRepository (Node 20 needs the flag)."""
    return NodePeer("fhir_server.mjs", "0", node_flags=("--experimental-websocket",)).start()


def oauth_server(config: dict[str, Any], tmp_path: Path) -> NodePeer:
    path = tmp_path / "oauth-config.json"
    path.write_text(json.dumps(config))
    return NodePeer("oauth_server.mjs", str(path)).start()


def fhir_validate(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """FHIR.js (npm `fhir`, R4) verdicts: [{valid, messages}], one per resource."""
    require_node_modules()
    done = subprocess.run(["node", str(PEERS_DIR / "validate.mjs")], input=json.dumps(resources),
                          capture_output=True, text=True, cwd=PEERS_DIR, timeout=60,
                          env={**os.environ}, check=True)
    return json.loads(done.stdout)


def assert_valid_fhir(resources: list[dict[str, Any]]) -> None:
    for resource, verdict in zip(resources, fhir_validate(resources), strict=True):
        errors = [m for m in verdict["messages"] if m.get("severity") == "error"]
        assert verdict["valid"] and not errors, (resource.get("resourceType"), errors)
