"""The order model: the one shape every interface produces and the classifier consumes."""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Sex = Literal["female", "male", "other", "unknown"]
Priority = Literal["routine", "urgent", "asap", "stat"]

#: The columns of the order file format, in the order the prompt reads them.
ORDER_FILE_FIELDS: tuple[str, ...] = ("ordered_exam", "history", "diagnosis", "notes")


class OrderSource(StrEnum):
    HL7V2 = "hl7v2"
    FHIR = "fhir"
    CDS_HOOKS = "cds-hooks"
    FILE = "file"


class OrderAction(StrEnum):
    """What the sender wants done with the order (HL7 ORC-1, FHIR status)."""

    NEW = "new"
    UPDATE = "update"
    CANCEL = "cancel"


class Diagnosis(BaseModel):
    model_config = ConfigDict(frozen=True)

    code: str = ""
    system: str = ""  # e.g. "ICD-10-CM", "http://snomed.info/sct"
    text: str = ""

    def render(self) -> str:
        return " ".join(part for part in (self.code, self.text) if part)


class Order(BaseModel):
    """An imaging order, whatever interface it came from."""

    model_config = ConfigDict(frozen=True)

    placer_order_number: str = ""
    filler_order_number: str = ""
    accession_number: str = ""
    patient_id: str = ""
    patient_birth_date: date | None = None
    patient_age_years: int | None = None
    patient_sex: Sex | None = None
    ordered_exam_code: str = ""
    ordered_exam_system: str = ""
    ordered_exam_text: str = ""
    priority: Priority | None = None
    reason_for_study: str = ""
    clinical_history: str = ""
    diagnoses: tuple[Diagnosis, ...] = ()
    notes: tuple[str, ...] = ()
    action: OrderAction = OrderAction.NEW
    source: OrderSource = OrderSource.FILE
    raw_message_id: str = ""
    extra: dict[str, Any] = Field(default_factory=dict)

    def prompt_fields(self) -> dict[str, str]:
        """The four order-file fields the prompt reads, built the same way for every source."""
        history_parts = []
        demographics = _demographics(self.patient_age_years, self.patient_sex)
        if demographics:
            history_parts.append(demographics)
        history_parts += [p for p in (self.reason_for_study, self.clinical_history) if p]
        return {
            "ordered_exam": self.ordered_exam_text or self.ordered_exam_code,
            "history": "; ".join(history_parts),
            "diagnosis": "; ".join(d.render() for d in self.diagnoses if d.render()),
            "notes": " ".join(n for n in self.notes if n),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any], *, raw_message_id: str = "") -> Order:
        """An order from one row of the order file format; unknown columns go to `extra`."""
        known = set(ORDER_FILE_FIELDS) | {"label"}
        diagnosis = _text(record.get("diagnosis"))
        notes = _text(record.get("notes"))
        return cls(
            ordered_exam_text=_text(record.get("ordered_exam")),
            clinical_history=_text(record.get("history")),
            diagnoses=(Diagnosis(text=diagnosis),) if diagnosis else (),
            notes=(notes,) if notes else (),
            source=OrderSource.FILE,
            raw_message_id=raw_message_id,
            extra={k: v for k, v in record.items() if k not in known},
        )


def _demographics(age: int | None, sex: Sex | None) -> str:
    parts = []
    if age is not None:
        parts.append(f"{age} y/o")
    if sex in ("female", "male"):
        parts.append(sex)
    return " ".join(parts)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value != value:  # NaN from pandas
        return ""
    return str(value).strip()
