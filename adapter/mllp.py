"""MLLP framing (the Minimal Lower Layer Protocol): bytes in, frames out. No sockets, no HL7.

A frame is START_BLOCK, the message, END_BLOCK, CARRIAGE_RETURN. The decoder is fed whatever
the socket delivered (any split) and returns events: complete frames, oversized frames (only
their head kept, so a NAK can still echo MSH-10) and framing errors (bytes outside a frame,
a frame cut off by a new start block). It never raises on input.
"""

from __future__ import annotations

from dataclasses import dataclass

from radproto.model.errors import InterfaceError

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\x0d"
#: Bytes of an oversized frame kept to answer it (enough for any MSH).
OVERSIZE_HEAD_BYTES = 4096


class FramingError(InterfaceError):
    """Bytes that break MLLP framing. Returned as an event by the decoder; raised by `frame`."""


@dataclass(frozen=True)
class Frame:
    payload: bytes


@dataclass(frozen=True)
class OversizedFrame:
    """A frame longer than the maximum: discarded, except its first bytes."""

    head: bytes
    size: int


Event = Frame | OversizedFrame | FramingError


def frame(payload: bytes) -> bytes:
    """The MLLP frame of one message."""
    if START_BLOCK in payload or END_BLOCK in payload:
        raise FramingError("a message cannot contain the MLLP block characters 0x0B or 0x1C")
    return START_BLOCK + payload + END_BLOCK + CARRIAGE_RETURN


class FrameDecoder:
    """Incremental, frame-aware MLLP reader with a maximum message size."""

    def __init__(self, max_message_bytes: int = 1_048_576) -> None:
        if max_message_bytes < 1:
            raise ValueError("max_message_bytes must be positive")
        self.max_message_bytes = max_message_bytes
        self._in_frame = False
        self._buffer = bytearray()
        self._size = 0  # bytes of the current frame, including discarded ones
        self._oversized = False
        self._swallow_cr = False  # the CR after END_BLOCK may arrive in the next chunk

    @property
    def in_frame(self) -> bool:
        """True while a frame has started and not ended (a message is partly received)."""
        return self._in_frame

    @property
    def buffered(self) -> int:
        return self._size if self._in_frame else 0

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        view = memoryview(data)
        pos, end = 0, len(data)
        if self._swallow_cr and pos < end:
            self._swallow_cr = False
            if data[0] == CARRIAGE_RETURN[0]:
                pos = 1
        while pos < end:
            if not self._in_frame:
                start = data.find(START_BLOCK, pos)
                junk_end = end if start < 0 else start
                junk = bytes(view[pos:junk_end])
                # Whitespace between frames is common (senders that add a newline): not an error.
                if junk.strip(b"\r\n\t "):
                    events.append(FramingError(f"{len(junk)} bytes outside an MLLP frame"))
                if start < 0:
                    break
                self._start()
                pos = start + 1
                continue
            stop = data.find(END_BLOCK, pos)
            restart = data.find(START_BLOCK, pos)
            if restart >= 0 and (stop < 0 or restart < stop):
                # A new frame began before this one ended: the sender gave up on it.
                self._append(view[pos:restart])
                events.append(FramingError(
                    f"frame of {self._size} bytes cut off by a new start block"))
                self._start()
                pos = restart + 1
                continue
            if stop < 0:
                self._append(view[pos:end])
                break
            self._append(view[pos:stop])
            events.append(self._finish())
            pos = stop + 1
            if pos < end:
                if data[pos] == CARRIAGE_RETURN[0]:
                    pos += 1
            else:
                self._swallow_cr = True
        return events

    def _start(self) -> None:
        self._in_frame = True
        self._buffer = bytearray()
        self._size = 0
        self._oversized = False

    def _append(self, chunk: memoryview) -> None:
        self._size += len(chunk)
        if self._oversized:
            return
        if self._size > self.max_message_bytes:
            self._oversized = True
            room = OVERSIZE_HEAD_BYTES - len(self._buffer)
            if room > 0:
                self._buffer += chunk[:room]
            del self._buffer[OVERSIZE_HEAD_BYTES:]
            return
        self._buffer += chunk

    def _finish(self) -> Frame | OversizedFrame:
        self._in_frame = False
        payload, self._buffer = bytes(self._buffer), bytearray()
        if self._oversized:
            return OversizedFrame(head=payload, size=self._size)
        return Frame(payload)
