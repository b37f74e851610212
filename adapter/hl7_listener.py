"""The HL7 v2 MLLP listener: asyncio server (optional TLS) over three separate layers.

    framing      adapter.mllp.FrameDecoder            bytes -> frames (no HL7 knowledge)
    decoding     fhir_mappings.hl7v2                  frame -> text (MSH-18) -> header / order
    application  MessageHandler.handle                validate, persist, then acknowledge

Persist, then acknowledge: the raw message is committed (store.accept_message, durable) before
its ACK is written; classification happens later in the worker. When the store is down the
answer is AR / CE with ERR 207, never a positive ACK, so the engine keeps the message and retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from radproto.adapter.mllp import Frame, FrameDecoder, FramingError, OversizedFrame, frame
from radproto.adapter.observability import (
    MESSAGES_ACKNOWLEDGED,
    MESSAGES_RECEIVED,
    MESSAGES_REJECTED,
)
from radproto.adapter.pipeline import HL7V2_CONTENT_TYPE, log_event
from radproto.adapter.store import Store
from radproto.fhir_mappings import hl7v2
from radproto.fhir_mappings.hl7v2 import HL7Error, MessageHeader

log = logging.getLogger("radproto.mllp")
READ_CHUNK = 65536
ERR_INTERNAL = 207  # HL7 table 0357: application internal error


@dataclass
class Reply:
    """What the handler decided for one frame: the ACK text (None: the sender asked for none)."""

    code: str
    ack: str | None
    message_id: str | None = None
    duplicate: bool = False


class MessageHandler:
    """The application layer: one frame's bytes in, one ACK out. Never raises."""

    def __init__(self, store: Store, *, default_charset: str = "utf-8",
                 on_accepted: Callable[[], None] | None = None,
                 executor: ThreadPoolExecutor | None = None) -> None:
        self.store = store
        self.default_charset = default_charset
        self.on_accepted = on_accepted
        self.executor = executor
        self._ack_ids = itertools.count(1)
        self._ack_prefix = f"A{int(time.time()):x}"

    def _control_id(self) -> str:
        return f"{self._ack_prefix}{next(self._ack_ids):08d}"[:20]

    async def handle(self, payload: bytes) -> Reply:
        try:
            reply = await self._handle(payload)
        except Exception as exc:  # no byte sequence may take the listener down
            log_event(log, "handler_error", logging.ERROR, error=type(exc).__name__)
            reply = self._nak(None, HL7Error(f"internal error ({type(exc).__name__})",
                                             code=ERR_INTERNAL, reject=True), commit=True)
        _count(reply)
        return reply

    def handle_oversized(self, event: OversizedFrame, limit: int) -> Reply:
        try:
            text = hl7v2.normalize_segments(hl7v2.decode_message(event.head,
                                                                 self.default_charset))
            header = _try_header(text)
        except Exception:
            header = None
        error = HL7Error(f"message of {event.size} bytes exceeds the {limit}-byte maximum",
                         code=ERR_INTERNAL, reject=True, header=header)
        log_event(log, "message_too_large", logging.WARNING, size=event.size,
                  control_id=header.control_id if header else "")
        reply = self._nak(header, error, commit=True)
        _count(reply, "too_large")
        return reply

    async def _handle(self, payload: bytes) -> Reply:
        started = time.perf_counter()
        text = hl7v2.normalize_segments(hl7v2.decode_message(payload, self.default_charset))
        try:
            message = hl7v2.parse_message(text)  # parsed once here; the worker parses its own
        except HL7Error as exc:
            log_event(log, "message_rejected", logging.WARNING, code=exc.code,
                      control_id=exc.header.control_id if exc.header else "")
            return self._nak(exc.header, exc, commit=True)
        header = hl7v2.header_of(message)
        try:
            # Validation only (the worker maps it again): content errors are answered now.
            hl7v2.message_to_order(message)
        except HL7Error as exc:
            log_event(log, "message_rejected", logging.WARNING, code=exc.code,
                      control_id=header.control_id, reject=exc.reject,
                      location=str(exc.location or ""))
            return self._nak(header, exc, commit=exc.reject)
        dedup_key = "|".join(header.dedup_key)
        try:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(self.executor, lambda: self.store.accept_message(
                source="hl7v2", dedup_key=dedup_key, raw=text, content_type=HL7V2_CONTENT_TYPE))
        except Exception as exc:
            log_event(log, "store_unavailable", logging.ERROR, control_id=header.control_id,
                      error=type(exc).__name__)
            error = HL7Error("message not stored, please resend (store unavailable)",
                             code=ERR_INTERNAL, reject=True, header=header)
            return self._nak(header, error, commit=False,
                             code="AR" if hl7v2.ack_mode(header) == "original" else "CE")
        if self.on_accepted is not None and not result.duplicate:
            self.on_accepted()
        enhanced = hl7v2.ack_mode(header) == "enhanced"
        code = "CA" if enhanced else "AA"
        wanted = hl7v2.ack_wanted(header, "accept" if enhanced else "application", success=True)
        ack = hl7v2.build_ack(header, code, control_id=self._control_id()) if wanted else None
        log_event(log, "message_accepted", message_id=result.message_id,
                  control_id=header.control_id, duplicate=result.duplicate, ack=code,
                  ack_sent=wanted, ms=round((time.perf_counter() - started) * 1000, 2))
        return Reply(code, ack, result.message_id, result.duplicate)

    def _nak(self, header: MessageHeader | None, error: HL7Error, *, commit: bool,
             code: str | None = None) -> Reply:
        """A negative ACK. `commit`: the message is refused as such (AR/CR), else AE/CE."""
        if code is None:
            enhanced = header is not None and hl7v2.ack_mode(header) == "enhanced"
            code = ("CR" if commit else "CE") if enhanced else "AR" if commit else "AE"
        if header is not None:
            stage = "accept" if hl7v2.ack_mode(header) == "enhanced" else "application"
            if not hl7v2.ack_wanted(header, stage, success=False):
                return Reply(code, None)
        try:
            ack = hl7v2.build_ack(header, code, error=error, control_id=self._control_id())
        except Exception:
            ack = hl7v2.build_ack(None, code, error=HL7Error(
                error.user_message, code=error.code, reject=True), control_id=self._control_id())
        return Reply(code, ack)


def _count(reply: Reply, reason: str = "") -> None:
    MESSAGES_RECEIVED.labels(source="hl7v2").inc()
    if reply.ack is not None:
        MESSAGES_ACKNOWLEDGED.labels(source="hl7v2", code=reply.code).inc()
    if reply.code not in ("AA", "CA"):
        MESSAGES_REJECTED.labels(source="hl7v2", reason=reason or reply.code).inc()


def _try_header(text: str) -> MessageHeader | None:
    try:
        return hl7v2.parse_header(text)
    except HL7Error as exc:
        return exc.header


@dataclass(eq=False)  # identity hash: kept in a set
class ConnectionState:
    """Everything about one engine connection."""

    peer: str
    decoder: FrameDecoder
    writer: asyncio.StreamWriter
    connected_at: float = field(default_factory=time.monotonic)
    last_activity: float = field(default_factory=time.monotonic)
    frames: int = 0
    busy: bool = False
    closing: bool = False
    charset_hint: str = ""


def _ack_bytes(ack: str, header_charset: str, default_charset: str) -> bytes:
    for name in (header_charset, default_charset, "utf-8"):
        codec = hl7v2.charset_codec(name) if name else None
        if codec:
            return ack.encode(codec, errors="replace")
    return ack.encode("utf-8", errors="replace")


class MllpListener:
    """The asyncio MLLP server: `await start()`, `port`, `await stop()` (graceful)."""

    def __init__(self, handler: MessageHandler, *, host: str = "127.0.0.1", port: int = 2575,
                 ssl_context: ssl.SSLContext | None = None, max_message_bytes: int = 1_048_576,
                 idle_timeout_s: float = 300.0, shutdown_grace_s: float = 10.0,
                 peer_filter: Callable[[Any], bool] | None = None) -> None:
        self.handler = handler
        self.host = host
        self.requested_port = port
        self.ssl_context = ssl_context
        self.max_message_bytes = max_message_bytes
        self.idle_timeout_s = idle_timeout_s
        self.shutdown_grace_s = shutdown_grace_s
        # The one allow-list: security.MllpGuard.allowed (gets the peername).
        self.peer_filter = peer_filter
        self.connections: set[ConnectionState] = set()
        self._tasks: set[asyncio.Task] = set()
        self._server: asyncio.base_events.Server | None = None
        self._stopping = False
        self._port = port

    @property
    def port(self) -> int:
        """The bound port (useful with port=0)."""
        return self._port

    async def start(self) -> MllpListener:
        self._server = await asyncio.start_server(self._on_connect, self.host,
                                                  self.requested_port, ssl=self.ssl_context,
                                                  limit=READ_CHUNK, reuse_address=True)
        self._port = self._server.sockets[0].getsockname()[1]
        log_event(log, "mllp_listening", host=self.host, port=self.port,
                  tls=self.ssl_context is not None)
        return self

    async def stop(self) -> None:
        """Stop accepting; let messages in flight get their ACK; close idle connections."""
        if self._server is None:
            return
        self._stopping = True
        self._server.close()
        for conn in list(self.connections):
            conn.closing = True
            if not conn.busy:
                conn.writer.close()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.shutdown_grace_s)
            for task in pending:
                task.cancel()
        await self._server.wait_closed()
        log_event(log, "mllp_stopped")

    async def _on_connect(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        peername = writer.get_extra_info("peername") or ("?", 0)
        conn = ConnectionState(peer=str(peername[0]), writer=writer,
                               decoder=FrameDecoder(self.max_message_bytes))
        allowed = self.peer_filter is None or self.peer_filter(peername)
        if self._stopping or not allowed:
            log_event(log, "mllp_refused", peer=conn.peer, stopping=self._stopping)
            writer.close()
            if task is not None:
                self._tasks.discard(task)
            return
        self.connections.add(conn)
        log_event(log, "mllp_connected", peer=conn.peer)
        try:
            await self._serve(conn, reader)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError) as exc:
            log_event(log, "mllp_connection_error", peer=conn.peer, error=type(exc).__name__)
        except asyncio.CancelledError:
            pass
        finally:
            self.connections.discard(conn)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            log_event(log, "mllp_disconnected", peer=conn.peer, frames=conn.frames,
                      partial=conn.decoder.in_frame)
            if task is not None:
                self._tasks.discard(task)

    async def _serve(self, conn: ConnectionState, reader: asyncio.StreamReader) -> None:
        while not conn.closing:
            try:
                data = await asyncio.wait_for(reader.read(READ_CHUNK), self.idle_timeout_s)
            except TimeoutError:
                log_event(log, "mllp_idle_timeout", peer=conn.peer)
                return
            if not data:
                return
            conn.last_activity = time.monotonic()
            events = conn.decoder.feed(data)
            if not events:
                continue
            conn.busy = True
            try:
                for event in events:
                    await self._answer(conn, event)
            finally:
                conn.busy = False

    async def _answer(self, conn: ConnectionState, event: Frame | OversizedFrame | FramingError
                      ) -> None:
        if isinstance(event, FramingError):
            log_event(log, "mllp_framing_error", logging.WARNING, peer=conn.peer,
                      error=str(event))
            return
        conn.frames += 1
        if isinstance(event, OversizedFrame):
            reply = self.handler.handle_oversized(event, self.max_message_bytes)
            head = event.head
        else:
            reply = await self.handler.handle(event.payload)
            head = event.payload
        if reply.ack is None:
            return
        charset = hl7v2.declared_charset(head) if head.startswith(b"MSH") else ""
        data = _ack_bytes(reply.ack, charset, self.handler.default_charset)
        try:
            conn.writer.write(frame(data))
        except Exception:
            conn.writer.write(frame(data.replace(b"\x0b", b" ").replace(b"\x1c", b" ")))
        await conn.writer.drain()
