"""Bytes to text for HL7 v2: the charset MSH-18 names (table 0211), never raising."""

from __future__ import annotations

import codecs
import re

# HL7 table 0211 (MSH-18) -> Python codec.
_CHARSETS = {
    "ASCII": "ascii", "ISO IR6": "ascii", "8859/1": "latin-1", "8859/2": "iso8859-2",
    "8859/3": "iso8859-3", "8859/4": "iso8859-4", "8859/5": "iso8859-5", "8859/6": "iso8859-6",
    "8859/7": "iso8859-7", "8859/8": "iso8859-8", "8859/9": "iso8859-9",
    "8859/15": "iso8859-15", "ISO IR100": "latin-1", "UNICODE": "utf-8",
    "UNICODE UTF-8": "utf-8", "UTF-8": "utf-8", "UNICODE UTF-16": "utf-16",
    "UNICODE UTF-32": "utf-32", "ISO IR87": "iso2022_jp", "ISO IR159": "iso2022_jp_2",
    "ISO IR14": "shift_jis", "GB 18030-2000": "gb18030", "KS X 1001": "euc_kr",
    "CNS 11643-1992": "big5", "BIG-5": "big5", "WINDOWS-1252": "cp1252", "CP1252": "cp1252",
}


def decode_message(raw: bytes, default_charset: str = "utf-8") -> str:
    """Text of a message in the charset MSH-18 names (else `default_charset`); never raises.

    A sender that declares a single-byte charset (ASCII, 8859/x) but sends valid multi-byte UTF-8
    is read as UTF-8 (a common misconfiguration; latin-1 text is practically never valid UTF-8).
    Bytes that fit no charset become U+FFFD.
    """
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):  # a UTF-16 byte order mark says it all
        return raw.decode("utf-16", errors="replace")
    codec = _codec(_declared_charset(raw)) or _codec(default_charset) or "utf-8"
    single_byte = codecs.lookup(codec).name in ("ascii",) or codecs.lookup(codec).name.startswith(
        ("iso8859", "latin", "cp125"))
    if single_byte and any(b >= 0x80 for b in raw):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
    try:
        return raw.decode(codec)
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode(codec, errors="replace")


def _declared_charset(raw: bytes) -> str:
    head = raw.lstrip(b"\xef\xbb\xbf\x0b\r\n")
    if not head.startswith(b"MSH") or len(head) < 5:
        return ""
    first = re.split(rb"[\r\n]", head, maxsplit=1)[0].decode("latin-1")
    sep, encoding = first[3], first[4:8]
    fields = first.split(sep)  # fields[n] is MSH-(n+1)
    if len(fields) < 18:
        return ""
    rep = encoding[1] if len(encoding) > 1 else "~"
    comp = encoding[0] if encoding else "^"
    return fields[17].split(rep)[0].split(comp)[0].strip()


def declared_charset(raw: bytes) -> str:
    """MSH-18 (first repetition) read from raw bytes, or ''."""
    return _declared_charset(raw)


def charset_codec(name: str) -> str | None:
    """The Python codec for an HL7 charset name (table 0211) or a codec name, or None."""
    return _codec(name)


def _codec(name: str) -> str | None:
    if not name:
        return None
    candidate = _CHARSETS.get(name.strip().upper(), name.strip())
    try:
        return codecs.lookup(candidate).name
    except LookupError:
        return None
