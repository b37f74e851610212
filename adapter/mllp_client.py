"""Outbound MLLP client: one persistent connection to a destination, send a message, await its ACK.

Errors are split in two: `TransientSendError` (no connection, connection lost, no ACK in time:
retry later) and a returned `AckResult` whose code says whether the destination accepted
(AA/CA) or refused (AE/AR/CE/CR) the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass

from radproto.adapter.mllp import Frame, FrameDecoder, OversizedFrame, frame
from radproto.model.errors import InterfaceError

POSITIVE_ACKS = frozenset({"AA", "CA"})
NEGATIVE_ACKS = frozenset({"AE", "AR", "CE", "CR"})


class TransientSendError(InterfaceError):
    """The message may not have arrived: send it again later."""


@dataclass(frozen=True)
class AckResult:
    code: str
    control_id: str  # MSA-2
    text: str = ""

    @property
    def accepted(self) -> bool:
        return self.code in POSITIVE_ACKS


def parse_ack(payload: bytes) -> AckResult | None:
    """MSA-1, MSA-2, MSA-3 of an ACK frame; None if it is not one."""
    text = payload.decode("utf-8", errors="replace").replace("\r\n", "\r").replace("\n", "\r")
    segments = [s for s in text.split("\r") if s]
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 4:
        return None
    sep = segments[0][3]
    for segment in segments[1:]:
        if segment.startswith("MSA" + sep):
            fields = segment.split(sep)
            code = fields[1].strip().upper() if len(fields) > 1 else ""
            control = fields[2].strip() if len(fields) > 2 else ""
            return AckResult(code, control, fields[3] if len(fields) > 3 else "")
    return None


def is_ack(message: str) -> bool:
    """Whether a message is itself an acknowledgement (MSH-9 = ACK...)."""
    first = message.split("\r", 1)[0]
    fields = first.split(first[3]) if len(first) > 3 else []
    return len(fields) > 8 and fields[8].split("^")[0] == "ACK"


def control_id_of(message: str) -> str:
    first = message.split("\r", 1)[0]
    if len(first) < 4:
        return ""
    fields = first.split(first[3])
    return fields[9] if len(fields) > 9 else ""


class MllpClient:
    def __init__(self, host: str, port: int, *, ack_timeout_s: float = 10.0,
                 connect_timeout_s: float = 5.0, ssl_context: ssl.SSLContext | None = None,
                 max_message_bytes: int = 1_048_576) -> None:
        self.host = host
        self.port = port
        self.ack_timeout_s = ack_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.ssl_context = ssl_context
        self.max_message_bytes = max_message_bytes
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._decoder = FrameDecoder(max_message_bytes)
        self._pending: list[Frame | OversizedFrame] = []
        self._lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def _connect(self) -> None:
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=self.ssl_context),
                self.connect_timeout_s)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise TransientSendError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        self._decoder = FrameDecoder(self.max_message_bytes)
        self._pending = []

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def send(self, message: str, *, encoding: str = "utf-8") -> AckResult:
        """Send one message and return the destination's ACK for it (MSA-2 = its MSH-10).
        An ACK message itself is not acknowledged: it counts as delivered once written."""
        async with self._lock:
            if not self.connected:
                await self._connect()
            assert self._writer is not None
            control_id = control_id_of(message)
            try:
                self._writer.write(frame(message.encode(encoding, errors="replace")))
                await self._writer.drain()
                if is_ack(message):
                    return AckResult("CA", control_id, "ACK delivered (not acknowledged)")
                return await asyncio.wait_for(self._read_ack(control_id), self.ack_timeout_s)
            except (OSError, ConnectionError, TimeoutError, asyncio.IncompleteReadError) as exc:
                await self.close()  # the stream's state is unknown now: start afresh
                raise TransientSendError(f"no ACK from {self.host}:{self.port}: "
                                         f"{type(exc).__name__}") from exc

    async def _read_ack(self, control_id: str) -> AckResult:
        assert self._reader is not None
        while True:
            while self._pending:
                event = self._pending.pop(0)
                if isinstance(event, Frame):
                    ack = parse_ack(event.payload)
                    # An ACK for an earlier message (late after a timeout) is skipped.
                    if ack is not None and (not control_id or ack.control_id == control_id):
                        return ack
            data = await self._reader.read(65536)
            if not data:
                raise ConnectionError("connection closed by the destination")
            self._pending += [e for e in self._decoder.feed(data)
                              if isinstance(e, Frame | OversizedFrame)]
