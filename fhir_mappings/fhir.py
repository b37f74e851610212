"""FHIR R4 <-> the order model: pure functions, no I/O.

    service_request_to_order   ServiceRequest (+ Patient, Conditions) -> Order
    suggestion_to_task         Suggestion -> Task (AI-labelled, top 3 in its output)
    suggestion_to_provenance   Suggestion -> Provenance whose agent is the model as a Device
    suggestion_to_annotation   Suggestion -> an Annotation for ServiceRequest.note
    history_from_bundle        a site's Bundle of past orders -> (Order, protocol) pairs

References a ServiceRequest makes to resources it does not contain (the Patient, a
reasonReference Condition) are listed by `references_to_fetch`; the caller fetches them and
passes them in, so this module never talks to a server.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime
from typing import Any

from radproto.fhir_mappings.fhir_task import (
    AI_CONFIDENCE_URL,
    ANNOTATION_AUTHOR,
    TASK_IDENTIFIER_SYSTEM,
    suggestion_to_annotation,
    suggestion_to_provenance,
    suggestion_to_task,
)
from radproto.fhir_mappings.fhir_validate import (
    FhirValidationError,
    Issue,
    operation_outcome,
    validate_resource,
)
from radproto.model.errors import MappingError
from radproto.model.order import Diagnosis, Order, OrderAction, OrderSource

__all__ = [
    "AI_CONFIDENCE_URL",
    "ANNOTATION_AUTHOR",
    "TASK_IDENTIFIER_SYSTEM",
    "FhirValidationError",
    "Issue",
    "decided_protocol",
    "history_from_bundle",
    "operation_outcome",
    "protocol_from_task",
    "references_to_fetch",
    "relative_reference",
    "service_request_to_order",
    "suggestion_to_annotation",
    "suggestion_to_provenance",
    "suggestion_to_task",
    "validate_resource",
]

_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
_CANCEL_STATUSES = frozenset({"revoked", "entered-in-error"})
_SEX = {"female": "female", "male": "male", "other": "other", "unknown": "unknown"}


def service_request_to_order(
    sr: dict,
    *,
    patient: dict | None = None,
    conditions: dict[str, dict] | None = None,
    raw_message_id: str = "",
    source: OrderSource = OrderSource.FHIR,
    today: date | None = None,
) -> Order:
    """The order a ServiceRequest describes.

    `patient` is the subject's Patient when not contained; `conditions` maps a reference
    ("Condition/12" or a full URL) to a fetched Condition. Raises FhirValidationError (a
    MappingError) naming the element for an invalid resource, a code outside its required
    binding, or an order with nothing to protocol.
    """
    validate_resource(sr, "ServiceRequest")
    contained = {f"#{r.get('id')}": r for r in sr.get("contained") or [] if isinstance(r, dict)}
    resolved = {**(conditions or {}), **contained}

    exam_code, exam_system, exam_text = _first_coding(sr.get("code"))
    if not (exam_code or exam_text):
        raise FhirValidationError([Issue(
            "ServiceRequest.code", "ServiceRequest.code needs a coding or text: the ordered "
            "exam is what gets protocolled", "required")])

    diagnoses: list[Diagnosis] = []
    reasons: list[str] = []
    for concept in sr.get("reasonCode") or []:
        code, system, text = _first_coding(concept)
        if code:
            diagnoses.append(Diagnosis(code=code, system=system, text=text))
        elif text:
            reasons.append(text)  # an uncoded reason is the reason for study, not a diagnosis
    for ref in sr.get("reasonReference") or []:
        diagnosis = _reason_reference(ref, resolved)
        if diagnosis is not None:
            diagnoses.append(diagnosis)
        elif ref.get("display"):  # unresolved: its display is still a reason
            reasons.append(str(ref["display"]))

    history = [_supporting_text(ref, contained) for ref in sr.get("supportingInfo") or []]
    notes = [
        str(n["text"]).strip() for n in sr.get("note") or []
        if n.get("text") and n.get("authorString") != ANNOTATION_AUTHOR  # skip our own notes
    ]
    notes += [_concept_text(detail) for detail in sr.get("orderDetail") or []]

    subject = (sr.get("subject") or {}).get("reference", "")
    subject_resource = contained.get(subject) if subject.startswith("#") else patient
    birth_date, age, sex = _demographics(subject_resource, sr.get("authoredOn"), today)
    identifiers = _identifiers(sr.get("identifier") or [])
    status = sr.get("status", "")
    return Order(
        placer_order_number=identifiers.get("PLAC", ""),
        filler_order_number=identifiers.get("FILL", ""),
        accession_number=identifiers.get("ACSN", ""),
        patient_id=_reference_id(subject) if not subject.startswith("#") else "",
        patient_birth_date=birth_date,
        patient_age_years=age,
        patient_sex=sex,
        ordered_exam_code=exam_code,
        ordered_exam_system=exam_system,
        ordered_exam_text=exam_text,
        priority=sr.get("priority"),
        reason_for_study="; ".join(reasons),
        clinical_history="; ".join(h for h in history if h),
        diagnoses=tuple(diagnoses),
        notes=tuple(n for n in notes if n),
        action=OrderAction.CANCEL if status in _CANCEL_STATUSES else OrderAction.NEW,
        source=source,
        raw_message_id=raw_message_id,
        extra={
            "fhir_id": sr.get("id", ""),
            "fhir_status": status,
            "fhir_intent": sr.get("intent", ""),
            "subject": subject,
        },
    )


def references_to_fetch(sr: Mapping[str, Any]) -> list[str]:
    """Relative or absolute references the mapping would use but `sr` does not contain."""
    refs = []
    subject = (sr.get("subject") or {}).get("reference", "")
    if subject.startswith("Patient/") or "/Patient/" in subject:
        refs.append(subject)
    for ref in sr.get("reasonReference") or []:
        reference = ref.get("reference", "")
        if reference and not reference.startswith("#"):
            refs.append(reference)
    return refs


def protocol_from_task(task: Mapping[str, Any]) -> str | None:
    """The protocol a Task names (code or text): its "chosen-protocol" output, else its
    first output with a value; None if it names none."""
    outputs = task.get("output") or []
    chosen = [o for o in outputs if any(
        c.get("code") == "chosen-protocol" for c in (o.get("type") or {}).get("coding") or [])]
    for output in chosen + outputs:
        concept = output.get("valueCodeableConcept")
        if concept:
            code, _, text = _first_coding(concept)
            return text or code or None
        if output.get("valueString"):
            return str(output["valueString"])
    return None


def decided_protocol(task: Mapping[str, Any]) -> str | None:
    """The protocol a radiologist settled on, per a Task: a completed Task's, or the one a
    rejected Task names as chosen instead. An open Task is a proposal, not a decision."""
    if task.get("status") == "completed":
        return protocol_from_task(task)
    if task.get("status") == "rejected" and any(
            c.get("code") == "chosen-protocol" for o in task.get("output") or []
            for c in (o.get("type") or {}).get("coding") or []):
        return protocol_from_task(task)
    return None


def history_from_bundle(bundle: dict) -> Iterator[tuple[Order, str | None]]:
    """Past orders with the protocol each was given, from a Bundle a site exports.

    The Bundle holds ServiceRequests, their Patients and Conditions, and the protocol as a
    Task whose focus (or basedOn) is the ServiceRequest: a completed Task's output, or the
    protocol a rejected Task names as chosen instead (`decided_protocol`). A ServiceRequest
    with no such Task yields None.
    """
    if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle":
        raise MappingError("expected a Bundle", location="Bundle.resourceType")
    by_ref: dict[str, dict] = {}
    requests: list[tuple[int, str, dict]] = []
    protocols: dict[str, str] = {}
    for index, entry in enumerate(bundle.get("entry") or []):
        resource = (entry or {}).get("resource")
        if not isinstance(resource, dict):
            continue
        kind = resource.get("resourceType")
        if resource.get("id"):
            by_ref[f"{kind}/{resource['id']}"] = resource
        if entry.get("fullUrl"):
            by_ref[entry["fullUrl"]] = resource
        if kind == "ServiceRequest":
            requests.append((index, str(entry.get("fullUrl", "")), resource))
        elif kind == "Task" and (protocol := decided_protocol(resource)):
            for ref in [resource.get("focus") or {}, *(resource.get("basedOn") or [])]:
                if ref.get("reference"):
                    protocols[ref["reference"]] = protocol
    for index, full_url, sr in requests:
        subject = (sr.get("subject") or {}).get("reference", "")
        try:
            order = service_request_to_order(
                sr, patient=by_ref.get(subject), conditions=by_ref,
                raw_message_id=f"bundle-entry-{index}")
        except MappingError as exc:
            raise MappingError(str(exc), location=f"Bundle.entry[{index}]") from exc
        found = protocols.get(f"ServiceRequest/{sr.get('id')}") or protocols.get(full_url)
        yield order, found


# -- helpers -----------------------------------------------------------------------------------


def _first_coding(concept: Mapping[str, Any] | None) -> tuple[str, str, str]:
    """(code, system, text) of a CodeableConcept: its first coding, and text or display."""
    if not concept:
        return "", "", ""
    codings = [c for c in concept.get("coding") or [] if c.get("code") or c.get("display")]
    first = codings[0] if codings else {}
    text = concept.get("text") or next((c["display"] for c in codings if c.get("display")), "")
    return str(first.get("code", "")), str(first.get("system", "")), str(text).strip()


def _concept_text(concept: Mapping[str, Any]) -> str:
    code, _, text = _first_coding(concept)
    return text or code


def _reason_reference(ref: Mapping[str, Any], resolved: Mapping[str, dict]) -> Diagnosis | None:
    reference = ref.get("reference", "")
    resource = resolved.get(reference) or resolved.get(relative_reference(reference))
    if not resource:
        return None
    code, system, text = _first_coding(resource.get("code"))
    return Diagnosis(code=code, system=system, text=text) if code or text else None


def _supporting_text(ref: Mapping[str, Any], contained: Mapping[str, dict]) -> str:
    """Plain text from a supportingInfo reference: a contained resource's text, or display."""
    resource = contained.get(ref.get("reference", ""))
    if resource:
        for key in ("valueString", "description", "comment"):
            if resource.get(key):
                return str(resource[key]).strip()
        for key in ("code", "valueCodeableConcept"):
            text = _concept_text(resource.get(key) or {})
            if text:
                return text
    return str(ref.get("display") or "").strip()


def _demographics(patient: Mapping[str, Any] | None, authored_on: str | None,
                  today: date | None) -> tuple[date | None, int | None, Any]:
    if not patient:
        return None, None, None
    sex = _SEX.get(str(patient.get("gender", "")))
    birth = _parse_date(patient.get("birthDate"))
    if birth is None:
        return None, None, sex
    at = _parse_date(authored_on) or today or datetime.now(UTC).date()
    age = at.year - birth.year - ((at.month, at.day) < (birth.month, birth.day))
    return birth, max(age, 0), sex


def _parse_date(value: Any) -> date | None:
    """A FHIR date or dateTime (YYYY, YYYY-MM, YYYY-MM-DD, ...); partial dates take the 1st."""
    if not value:
        return None
    text = str(value)[:10]
    parts = text.split("-")
    try:
        year = int(parts[0])
        month = int(parts[1]) if len(parts) > 1 else 1
        day = int(parts[2]) if len(parts) > 2 else 1
        return date(year, month, day)
    except (ValueError, IndexError):
        return None


def _identifiers(identifiers: list[dict]) -> dict[str, str]:
    """Identifier values by v2-0203 type (PLAC, FILL, ACSN); an untyped first one is PLAC."""
    out: dict[str, str] = {}
    for ident in identifiers:
        value = ident.get("value")
        if not value:
            continue
        kind = next((c.get("code") for c in (ident.get("type") or {}).get("coding") or []
                     if c.get("system") in (_V2_0203, None)), None)
        if kind in ("PLAC", "FILL", "ACSN"):
            out.setdefault(kind, str(value))
    if "PLAC" not in out:
        untyped = next(
            (i.get("value") for i in identifiers if i.get("value") and not i.get("type")), None)
        if untyped:
            out["PLAC"] = str(untyped)
    return out


def _reference_id(reference: str) -> str:
    return reference.rstrip("/").split("/")[-1] if reference else ""


def relative_reference(reference: str) -> str:
    """'http://x/fhir/Condition/1/_history/2' -> 'Condition/1'; 'Condition/1' unchanged."""
    parts = reference.split("/_history")[0].rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) > 2 else "/".join(parts)
