"""The MLLP framing layer, without sockets: bytes in, frames out; plus a fuzz of framer+handler."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from conftest import orm_message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radproto.adapter.mllp import (
    CARRIAGE_RETURN,
    END_BLOCK,
    OVERSIZE_HEAD_BYTES,
    START_BLOCK,
    Frame,
    FrameDecoder,
    FramingError,
    OversizedFrame,
    frame,
)


def _frames(events):
    return [e.payload for e in events if isinstance(e, Frame)]


def test_constants_are_the_mllp_block_characters():
    assert (START_BLOCK, END_BLOCK, CARRIAGE_RETURN) == (b"\x0b", b"\x1c", b"\r")
    assert frame(b"MSH|x") == b"\x0bMSH|x\x1c\r"
    with pytest.raises(FramingError):
        frame(b"bad\x1cpayload")


def test_several_frames_in_one_chunk_and_one_frame_over_many_chunks():
    data = frame(b"A") + frame(b"BB") + frame(b"CCC")
    assert _frames(FrameDecoder().feed(data)) == [b"A", b"BB", b"CCC"]
    decoder = FrameDecoder()
    out = []
    for i in range(len(data)):  # byte by byte: the split must not matter
        out += decoder.feed(data[i:i + 1])
    assert _frames(out) == [b"A", b"BB", b"CCC"]
    assert not decoder.in_frame


def test_end_block_at_chunk_boundary_swallows_the_cr():
    decoder = FrameDecoder()
    assert _frames(decoder.feed(b"\x0bMSH|1\x1c")) == [b"MSH|1"]
    assert decoder.feed(b"\r") == []  # not junk
    assert _frames(decoder.feed(b"\x0bMSH|2\x1c\r")) == [b"MSH|2"]


def test_junk_outside_frames_is_reported_but_newlines_are_not():
    events = FrameDecoder().feed(b"garbage" + frame(b"X") + b"\r\n" + frame(b"Y"))
    assert [type(e) for e in events] == [FramingError, Frame, Frame]


def test_start_block_inside_a_frame_abandons_the_partial_frame():
    events = FrameDecoder().feed(b"\x0bpartial" + frame(b"whole"))
    assert isinstance(events[0], FramingError) and "cut off" in str(events[0])
    assert _frames(events) == [b"whole"]


def test_oversized_frame_keeps_only_its_head_and_resynchronises():
    decoder = FrameDecoder(max_message_bytes=10_000)
    big = b"MSH|^~\\&|A|B|C|D|||ORM^O01|BIG1|P|2.5\r" + b"X" * 50_000
    events = []
    for i in range(0, len(big), 7000):
        events += decoder.feed((START_BLOCK if i == 0 else b"") + big[i:i + 7000])
    events += decoder.feed(END_BLOCK + CARRIAGE_RETURN + frame(b"small"))
    assert isinstance(events[0], OversizedFrame)
    assert events[0].size == len(big) and len(events[0].head) == OVERSIZE_HEAD_BYTES
    assert events[0].head.startswith(b"MSH|")
    assert _frames(events) == [b"small"]


def test_message_exactly_at_the_limit_is_accepted():
    payload = b"M" * 100
    assert _frames(FrameDecoder(max_message_bytes=100).feed(frame(payload))) == [payload]
    assert isinstance(FrameDecoder(max_message_bytes=99).feed(frame(payload))[0], OversizedFrame)


# ---------------------------------------------------------------------------- fuzz

_payload = st.one_of(
    st.binary(max_size=300).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b"")),
    st.builds(lambda cid, junk: orm_message(cid) + junk,
              st.text(alphabet="ABC123|^~\\&", min_size=0, max_size=12),
              st.binary(max_size=40).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b""))),
    st.builds(lambda head, tail: b"MSH" + head + tail, st.binary(max_size=20),
              st.binary(max_size=80)).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b"")),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads=st.lists(_payload, min_size=1, max_size=5), cuts=st.lists(st.integers(0, 400)),
       noise=st.binary(max_size=30))
def test_fuzz_framer_never_raises_and_finds_every_frame(payloads, cuts, noise):
    stream = noise.replace(b"\x0b", b"") + b"".join(frame(p) for p in payloads)
    decoder = FrameDecoder(max_message_bytes=200)
    events = []
    positions = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    for a, b in itertools.pairwise(positions):
        events += decoder.feed(stream[a:b])
    complete = [e for e in events if isinstance(e, Frame | OversizedFrame)]
    assert len(complete) == len(payloads)
    for event, payload in zip(complete, payloads, strict=True):
        if isinstance(event, Frame):
            assert event.payload == payload
        else:
            assert len(payload) > 200 and event.size == len(payload)


class _FakeStore:
    """Counts accepts (the real stores are tested elsewhere; here only the parser is fuzzed)."""

    def __init__(self):
        self.accepted = 0

    def accept_message(self, **_):
        from radproto.adapter.store import AcceptResult

        self.accepted += 1
        return AcceptResult(f"m{self.accepted}", False)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=_payload)
def test_fuzz_handler_answers_every_frame_without_raising(payload):
    from radproto.adapter.hl7_listener import MessageHandler
    from radproto.fhir_mappings import hl7v2

    handler = MessageHandler(_FakeStore())  # type: ignore[arg-type]
    reply = asyncio.run(handler.handle(payload))
    assert reply.code in {"AA", "AE", "AR", "CA", "CE", "CR"}
    if reply.ack is None:
        # Only a sender that asked for no acknowledgement (MSH-15 NE / ER / SU) gets none.
        header = hl7v2.parse_header(hl7v2.normalize_segments(hl7v2.decode_message(payload)))
        assert hl7v2.ack_mode(header) == "enhanced"
    else:
        assert reply.ack.startswith("MSH|^~\\&|") and "\rMSA|" + reply.code in reply.ack
        frame(reply.ack.encode())  # frameable: no block characters leak into the ACK
