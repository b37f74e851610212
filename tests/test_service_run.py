"""The service: settings (flags > env > YAML > defaults), the HTTP app, a full in-process run."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import KeywordClassifier, orm_message
from hl7.mllp import open_hl7_connection

from radproto.adapter.http_app import ServiceContext, create_app
from radproto.adapter.service import Service
from radproto.adapter.settings import load_settings
from radproto.adapter.store import open_store
from radproto.model.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_embedded_defaults(monkeypatch):
    for name in ("RADPROTO_MLLP_PORT", "RADPROTO_STORE", "RADPROTO_HOST", "RADPROTO_MODEL"):
        monkeypatch.delenv(name, raising=False)
    s = load_settings()
    assert (s.host, s.mllp_port, s.http_port) == ("127.0.0.1", 2575, 8080)
    assert s.store == "sqlite:///radproto-data/radproto.db"
    assert s.model == ""  # the default model


def test_precedence_flags_env_file(tmp_path, monkeypatch):
    cfg = tmp_path / "radproto.yaml"
    cfg.write_text("mllp_port: 3000\nhttp_port: 9000\nhost: 0.0.0.0\n"
                   "security:\n  log_format: text\n")
    monkeypatch.setenv("RADPROTO_HTTP_PORT", "9100")
    monkeypatch.setenv("RADPROTO_SECURITY__RETENTION_DAYS", "30")
    s = load_settings(cfg, {"host": "127.0.0.2", "mllp_port": None})
    assert s.mllp_port == 3000  # file
    assert s.http_port == 9100  # env beats file
    assert s.host == "127.0.0.2"  # flag beats all
    assert s.security.retention_days == 30 and s.security.log_format == "text"


def test_the_documented_example_config_loads():
    example = Path(__file__).resolve().parents[1] / "docs" / "radproto.example.yaml"
    s = load_settings(example)
    assert s.scoring_batch_tokens == 32768 and s.compile_kernels is False


def test_bad_config_file_names_line_and_field(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("host: 127.0.0.1\n# comment\nmllp_port: not-a-port\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert err.value.line == 3 and err.value.field == "mllp_port"
    assert "bad.yaml, line 3, field 'mllp_port'" in str(err.value)

    cfg.write_text("host: x\nsecurity:\n  retention_days: -1\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert err.value.line == 3 and err.value.field == "security.retention_days"

    cfg.write_text("host: x\ncompile_kernels: true\nscoring_batch_tokens: 100\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert err.value.line == 3 and err.value.field == "scoring_batch_tokens"

    cfg.write_text("host: x\nmllp_portt: 1\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert err.value.line == 2 and err.value.field == "mllp_portt"

    cfg.write_text("host: [unclosed\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert err.value.line is not None


def test_bad_env_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("RADPROTO_MLLP_PORT", "99999")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "RADPROTO_MLLP_PORT" in str(err.value)


def test_cli_serve_bad_config_exits_2(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("writeback_style: fax\n")
    proc = subprocess.run([sys.executable, "-m", "radproto", "serve", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    assert "line 1" in proc.stderr and "writeback_style" in proc.stderr


def test_healthz_and_router_plug_in(tmp_path):
    from fastapi import APIRouter
    from fastapi.testclient import TestClient

    store = open_store(f"sqlite:///{tmp_path / 'h.db'}")
    settings = load_settings(None, {"security": {"allow_anonymous": True}})
    ctx = ServiceContext(settings=settings, store=store, catalog=KeywordClassifier().catalog)
    extra = APIRouter()

    @extra.get("/ping-extra")
    def ping() -> dict:
        return {"pong": True}

    with TestClient(create_app(ctx, routers=[extra], parts=())) as client:
        body = client.get("/healthz").json()
        assert body["store"] == "ok" and body["model"] == "loading"
        assert client.get("/ping-extra").json() == {"pong": True}
        store.close()
        assert client.get("/healthz").status_code == 503


async def test_service_end_to_end_in_process(tmp_path):
    settings = load_settings(None, {
        "mllp_port": 0, "http_port": 0, "store": f"sqlite:///{tmp_path / 'svc.db'}",
        "worker_poll_s": 0.05, "security": {"allow_anonymous": True}})
    service = Service(settings, classifier=KeywordClassifier())
    ctx = await service.start()
    try:
        reader, writer = await open_hl7_connection("127.0.0.1", ctx.listener.port)
        for i in range(5):
            writer.writeblock(orm_message(f"s{i}", placer=f"S{i}", exam="US ABDOMEN"))
            assert b"MSA|AA|s" in await asyncio.wait_for(reader.readblock(), 5)
        writer.close()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}") as http:
            for _ in range(200):
                health = (await http.get("/healthz")).json()
                if health["queue"] == {"done": 5}:
                    break
                await asyncio.sleep(0.05)
            assert health["queue"] == {"done": 5}
            assert health["model"] == "ready" and health["worker"] == "running"
        assert ctx.store.latest_suggestion_for_order("S3").suggestion.model_version \
            == "keyword-test-1"
    finally:
        await service.stop()
    assert not ctx.worker.alive


def test_serve_flags_map_to_settings(tmp_path, monkeypatch):
    from radproto.adapter.settings import settings_from_cli
    from radproto.cli import build_parser

    monkeypatch.delenv("RADPROTO_MODEL", raising=False)
    keys = tmp_path / "keys.txt"
    args = build_parser().parse_args([
        "serve", "--mllp-port", "3575", "--http-port", "9080", "--host", "0.0.0.0",
        "--store", "postgresql://postgres@127.0.0.1:5432/test", "--model", "models:/x@champion",
        "--api-keys", str(keys)])
    s = settings_from_cli(args)
    assert (s.mllp_port, s.http_port, s.host) == (3575, 9080, "0.0.0.0")
    assert s.store.startswith("postgresql://") and s.model == "models:/x@champion"
    assert s.security.api_keys_file == keys


def test_radproto_serve_command_acks_while_the_model_is_unavailable(tmp_path):
    """The real `radproto serve`: ACKs do not depend on the model (here one that cannot load:
    the message waits in the queue), /healthz says so, SIGTERM stops it cleanly."""
    import os
    import signal
    import socket
    import time

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    mllp, http = free_port(), free_port()
    env = {**os.environ, "RADPROTO_SECURITY__ALLOW_ANONYMOUS": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "radproto", "serve", "--mllp-port", str(mllp),
                             "--http-port", str(http), "--model", str(tmp_path / "no-model")],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                health = httpx.get(f"http://127.0.0.1:{http}/healthz", timeout=1).json()
                if health["model"] == "failed":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert health["model"] == "failed"

        async def send() -> bytes:
            reader, writer = await open_hl7_connection("127.0.0.1", mllp)
            writer.writeblock(orm_message("cli-1"))
            ack = await asyncio.wait_for(reader.readblock(), 5)
            writer.close()
            return ack

        assert b"MSA|AA|cli-1" in asyncio.run(send())
        assert httpx.get(f"http://127.0.0.1:{http}/healthz").json()["queue"] == {"pending": 1}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert (tmp_path / "radproto-data" / "radproto.db").is_file()  # the default store
        logs = proc.stderr.read()
        assert '"message_accepted"' in logs and "cli-1" in logs  # ids and outcomes are logged
        for phi in ("PATIENT", "19800101", "MRN0001", "headache"):  # names, dates, MRNs, text
            assert phi not in logs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def test_busy_port_is_a_config_error(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for field in ("mllp_port", "http_port"):
            other = "http_port" if field == "mllp_port" else "mllp_port"
            settings = load_settings(None, {field: port, other: 0,
                                            "store": f"sqlite:///{tmp_path / 'p.db'}",
                                            "security": {"allow_anonymous": True}})
            service = Service(settings, classifier=KeywordClassifier())
            with pytest.raises(ConfigError) as err:
                await service.start()
            await service.stop()
            assert err.value.field == field and str(port) in str(err.value)
