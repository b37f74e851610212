"""A small HL7 v2 parser: segments, fields, repetitions, components, escape sequences.

Why not hl7apy for reading: its attribute access silently creates empty elements, group paths
differ by version, and validate() fails wrongly on choice groups. A message here is just a list
of segments split on the delimiters MSH-1 and MSH-2 declare; fields are addressed by their HL7
numbers (MSH-1 is the field separator itself, as in the standard).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from radproto.model.errors import MappingError

#: Delimiters every message radproto writes uses.
STANDARD_ENCODING = "^~\\&"

_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_HEX = re.compile(r"^[0-9A-Fa-f]*$")


class ParseError(MappingError):
    """The text is not an HL7 v2 message (no usable MSH, bad delimiters)."""

    def __init__(self, message: str, *, field: int | None = None):
        self.field = field
        super().__init__(message)


@dataclass(frozen=True)
class Delimiters:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""  # v2.7+: an optional fifth encoding character

    @property
    def encoding_characters(self) -> str:
        return (
            self.component + self.repetition + self.escape + self.subcomponent + self.truncation
        )


STANDARD = Delimiters()


@dataclass(frozen=True)
class Segment:
    """One segment; `fields[n]` is field n in HL7 numbering (fields[0] is the segment id)."""

    name: str
    fields: tuple[str, ...]

    def raw(self, number: int) -> str:
        return self.fields[number] if 0 <= number < len(self.fields) else ""


@dataclass(frozen=True)
class Message:
    delimiters: Delimiters
    segments: tuple[Segment, ...]

    def all(self, name: str) -> list[tuple[int, Segment]]:
        """(sequence number, segment) for every segment with that id, in message order."""
        found = [s for s in self.segments if s.name == name]
        return list(enumerate(found, start=1))

    def first(self, name: str) -> Segment | None:
        return next((s for s in self.segments if s.name == name), None)

    def value(
        self, segment: Segment | None, field: int, component: int = 1, subcomponent: int = 1,
        repetition: int = 1,
    ) -> str:
        """One unescaped, stripped value ('' when absent)."""
        if segment is None:
            return ""
        return unescape(
            pick(segment, field, self.delimiters, component, subcomponent, repetition),
            self.delimiters,
        ).strip()

    def repetitions(self, segment: Segment | None, field: int) -> list[str]:
        """The raw (still escaped) repetitions of a field."""
        if segment is None:
            return []
        raw = segment.raw(field)
        if segment.name == "MSH" and field <= 2:
            return [raw] if raw else []
        return [r for r in raw.split(self.delimiters.repetition) if r] if raw else []

    def components(self, raw_repetition: str) -> list[str]:
        """Unescaped, stripped components (first subcomponent each) of one repetition."""
        d = self.delimiters
        return [unescape(c.split(d.subcomponent)[0], d).strip() for c in raw_repetition.split(
            d.component)]


def pick(
    segment: Segment, field: int, delimiters: Delimiters, component: int = 1,
    subcomponent: int = 1, repetition: int = 1,
) -> str:
    """The raw text at field/repetition/component/subcomponent (1-based), or ''."""
    raw = segment.raw(field)
    if segment.name == "MSH" and field <= 2:
        return raw  # MSH-1 and MSH-2 are the delimiters themselves, never split
    if not raw:
        return ""
    reps = raw.split(delimiters.repetition)
    if repetition > len(reps):
        return ""
    comps = reps[repetition - 1].split(delimiters.component)
    if component > len(comps):
        return ""
    subs = comps[component - 1].split(delimiters.subcomponent)
    return subs[subcomponent - 1] if subcomponent <= len(subs) else ""


def split_segments(text: str) -> list[str]:
    """Segments of a message whose terminators may be CR, LF or CRLF; blank lines dropped."""
    text = text.lstrip("\ufeff\x0b").rstrip("\x1c\r\n")
    lines = text.replace("\r\n", "\r").replace("\n", "\r").split("\r")
    return [line for line in lines if line.strip()]


def parse_delimiters(first_segment: str) -> Delimiters:
    """The delimiters an MSH segment declares in MSH-1 and MSH-2."""
    if not first_segment.startswith("MSH"):
        raise ParseError("the message does not start with an MSH segment", field=None)
    if len(first_segment) < 4:
        raise ParseError("MSH-1 (field separator) is missing", field=1)
    field_sep = first_segment[3]
    if field_sep.isalnum() or field_sep.isspace():
        raise ParseError(f"MSH-1 '{field_sep}' is not a usable field separator", field=1)
    encoding = first_segment[4:].split(field_sep, 1)[0]
    if len(encoding) not in (4, 5):
        raise ParseError(f"MSH-2 must hold 4 or 5 encoding characters, not '{encoding}'",
                         field=2)
    chars = [field_sep, *encoding]
    if len(set(chars)) != len(chars) or any(c.isalnum() or c.isspace() for c in encoding):
        raise ParseError(f"MSH-2 '{encoding}' holds repeated or unusable characters", field=2)
    return Delimiters(
        field=field_sep,
        component=encoding[0],
        repetition=encoding[1],
        escape=encoding[2],
        subcomponent=encoding[3],
        truncation=encoding[4] if len(encoding) == 5 else "",
    )


def parse(text: str) -> Message:
    """A message from text; raises ParseError when there is no usable MSH."""
    lines = split_segments(text)
    if not lines:
        raise ParseError("the message is empty")
    delimiters = parse_delimiters(lines[0])
    segments = []
    for line in lines:
        parts = line.split(delimiters.field)
        name = parts[0].strip()
        if name == "MSH":
            # MSH-1 is the separator itself: put it back so numbering matches the standard.
            parts = ["MSH", delimiters.field, *parts[1:]]
        segments.append(Segment(name=name, fields=tuple(parts)))
    return Message(delimiters=delimiters, segments=tuple(segments))


def is_segment_id(name: str) -> bool:
    return bool(_SEGMENT_ID.match(name))


# --- escape sequences -------------------------------------------------------------------------

_FORMATTING_BREAKS = {".br": "\n", ".sp": "\n"}


def unescape(value: str, delimiters: Delimiters = STANDARD) -> str:
    r"""Resolve \F\ \S\ \T\ \R\ \E\ \Xhh..\ \.br\ (and drop highlighting/charset escapes)."""
    esc = delimiters.escape
    if esc not in value:
        return value
    out: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch != esc:
            out.append(ch)
            i += 1
            continue
        end = value.find(esc, i + 1)
        if end == -1:  # unterminated: keep the rest literally rather than lose it
            out.append(value[i:])
            break
        out.append(_resolve(value[i + 1:end], delimiters))
        i = end + 1
    return "".join(out)


def _resolve(seq: str, d: Delimiters) -> str:
    simple = {"F": d.field, "S": d.component, "T": d.subcomponent, "R": d.repetition,
              "E": d.escape, "P": d.truncation}
    if seq in simple:
        return simple[seq]
    if seq.startswith("X") and _HEX.match(seq[1:]) and len(seq) % 2 == 1:
        data = bytes.fromhex(seq[1:])
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("latin-1")
    lowered = seq.lower()
    if lowered in _FORMATTING_BREAKS:
        return _FORMATTING_BREAKS[lowered]
    if lowered.startswith(".sp"):
        return "\n"
    # \H\ \N\ (highlight), \Cxxyy\ \Mxxyyzz\ (charset switches), \Zxx\ (local), .in .ti .sk .fi
    # .nf .ce: formatting with no meaning for plain text.
    return ""


def encoded_field(value: str) -> str:
    r"""A composite value already in the standard delimiters (e.g. an HD "RIS^1.2.3^ISO", as
    MessageHeader holds it) made safe for one field: components kept, while field separators,
    repetition separators and line breaks can no longer break the segment."""
    return (value.replace("|", "\\F\\").replace("~", "\\R\\").replace("\r", " ")
            .replace("\n", " "))


def escape(value: str, delimiters: Delimiters = STANDARD) -> str:
    r"""Text made safe for one field/component: delimiters escaped, line breaks as \.br\."""
    d = delimiters
    out = value.replace(d.escape, f"{d.escape}E{d.escape}")
    for char, code in ((d.field, "F"), (d.component, "S"), (d.subcomponent, "T"),
                       (d.repetition, "R")):
        out = out.replace(char, f"{d.escape}{code}{d.escape}")
    if d.truncation:
        out = out.replace(d.truncation, f"{d.escape}P{d.escape}")
    out = out.replace("\r\n", "\n").replace("\r", "\n")
    return out.replace("\n", f"{d.escape}.br{d.escape}")
