"""The MLLP listener over real sockets, with python-hl7's asyncio MLLP client as the engine."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from pathlib import Path

import hl7
import pytest
from conftest import hl7_fixture_files, load_hl7_fixture, orm_message
from hl7.mllp import open_hl7_connection

from radproto.adapter.hl7_listener import MessageHandler, MllpListener
from radproto.adapter.mllp import frame
from radproto.adapter.security import server_ssl_context
from radproto.adapter.store import open_store


def _msa(ack) -> tuple[str, str]:
    text = str(ack) if not isinstance(ack, bytes) else ack.decode()
    msa = next(s for s in text.replace("\n", "\r").split("\r") if s.startswith("MSA"))
    fields = msa.split("|")
    return fields[1], fields[2]


@pytest.fixture
async def listener(store):
    lst = await MllpListener(MessageHandler(store), port=0, idle_timeout_s=5).start()
    yield lst
    await lst.stop()


async def _send(reader, writer, payload: bytes, timeout: float = 5.0):
    writer.writeblock(payload)
    await writer.drain()
    return await asyncio.wait_for(reader.readmessage(), timeout)


async def test_many_messages_one_connection_and_several_connections(listener, store):
    reader, writer = await open_hl7_connection("127.0.0.1", listener.port)
    for i in range(50):
        writer.writemessage(hl7.parse(orm_message(f"one-{i}", placer=f"P{i}").decode()))
        ack = await asyncio.wait_for(reader.readmessage(), 5)
        assert _msa(ack) == ("AA", f"one-{i}")
    writer.close()

    async def engine(n: int) -> list[tuple[str, str]]:
        r, w = await open_hl7_connection("127.0.0.1", listener.port)
        acks = [_msa(await _send(r, w, orm_message(f"c{n}-{i}"))) for i in range(20)]
        w.close()
        return acks

    results = await asyncio.gather(*(engine(n) for n in range(5)))
    for n, acks in enumerate(results):
        assert acks == [("AA", f"c{n}-{i}") for i in range(20)]
    assert store.message_counts() == {"pending": 150}


async def test_duplicate_is_acknowledged_again_and_stored_once(listener, store):
    reader, writer = await open_hl7_connection("127.0.0.1", listener.port)
    msg = orm_message("dup-1")
    assert _msa(await _send(reader, writer, msg)) == ("AA", "dup-1")
    assert _msa(await _send(reader, writer, msg)) == ("AA", "dup-1")
    # same control id from another sender is a different message
    assert _msa(await _send(reader, writer, orm_message("dup-1", sender="OTHER")))[0] == "AA"
    writer.close()
    assert store.message_counts() == {"pending": 2}


async def test_cancel_is_accepted(listener, store):
    reader, writer = await open_hl7_connection("127.0.0.1", listener.port)
    assert _msa(await _send(reader, writer, orm_message("n1", placer="X9")))[0] == "AA"
    assert _msa(await _send(reader, writer, orm_message("c1", placer="X9", action="CA")))[0] == "AA"
    writer.close()
    assert [m.dedup_key for m in store.messages()] == ["RIS|HOSP|n1", "RIS|HOSP|c1"]


@pytest.mark.parametrize("path", hl7_fixture_files(), ids=lambda p: p.name[:2])
async def test_third_party_samples_get_the_right_answer(listener, store, path: Path):
    payload = load_hl7_fixture(path)
    reader, writer = await open_hl7_connection("127.0.0.1", listener.port)
    writer.writeblock(payload)
    await writer.drain()
    name = path.name
    if name.startswith("02"):
        # v2.2 with MSH-15=NE: enhanced mode, the sender asked for no accept ACK, ever.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readblock(), 0.5)
        assert store.message_counts() == {}  # 2.2 is not supported: not queued either
    else:
        ack = (await asyncio.wait_for(reader.readblock(), 5)).decode()
        control_id = payload.split(b"\r")[0].split(b"|")[9].decode()
        if name.startswith("01"):
            # v2.2 is not supported; MSH-15=AL: enhanced-mode commit reject with ERR 203
            assert _msa(ack) == ("CR", control_id)
            assert "\rERR|" in ack and "203" in ack
            assert store.message_counts() == {}
        else:
            assert _msa(ack) == ("AA", control_id)
            assert store.message_counts() == {"pending": 1}
    # the listener is still serving
    assert _msa(await _send(reader, writer, orm_message("after")))[0] == "AA"
    writer.close()


async def test_content_error_gets_ae_with_err_and_is_not_queued(listener, store):
    bad = orm_message("bad-1").replace(b"OBR|1|", b"OBX|1|")  # no OBR: nothing to order
    reader, writer = await open_hl7_connection("127.0.0.1", listener.port)
    writer.writeblock(bad)
    ack = (await asyncio.wait_for(reader.readblock(), 5)).decode()
    code, control = _msa(ack)
    assert code in ("AE", "AR") and control == "bad-1" and "\rERR|" in ack
    unsupported = orm_message("u-1").replace(b"ORM^O01", b"ADT^A01")
    writer.writeblock(unsupported)
    ack = (await asyncio.wait_for(reader.readblock(), 5)).decode()
    assert _msa(ack) == ("AR", "u-1") and "200" in ack
    writer.close()
    assert store.message_counts() == {}


async def test_garbage_and_oversize_do_not_crash_the_listener(store):
    lst = await MllpListener(MessageHandler(store), port=0, max_message_bytes=2048).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", lst.port)
        big = orm_message("big-1") + b"NTE|1||" + b"x" * 10_000 + b"\r"
        writer.write(b"\x00\xff junk" + frame(b"\xff\xfe\x00garbage") + frame(big)
                     + frame(orm_message("ok-1")))
        await writer.drain()
        answers = []
        buf = b""
        while len(answers) < 3:
            buf += await asyncio.wait_for(reader.read(65536), 5)
            while b"\x1c\r" in buf:
                one, buf = buf.split(b"\x1c\r", 1)
                answers.append(_msa(one.lstrip(b"\x0b")))
        assert answers[0][0] == "AR"
        assert answers[1] == ("AR", "big-1")
        assert answers[2] == ("AA", "ok-1")
        writer.close()
    finally:
        await lst.stop()


async def test_store_unavailable_gets_no_positive_ack(store):
    lst = await MllpListener(MessageHandler(store), port=0).start()
    try:
        reader, writer = await open_hl7_connection("127.0.0.1", lst.port)
        assert _msa(await _send(reader, writer, orm_message("s-1")))[0] == "AA"
        store.close()  # the database goes away
        code, control = _msa(await _send(reader, writer, orm_message("s-2")))
        assert code == "AR" and control == "s-2"
        code, _ = _msa(await _send(reader, writer, orm_message("s-3", accept_ack="AL",
                                                               app_ack="NE")))
        assert code == "CE"  # enhanced mode: commit error
        writer.close()
    finally:
        await lst.stop()


async def test_postgres_down_gets_no_positive_ack():
    from radproto.adapter.store.postgres import PostgresStore

    down = PostgresStore("postgresql://postgres@127.0.0.1:1/test", connect_timeout_s=1)
    lst = await MllpListener(MessageHandler(down), port=0).start()
    try:
        reader, writer = await open_hl7_connection("127.0.0.1", lst.port)
        assert _msa(await _send(reader, writer, orm_message("pg-1")))[0] == "AR"
        writer.close()
    finally:
        await lst.stop()
        down.close()


async def test_enhanced_mode_accept_ack(listener, store):
    reader, writer = await open_hl7_connection("127.0.0.1", listener.port)
    ack = await _send(reader, writer, orm_message("e-1", accept_ack="AL", app_ack="NE"))
    assert _msa(ack) == ("CA", "e-1")
    writer.writeblock(orm_message("e-2", accept_ack="ER", app_ack="NE"))  # only on error
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readblock(), 0.4)
    writer.close()
    assert store.message_counts() == {"pending": 2}


async def test_idle_timeout_closes_the_connection(store):
    lst = await MllpListener(MessageHandler(store), port=0, idle_timeout_s=0.3).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", lst.port)
        assert await asyncio.wait_for(reader.read(10), 3) == b""  # closed by the server
        writer.close()
    finally:
        await lst.stop()


async def test_graceful_shutdown_finishes_the_message_in_flight(tmp_path):
    class SlowStore:
        def __init__(self, inner):
            self.inner = inner

        def accept_message(self, **kw):
            import time

            time.sleep(0.5)  # the commit is slow; shutdown starts meanwhile
            return self.inner.accept_message(**kw)

    inner = open_store(f"sqlite:///{tmp_path / 's.db'}")
    lst = await MllpListener(MessageHandler(SlowStore(inner)), port=0,  # type: ignore[arg-type]
                             shutdown_grace_s=5).start()
    reader, writer = await open_hl7_connection("127.0.0.1", lst.port)
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", lst.port)
    writer.writeblock(orm_message("g-1"))
    await writer.drain()
    await asyncio.sleep(0.1)
    stopping = asyncio.create_task(lst.stop())
    ack = await asyncio.wait_for(reader.readblock(), 5)
    assert _msa(ack) == ("AA", "g-1")
    await asyncio.wait_for(stopping, 5)
    assert await asyncio.wait_for(idle_reader.read(10), 2) == b""
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", lst.port)
    writer.close()
    idle_writer.close()
    assert inner.message_counts() == {"pending": 1}
    inner.close()


def _self_signed(tmp_path: Path) -> tuple[str, str]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return str(cert), str(key)


async def test_tls(store, tmp_path):
    cert, key = _self_signed(tmp_path)
    lst = await MllpListener(MessageHandler(store), port=0,
                             ssl_context=server_ssl_context(cert, key)).start()
    try:
        client = ssl.create_default_context(cafile=cert)
        reader, writer = await open_hl7_connection("127.0.0.1", lst.port, ssl=client)
        assert _msa(await _send(reader, writer, orm_message("tls-1"))) == ("AA", "tls-1")
        writer.close()
        # a client speaking plain MLLP to the TLS port gets nothing and the server survives
        r2, w2 = await asyncio.open_connection("127.0.0.1", lst.port)
        w2.write(frame(orm_message("plain")))
        await w2.drain()
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(r2.read(100), 5) == b""  # no ACK in clear text
        w2.close()
        reader, writer = await open_hl7_connection("127.0.0.1", lst.port, ssl=client)
        assert _msa(await _send(reader, writer, orm_message("tls-2"))) == ("AA", "tls-2")
        writer.close()
    finally:
        await lst.stop()
