"""HL7 v2 orders (ORM^O01 v2.3-2.5.1, OMI^O23 v2.5+) to the order model, ACKs, and suggestions
back as HL7 v2. Pure functions, no I/O.

Fields read (first order group of the message):
    exam           OBR-4 (universal service id), else OBR-44 (procedure code)
    reason         OBR-31 (all repetitions)          history   OBR-13 relevant clinical info
    notes          NTE-3 of NTEs after the first ORC/OBR (patient NTEs go to extra)
    diagnoses      DG1-3 (code^text^system), DG1-4 description
    numbers        ORC-2/OBR-2 placer, ORC-3/OBR-3 filler, OBR-18 (or IPC-1) accession
    priority       TQ1-9, else ORC-7.6, else OBR-27.6, else OBR-5
    patient        PID-3 id, PID-7 birth date, PID-8 sex; age from PID-7 and MSH-7 (or today)
    action         ORC-1: NW -> new; XO, XR -> update; CA, DC, OC, CR, OD -> cancel

Versions 2.1 and 2.2 are rejected (AR 203) on the wire. `lenient=True` (used by the history
importer) reads any version, because every field above already exists in v2.2 and archives of old
interfaces are exactly what a site imports, and reads ORC-1 SC (status changed) as an update,
because a RIS's status messages are where a site's archive holds the final protocol.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Literal

from radproto.fhir_mappings.hl7v2_ack import build_ack
from radproto.fhir_mappings.hl7v2_charset import (
    charset_codec,
    declared_charset,
    decode_message,
)
from radproto.fhir_mappings.hl7v2_outbound import suggestion_to_message
from radproto.fhir_mappings.hl7v2_parser import (
    STANDARD,
    Message,
    ParseError,
    Segment,
    escape,
    parse,
    split_segments,
    unescape,
)
from radproto.fhir_mappings.hl7v2_types import (
    ERROR_CODES,
    ErrorLocation,
    HL7Error,
    MessageHeader,
)
from radproto.model.order import Diagnosis, Order, OrderAction, OrderSource

__all__ = [
    "ERROR_CODES",
    "SUPPORTED",
    "SUPPORTED_VERSIONS",
    "ErrorLocation",
    "HL7Error",
    "Message",
    "MessageHeader",
    "ack_mode",
    "ack_wanted",
    "build_ack",
    "charset_codec",
    "declared_charset",
    "decode_message",
    "header_of",
    "message_to_order",
    "normalize_segments",
    "parse_header",
    "parse_message",
    "protocol_coding_from_message",
    "protocol_from_message",
    "suggestion_to_message",
]

# Older names adapter/hl7_listener.py calls; prefer charset_codec / declared_charset.
_codec = charset_codec
_declared_charset = declared_charset

SUPPORTED: frozenset[tuple[str, str]] = frozenset({("ORM", "O01"), ("OMI", "O23")})
SUPPORTED_VERSIONS: frozenset[str] = frozenset(
    {"2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8"}
)
PROCESSING_IDS = frozenset({"P", "T", "D"})

ORC_ACTIONS: dict[str, OrderAction] = {
    "NW": OrderAction.NEW,
    "XO": OrderAction.UPDATE,
    "XR": OrderAction.UPDATE,  # changed as requested (filler -> placer)
    "CA": OrderAction.CANCEL,
    "DC": OrderAction.CANCEL,
    "OC": OrderAction.CANCEL,
    "CR": OrderAction.CANCEL,  # canceled as requested
    "OD": OrderAction.CANCEL,  # discontinued as requested
}
# HL7 table 0027 (priority) -> Order.priority; P (preop), C (callback), PRN have no equivalent.
_PRIORITIES = {"S": "stat", "A": "asap", "R": "routine", "T": "urgent"}
# HL7 table 0001 (administrative sex) -> Order.patient_sex.
_SEXES = {"F": "female", "M": "male", "O": "other", "A": "other", "X": "other",
          "U": "unknown", "N": "unknown"}
# HL7 table 0396 coding systems -> the system names/URIs the rest of radproto uses.
_CODE_SYSTEMS = {
    "I10": "ICD-10", "I10C": "ICD-10-CM", "I9": "ICD-9", "I9C": "ICD-9-CM",
    "SCT": "http://snomed.info/sct", "SNM": "http://snomed.info/sct",
    "LN": "http://loinc.org", "C4": "http://www.ama-assn.org/go/cpt",
    "CPT": "http://www.ama-assn.org/go/cpt", "RADLEX": "http://www.radlex.org",
}
_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})")


# --- decoding and header ----------------------------------------------------------------------


def normalize_segments(text: str) -> str:
    """Segments separated by CR whatever the input used (LF, CRLF, CR); blank lines dropped."""
    return "\r".join(split_segments(text))


def parse_header(text: str) -> MessageHeader:
    """The MSH of a message; HL7Error(reject=True) when there is no usable MSH."""
    try:
        message = parse(text)
    except ParseError as exc:
        code = 100 if exc.field is None else 102
        raise HL7Error(
            str(exc), code=code, reject=True,
            location=ErrorLocation("MSH", 1, exc.field),
            header=_salvage_header(text),
        ) from None
    return header_of(message)


def header_of(message: Message) -> MessageHeader:
    """The MSH of a parsed message."""
    msh = message.segments[0]
    v = message.value
    return MessageHeader(
        field_separator=message.delimiters.field,
        encoding_characters=message.delimiters.encoding_characters,
        sending_application=_reencode(message, msh, 3),
        sending_facility=_reencode(message, msh, 4),
        receiving_application=_reencode(message, msh, 5),
        receiving_facility=_reencode(message, msh, 6),
        message_type=v(msh, 9, 1).upper(),
        trigger_event=v(msh, 9, 2).upper(),
        message_structure=v(msh, 9, 3).upper(),
        control_id=v(msh, 10),
        processing_id=v(msh, 11).upper(),
        version=v(msh, 12),
        accept_ack_type=v(msh, 15).upper(),
        application_ack_type=v(msh, 16).upper(),
        charset=v(msh, 18),
        message_datetime=v(msh, 7),
    )


def _reencode(message: Message, segment: Segment, field: int) -> str:
    """A composite field's first repetition in the standard delimiters (for copying into ACKs)."""
    reps = message.repetitions(segment, field)
    if not reps:
        return ""
    comps = [escape(c, STANDARD) for c in message.components(reps[0])]
    while comps and not comps[-1]:
        comps.pop()
    return "^".join(comps)


def _salvage_header(text: str) -> MessageHeader | None:
    """What can be read of a broken MSH (so an AR can still echo MSH-10), or None."""
    lines = split_segments(text)
    if not lines or not lines[0].startswith("MSH") or len(lines[0]) < 4:
        return None
    sep = lines[0][3]
    if sep.isalnum() or sep.isspace():
        return None
    fields = ["MSH", sep, *lines[0].split(sep)[1:]]

    def get(n: int, comp: int = 0) -> str:
        value = fields[n] if n < len(fields) else ""
        parts = value.split("^")
        return parts[comp].strip() if comp < len(parts) else ""

    return MessageHeader(
        field_separator=sep, encoding_characters=get(2),
        sending_application=get(3, 0), sending_facility=get(4, 0),
        receiving_application=get(5, 0), receiving_facility=get(6, 0),
        message_type=get(9, 0).upper(), trigger_event=get(9, 1).upper(), control_id=get(10),
        processing_id=get(11, 0).upper(), version=get(12, 0),
        accept_ack_type=get(15).upper(), application_ack_type=get(16).upper(),
    )


def ack_mode(header: MessageHeader) -> Literal["original", "enhanced"]:
    """Enhanced mode when the sender filled MSH-15 or MSH-16, original mode otherwise."""
    return "enhanced" if (header.accept_ack_type or header.application_ack_type) else "original"


def ack_wanted(
    header: MessageHeader, stage: Literal["accept", "application"], *, success: bool
) -> bool:
    """Whether the sender wants this ACK (AL always, NE never, ER on error, SU on success).

    In original mode only the application ACK is sent, always.
    """
    if ack_mode(header) == "original":
        return stage == "application"
    value = header.accept_ack_type if stage == "accept" else header.application_ack_type
    value = value or "AL"  # enhanced mode with one of the two left empty: treat as always
    return {"AL": True, "NE": False, "ER": not success, "SU": success}.get(value, True)


# --- order mapping ----------------------------------------------------------------------------


def message_to_order(
    text: str | Message, *, raw_message_id: str = "", lenient: bool = False,
    today: date | None = None,
) -> Order:
    """The order an ORM^O01 / OMI^O23 message carries.

    Raises HL7Error: reject=True for an unusable MSH or an unsupported type, event, processing
    id or version; reject=False (AE) for content errors, located by segment, field, component.
    `text` may be the message already parsed (`parse_message`): each stage parses it once.
    """
    message = text if isinstance(text, Message) else parse_message(text)
    header = header_of(message)
    _check_header(message, header, lenient=lenient)
    try:
        return _order(message, header, raw_message_id=raw_message_id, today=today,
                      lenient=lenient)
    except HL7Error as exc:
        exc.header = header
        raise


def parse_message(text: str) -> Message:
    """The parsed message; HL7Error(reject=True) when there is no usable MSH."""
    try:
        return parse(text)
    except ParseError:
        parse_header(text)  # raises the located HL7Error
        raise  # pragma: no cover - parse_header always raises here


def _check_header(message: Message, header: MessageHeader, *, lenient: bool) -> None:
    def reject(msg: str, code: int, field: int, component: int | None = None) -> HL7Error:
        return HL7Error(msg, code=code, reject=True, header=header,
                        location=ErrorLocation("MSH", 1, field, component))

    if not header.control_id:
        raise reject("MSH-10 (message control id) is empty", 101, 10)
    if not header.message_type:
        raise reject("MSH-9 (message type) is empty", 101, 9, 1)
    if header.message_type not in {t for t, _ in SUPPORTED}:
        raise reject(f"unsupported message type {header.message_type}", 200, 9, 1)
    if (header.message_type, header.trigger_event) not in SUPPORTED:
        raise reject(
            f"unsupported event {header.message_type}^{header.trigger_event or '(empty)'}",
            201, 9, 2)
    if header.processing_id and header.processing_id[:1] not in PROCESSING_IDS:
        raise reject(f"unsupported processing id {header.processing_id}", 202, 11)
    if not lenient and header.version not in SUPPORTED_VERSIONS:
        raise reject(
            f"unsupported version {header.version or '(empty)'}; supported: "
            + ", ".join(sorted(SUPPORTED_VERSIONS, key=_version_key)), 203, 12)


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def _order(
    message: Message, header: MessageHeader, *, raw_message_id: str, today: date | None,
    lenient: bool,
) -> Order:
    v = message.value
    segments = message.segments
    orc_index = next((i for i, s in enumerate(segments) if s.name == "ORC"), None)
    if orc_index is None:
        raise HL7Error("the message has no ORC segment", code=100,
                       location=ErrorLocation("ORC", 1))
    # The first order group runs from the first ORC to the next ORC.
    group_end = next((i for i in range(orc_index + 1, len(segments))
                      if segments[i].name == "ORC"), len(segments))
    group = segments[orc_index:group_end]
    orc = group[0]
    obr = next((s for s in group if s.name == "OBR"), None)
    if obr is None:
        raise HL7Error("the order has no OBR segment", code=100, location=ErrorLocation("OBR", 1))

    action_code = v(orc, 1).upper()
    if not action_code:
        raise HL7Error("ORC-1 (order control) is empty", code=101,
                       location=ErrorLocation("ORC", 1, 1))
    actions = {**ORC_ACTIONS, "SC": OrderAction.UPDATE} if lenient else ORC_ACTIONS
    if action_code not in actions:
        raise HL7Error(
            f"ORC-1 order control '{action_code}' is not one of {', '.join(actions)}",
            code=103, location=ErrorLocation("ORC", 1, 1))

    exam = _coded(message, obr, 4) or _coded(message, obr, 44)
    if not exam:
        raise HL7Error("OBR-4 (universal service id) has neither code nor text", code=101,
                       location=ErrorLocation("OBR", 1, 4, 1))
    exam_code, exam_text, exam_system = exam

    pid = message.first("PID")
    birth_date = _date(v(pid, 7))
    reference = _date(header.message_datetime) or today or date.today()
    ipc = next((s for s in group if s.name == "IPC"), None)
    tq1 = next((s for s in group if s.name == "TQ1"), None)

    notes = [_text(message, s, 3) for s in group if s.name == "NTE"]
    patient_notes = [_text(message, s, 3) for s in segments[:orc_index] if s.name == "NTE"]
    diagnoses = tuple(_diagnosis(message, s) for s in segments if s.name == "DG1")

    extra: dict[str, object] = {"message_type": f"{header.message_type}^{header.trigger_event}",
                                "hl7_version": header.version, "order_control": action_code}
    for key, value in (
        ("procedure_code", v(obr, 44, 1)),
        ("procedure_text", v(obr, 44, 2)),
        ("requested_procedure_id", v(ipc, 2) or v(obr, 19)),
        ("study_instance_uid", v(ipc, 3)),
        ("scheduled_procedure_step_id", v(ipc, 4) or v(obr, 20)),
        ("modality", v(ipc, 5) or v(obr, 24)),
        ("patient_notes", " ".join(n for n in patient_notes if n)),
    ):
        if value:
            extra[key] = value

    return Order(
        placer_order_number=v(orc, 2) or v(obr, 2),
        filler_order_number=v(orc, 3) or v(obr, 3),
        accession_number=v(obr, 18) or v(ipc, 1),
        patient_id=v(pid, 3) or v(pid, 2),
        patient_birth_date=birth_date,
        patient_age_years=_age(birth_date, reference),
        patient_sex=_SEXES.get(v(pid, 8)[:1].upper()) if v(pid, 8) else None,  # type: ignore[arg-type]
        ordered_exam_code=exam_code,
        ordered_exam_system=exam_system,
        ordered_exam_text=exam_text,
        priority=_priority(message, tq1, orc, obr),  # type: ignore[arg-type]
        reason_for_study="; ".join(_coded_texts(message, obr, 31)),
        clinical_history=_text(message, obr, 13),
        diagnoses=tuple(d for d in diagnoses if d.render()),
        notes=tuple(n for n in notes if n),
        action=actions[action_code],
        source=OrderSource.HL7V2,
        raw_message_id=raw_message_id,
        extra=extra,
    )


def _coded(message: Message, segment: Segment, field: int) -> tuple[str, str, str] | None:
    """(code, text, system) of a CE/CWE field's first repetition, or None when both are empty."""
    v = message.value
    code, text, system = v(segment, field, 1), v(segment, field, 2), v(segment, field, 3)
    if not code and not text:
        return None
    return code, text, _CODE_SYSTEMS.get(system.upper(), system)


def _coded_texts(message: Message, segment: Segment, field: int) -> list[str]:
    """Text (else code) of every repetition of a CE/CWE/ST field."""
    d = message.delimiters
    out = []
    for rep in message.repetitions(segment, field):
        # Whole components, not split on '&': senders often leave '&' unescaped in free text.
        comps = rep.split(d.component)
        text = comps[1] if len(comps) > 1 and comps[1].strip() else comps[0]
        text = unescape(text, d).strip()
        if text:
            out.append(text)
    return out


def _text(message: Message, segment: Segment, field: int) -> str:
    """All repetitions of a text field (ST/TX/FT, or CWE text) joined, whole-field unescaped."""
    return " ".join(_coded_texts(message, segment, field)) if segment is not None else ""


def _diagnosis(message: Message, dg1: Segment) -> Diagnosis:
    v = message.value
    system = v(dg1, 3, 3) or v(dg1, 2)  # DG1-2 (coding method) in v2.3 and earlier
    return Diagnosis(
        code=v(dg1, 3, 1),
        system=_CODE_SYSTEMS.get(system.upper(), system),
        text=v(dg1, 3, 2) or v(dg1, 4),
    )


def _priority(message: Message, tq1: Segment | None, orc: Segment, obr: Segment) -> str | None:
    v = message.value
    for value in (v(tq1, 9), v(orc, 7, 6), v(obr, 27, 6), v(obr, 5)):
        if value:
            return _PRIORITIES.get(value.upper())
    return None


def _date(value: str) -> date | None:
    match = _DATE.match(value or "")
    if not match:
        return None
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None


def _age(birth: date | None, reference: date) -> int | None:
    if birth is None or birth > reference:
        return None
    return reference.year - birth.year - ((reference.month, reference.day) < (birth.month,
                                                                               birth.day))


# --- protocol field ---------------------------------------------------------------------------


def protocol_coding_from_message(text: str) -> tuple[str, str, str] | None:
    """(code, text, coding system) of the protocol a message carries, or None.

    OMI: IPC-6 (protocol code) of the first IPC that has one. ORM: OBR-4 components 4 to 6
    (the IHE scheduled protocol code), when component 4 (code) or component 6 (coding system)
    is filled. Raises HL7Error only when there is no usable MSH.
    """
    message = parse_message(text)
    header = header_of(message)
    v = message.value
    if header.message_type == "OMI":
        for _, ipc in message.all("IPC"):
            code, name, system = v(ipc, 6, 1), v(ipc, 6, 2), v(ipc, 6, 3)
            if code or name:
                return code, name, system
        return None
    obr = message.first("OBR")
    code, name, system = v(obr, 4, 4), v(obr, 4, 5), v(obr, 4, 6)
    # Alternate text alone (no code, no coding system) is the exam's display name, not a
    # protocol: fixture 06 ("92250^FUNDUS PHOTOGRAPHY^EAP^^FUNDAL PHOTO") is such a case.
    return (code, name, system) if (code or (name and system)) else None


def protocol_from_message(text: str) -> str | None:
    """The protocol a message carries (its text, else its code), or None."""
    coding = protocol_coding_from_message(text)
    if coding is None:
        return None
    code, name, _ = coding
    return name or code
