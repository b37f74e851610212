"""HL7 v2 acknowledgements (original and enhanced mode), with ERR in the v2.5 layout."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Literal

from radproto.fhir_mappings.hl7v2_parser import STANDARD, encoded_field, escape
from radproto.fhir_mappings.hl7v2_types import ERROR_CODES, HL7Error, MessageHeader

AckCode = Literal["AA", "AE", "AR", "CA", "CE", "CR"]
ACK_CODES = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})
DEFAULT_VERSION = "2.5.1"
_VERSION = re.compile(r"^\d\.\d{1,2}(\.\d{1,2})?$")


def build_ack(
    header: MessageHeader | None,
    code: AckCode,
    *,
    error: HL7Error | None = None,
    control_id: str,
    text: str = "",
    now: datetime | None = None,
) -> str:
    """An ACK for `header` (None when the MSH was unusable): sender and receiver swapped,
    MSH-9 ACK^<event>^ACK, MSH-10 `control_id`, MSH-12 the incoming version (else 2.5.1),
    MSA-2 echoing the incoming MSH-10, and an ERR segment when `error` is given.

    Enhanced mode's accept acknowledgement uses CA/CE/CR, every other ACK AA/AE/AR.
    Segments are separated by CR; no trailing CR (the MLLP layer frames it).
    """
    if code not in ACK_CODES:
        raise ValueError(f"unknown acknowledgement code {code!r}")
    if header is None and error is not None and error.header is not None:
        header = error.header
    h = header or MessageHeader()
    version = h.version if _VERSION.match(h.version or "") else DEFAULT_VERSION
    event = escape(h.trigger_event, STANDARD)
    if not event:
        msg_type = "ACK"
    elif _version_tuple(version) < (2, 3, 1):
        msg_type = f"ACK^{event}"  # MSH-9 had no message structure component before v2.3.1
    else:
        msg_type = f"ACK^{event}^ACK"
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S%z")
    processing = escape(h.processing_id, STANDARD) or "P"
    msh = [
        "MSH", "^~\\&", *(encoded_field(v) for v in (
            h.receiving_application, h.receiving_facility, h.sending_application,
            h.sending_facility)), stamp, "", msg_type, escape(control_id, STANDARD), processing,
        version,
    ]
    if not text and error is not None:
        text = error.user_message
    msa = ["MSA", code, escape(h.control_id, STANDARD)]
    if text:
        msa.append(escape(_one_line(text), STANDARD))
    segments = ["|".join(msh), "|".join(msa)]
    if error is not None:
        segments.append(_err(error, version))
    return "\r".join(segments)


def _err(error: HL7Error, version: str) -> str:
    code_text = ERROR_CODES.get(error.code, "Application internal error")
    location = error.location.to_erl() if error.location else ""
    eld = ""
    if _version_tuple(version) < (2, 5) and error.location is not None:
        # ERR-1 (ELD) for receivers before v2.5: segment^sequence^field^code&text&HL70357.
        loc = error.location
        eld = "^".join([loc.segment, str(loc.sequence),
                        str(loc.field) if loc.field is not None else "",
                        f"{error.code}&{code_text}&HL70357"])
    fields = [
        "ERR",
        eld,  # ERR-1 error code and location (only before v2.5)
        location,  # ERR-2 error location (ERL)
        f"{error.code}^{code_text}^HL70357",  # ERR-3 HL7 error code (CWE, table 0357)
        error.severity,  # ERR-4 severity (table 0516)
        "", "", "",  # ERR-5 application error code, ERR-6 parameter, ERR-7 diagnostics
        escape(_one_line(error.user_message), STANDARD),  # ERR-8 user message
    ]
    return "|".join(fields)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())
