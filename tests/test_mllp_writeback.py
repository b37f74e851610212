"""Outbound write-back to a real MLLP peer (a tiny asyncio server that ACKs), peer down then up."""

from __future__ import annotations

import asyncio
import socket

from conftest import KeywordClassifier, orm_message

from radproto.adapter.mllp import Frame, FrameDecoder, frame
from radproto.adapter.mllp_client import MllpClient, TransientSendError, parse_ack
from radproto.adapter.outbox import OutboxRelay, backoff_seconds
from radproto.adapter.pipeline import MllpWriteback, Pipeline
from radproto.adapter.store import OutboxItem
from radproto.adapter.worker import Worker
from radproto.fhir_mappings.hl7v2 import parse_header


class Peer:
    """A destination system: answers every message with the given ACK code (None: silence)."""

    def __init__(self, port: int = 0, code: str | None = "AA") -> None:
        self.port = port
        self.code = code
        self.received: list[str] = []
        self.connections = 0
        self._writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> Peer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port,
                                                 reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self._writers:
            writer.close()
        await self.server.wait_closed()

    async def _serve(self, reader, writer) -> None:
        decoder = FrameDecoder()
        self.connections += 1
        self._writers.append(writer)
        try:
            while data := await reader.read(65536):
                for event in decoder.feed(data):
                    if not isinstance(event, Frame):
                        continue
                    text = event.payload.decode()
                    self.received.append(text)
                    header = parse_header(text)
                    if self.code is None or header.message_type == "ACK":
                        continue  # an ACK is not acknowledged
                    cid = header.control_id
                    ack = (f"MSH|^~\\&|PEER|X|RADPROTO||20260101||ACK|A{cid}|P|2.5\r"
                           f"MSA|{self.code}|{cid}")
                    writer.write(frame(ack.encode()))
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _item(port: int, cid: str) -> OutboxItem:
    payload = f"MSH|^~\\&|RADPROTO||RIS|HOSP|20260101||OMI^O23^OMI_O23|{cid}|P|2.5.1\rORC|SC|P1"
    return OutboxItem("mllp", f"127.0.0.1:{port}", payload)


async def _wait(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_parse_ack_and_backoff():
    ack = parse_ack(b"MSH|^~\\&|A|B|C|D|||ACK|1|P|2.5\rMSA|AE|X1|bad field")
    assert (ack.code, ack.control_id, ack.text, ack.accepted) == ("AE", "X1", "bad field", False)
    assert parse_ack(b"garbage") is None
    assert 0.9 <= backoff_seconds(1, 1, 60) <= 1.1
    assert 7.2 <= backoff_seconds(4, 1, 60) <= 8.8
    assert backoff_seconds(30, 1, 60) <= 66


async def test_client_persistent_connection_and_no_ack_timeout():
    peer = await Peer().start()
    client = MllpClient("127.0.0.1", peer.port, ack_timeout_s=0.5)
    try:
        for i in range(3):
            assert (await client.send(_item(peer.port, f"c{i}").payload)).code == "AA"
        assert peer.connections == 1 and client.connected  # one persistent connection
        peer.code = None  # the destination stops answering
        try:
            await client.send(_item(peer.port, "c9").payload)
            raise AssertionError("expected a TransientSendError")
        except TransientSendError:
            pass
        assert not client.connected
    finally:
        await client.close()
        await peer.stop()


async def test_relay_peer_down_then_up_nothing_lost_nothing_twice(store):
    port = _free_port()
    ids = [store.enqueue_outbox(_item(port, f"w{i}")) for i in range(5)]
    relay = OutboxRelay(store, backoff_initial_s=0.1, backoff_max_s=0.3, poll_s=0.05).start()
    try:
        await _wait(lambda: store.outbox_rows()[0].attempts >= 2)  # retried while down
        assert all(r.status in ("pending", "sending") for r in store.outbox_rows())
        peer = await Peer(port).start()
        await _wait(lambda: all(r.status == "sent" for r in store.outbox_rows()))
        controls = [parse_header(m).control_id for m in peer.received]
        assert controls == [f"w{i}" for i in range(5)]  # in order, each once
        assert [r.id for r in store.outbox_rows()] == ids
        await peer.stop()
    finally:
        await relay.stop()


async def test_relay_records_a_refusal(store):
    peer = await Peer(code="AR").start()
    relay = OutboxRelay(store, poll_s=0.05).start()
    try:
        oid = store.enqueue_outbox(_item(peer.port, "r1"))
        await _wait(lambda: store.outbox_rows()[0].status == "failed")
        row = store.outbox_rows()[0]
        assert row.id == oid and row.last_error.startswith("AR") and row.attempts == 1
        await asyncio.sleep(0.2)
        assert len(peer.received) == 1  # a refusal is not retried
    finally:
        await relay.stop()
        await peer.stop()


async def test_end_to_end_suggestion_is_written_back(store):
    peer = await Peer().start()
    relay = OutboxRelay(store, poll_s=0.05).start()
    loop = asyncio.get_running_loop()
    pipeline = Pipeline(store, KeywordClassifier(),
                        outbox_builders=[MllpWriteback(f"127.0.0.1:{peer.port}")],
                        on_outbox=lambda: loop.call_soon_threadsafe(relay.wake))
    worker = Worker(store, pipeline, poll_s=0.05).start()
    try:
        raw = orm_message("e2e-1", placer="WB1", exam="MRI BRAIN WITH AND WITHOUT CONTRAST")
        store.accept_message(source="hl7v2", dedup_key="RIS|HOSP|e2e-1", raw=raw.decode(),
                             content_type="application/hl7-v2")
        worker.wake()
        await _wait(lambda: len(peer.received) == 1)
        out = peer.received[0]
        assert out.split("\r")[0].split("|")[8].startswith("ORM^O01")  # v2.3.1 sender
        assert "\rORC|SC|" in out
        suggestion = store.latest_suggestion_for_order("WB1").suggestion
        assert suggestion.protocol.split()[0] in out
        await _wait(lambda: store.outbox_rows()[0].status == "sent")
    finally:
        await asyncio.to_thread(worker.stop)
        await relay.stop()
        await peer.stop()


async def test_enhanced_mode_application_ack_goes_back_with_the_suggestion(store):
    """MSH-15=AL, MSH-16=AL: the listener answered CA (commit); once processed, the
    application ACK (AA) is sent to the write-back destination, then the suggestion. A cancel
    gets its application ACK too."""
    peer = await Peer().start()
    relay = OutboxRelay(store, poll_s=0.05).start()
    loop = asyncio.get_running_loop()
    dest = f"127.0.0.1:{peer.port}"
    pipeline = Pipeline(store, KeywordClassifier(), outbox_builders=[MllpWriteback(dest)],
                        on_outbox=lambda: loop.call_soon_threadsafe(relay.wake),
                        app_ack_destination=dest)
    worker = Worker(store, pipeline, poll_s=0.05).start()
    try:
        for n, (cid, action) in enumerate((("ea-1", "NW"), ("ea-2", "CA")), start=1):
            raw = orm_message(cid, placer="EA1", accept_ack="AL", app_ack="AL", action=action)
            store.accept_message(source="hl7v2", dedup_key=f"RIS|HOSP|{cid}",
                                 raw=raw.decode(), content_type="application/hl7-v2")
            worker.wake()
            await _wait(lambda n=n: store.message_counts().get("done", 0) == n)
        # An application ACK is "sent" once written (nothing answers an ACK): wait until
        # the peer has read every row the store calls sent.
        def settled() -> bool:
            rows = store.outbox_rows()
            return (len(rows) == 3 and all(r.status in ("sent", "cancelled") for r in rows)
                    and len(peer.received) == sum(r.status == "sent" for r in rows))

        await _wait(settled)
        kinds = [(m.split("\r")[0].split("|")[8], m.split("\r")[1][:12]) for m in peer.received]
        assert kinds[0] == ("ACK^O01^ACK", "MSA|AA|ea-1")
        assert ("ACK^O01^ACK", "MSA|AA|ea-2") in kinds
        statuses = sorted(r.status for r in store.outbox_rows())
        # the NW's suggestion was either sent before the cancel or withdrawn unsent
        assert statuses in (["sent", "sent", "sent"], ["cancelled", "sent", "sent"])
    finally:
        await asyncio.to_thread(worker.stop)
        await relay.stop()
        await peer.stop()
