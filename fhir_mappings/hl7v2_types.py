"""The header and error types of the HL7 v2 mapping (re-exported by fhir_mappings.hl7v2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

from radproto.model.errors import MappingError

#: HL7 table 0357 (message error condition codes) used by radproto, with their display texts.
ERROR_CODES: dict[int, str] = {
    0: "Message accepted",
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    200: "Unsupported message type",
    201: "Unsupported event code",
    202: "Unsupported processing id",
    203: "Unsupported version id",
    207: "Application internal error",
}

Severity = Literal["E", "W", "F", "I"]


class ErrorLocation(NamedTuple):
    """Where an error is (HL7 ERL): segment id, segment sequence, field, component."""

    segment: str
    sequence: int = 1
    field: int | None = None
    component: int | None = None

    def to_erl(self, component_sep: str = "^") -> str:
        """ERR-2 (ERL): segment^sequence^field^field repetition^component."""
        parts = [self.segment, str(self.sequence)]
        if self.field is not None:
            parts += [str(self.field), "1"]
            if self.component is not None:
                parts.append(str(self.component))
        return component_sep.join(parts)

    def __str__(self) -> str:
        text = self.segment if self.sequence == 1 else f"{self.segment}[{self.sequence}]"
        if self.field is not None:
            text += f"-{self.field}"
            if self.component is not None:
                text += f".{self.component}"
        return text


@dataclass(frozen=True)
class MessageHeader:
    """The MSH fields the adapter needs (values unescaped; composite fields are re-encoded with
    the standard delimiters ^ & so they can be copied into an ACK)."""

    field_separator: str = "|"
    encoding_characters: str = "^~\\&"
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    message_type: str = ""  # MSH-9.1, e.g. "ORM"
    trigger_event: str = ""  # MSH-9.2, e.g. "O01"
    control_id: str = ""  # MSH-10
    processing_id: str = ""  # MSH-11.1
    version: str = ""  # MSH-12.1
    accept_ack_type: str = ""  # MSH-15
    application_ack_type: str = ""  # MSH-16
    charset: str = ""  # MSH-18 (first repetition)
    message_structure: str = ""  # MSH-9.3
    message_datetime: str = ""  # MSH-7.1

    @property
    def dedup_key(self) -> tuple[str, str, str]:
        """A message is a resend when the same sender reuses a control id (MSH-3, MSH-4, MSH-10)."""
        return (self.sending_application, self.sending_facility, self.control_id)


class HL7Error(MappingError):
    """An HL7 v2 message that cannot become an order.

    `reject` True means the message as a whole is unacceptable (unusable MSH, unsupported type,
    event, processing id or version): answer AR (or CR). False means its content is wrong:
    answer AE with an ERR segment. `header` carries what could be read of the MSH (or None) so
    the ACK can still echo MSH-10.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int,
        location: ErrorLocation | None = None,
        severity: Severity = "E",
        reject: bool = False,
        header: MessageHeader | None = None,
    ):
        self.code = code
        self.severity = severity
        self.reject = reject
        self.header = header
        self.user_message = message
        super().__init__(message, location=str(location) if location else "")
        # MappingError stores the text form; keep the structured one here.
        self.location = location  # type: ignore[assignment]

    @property
    def code_text(self) -> str:
        return ERROR_CODES.get(self.code, "Application internal error")
