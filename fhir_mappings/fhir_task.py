"""A suggestion as FHIR R4: a Task, its Provenance, and an Annotation (pure functions).

AI labelling follows HL7's "AI Transparency on FHIR" guide: the AIAST security label
(v3-ObservationValue) on the Task, the AIconfidence extension (valueDecimal 0-1) on the
Task, on each output and on the Annotation, and a Provenance whose agent is the model,
a contained Device carrying the model, catalog and prompt versions.
"""

from __future__ import annotations

from typing import Any

from radproto.model.catalog import CODE_SYSTEMS, Catalog
from radproto.model.order import Order
from radproto.model.suggestion import Suggestion

AI_CONFIDENCE_URL = "http://hl7.org/fhir/uv/aitransparency/StructureDefinition/AIconfidence"
AIAST = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "AIAST",
    "display": "Artificial Intelligence asserted",
}
TASK_IDENTIFIER_SYSTEM = "urn:radproto:suggestion"
TASK_CODE_SYSTEM = "urn:radproto:task-code"
OUTPUT_TYPE_SYSTEM = "urn:radproto:task-output"
BUSINESS_STATUS_SYSTEM = "urn:radproto:business-status"
#: Written as Annotation.authorString; the mapping skips notes with this author, so a
#: ServiceRequest carrying our own suggestion is not fed back into the model.
ANNOTATION_AUTHOR = "radproto (AI protocol suggestion)"
DEVICE_NAME = "radproto protocol classifier"
TOP_K = 3


def protocol_concept(protocol: str, catalog: Catalog) -> dict[str, Any]:
    """A protocol as a CodeableConcept with every code the catalog holds for it."""
    entry = catalog.get(protocol)
    codings = []
    if entry is not None:
        for key, code in sorted(entry.codes.items()):
            coding = {"system": CODE_SYSTEMS[key], "code": code}
            if key == "local":
                coding["display"] = entry.name
            codings.append(coding)
    concept: dict[str, Any] = {"text": entry.name if entry else protocol}
    if codings:
        concept["coding"] = codings
    return concept


def confidence_extension(value: float) -> dict[str, Any]:
    return {"url": AI_CONFIDENCE_URL, "valueDecimal": round(float(value), 4)}


def business_status(code: str, text: str) -> dict[str, Any]:
    return {"coding": [{"system": BUSINESS_STATUS_SYSTEM, "code": code}], "text": text}


def suggestion_to_task(
    suggestion: Suggestion,
    order: Order,
    catalog: Catalog,
    *,
    service_request_ref: str,
    patient_ref: str,
    task_id: str,
) -> dict[str, Any]:
    """The Task proposing `suggestion` for the ServiceRequest (status requested)."""
    outputs = []
    if not suggestion.abstained:
        outputs.append({
            "extension": [confidence_extension(suggestion.confidence)],
            "type": {"coding": [{"system": OUTPUT_TYPE_SYSTEM, "code": "suggested-protocol",
                                 "display": "Suggested protocol"}]},
            "valueCodeableConcept": protocol_concept(suggestion.protocol, catalog),
        })
    for rank, score in enumerate(suggestion.top(TOP_K), start=1):
        outputs.append({
            "extension": [confidence_extension(score.probability)],
            "type": {"coding": [{"system": OUTPUT_TYPE_SYSTEM, "code": "candidate-protocol",
                                 "display": "Candidate protocol"}],
                     "text": f"Candidate protocol {rank} of {TOP_K}"},
            "valueCodeableConcept": protocol_concept(score.protocol, catalog),
        })
    if suggestion.abstained:
        status = business_status("abstained", "No suggestion: " + (
            suggestion.abstain_reason or "confidence below the threshold"))
        description = "No protocol suggested (low confidence); candidates listed"
    else:
        status = business_status("suggested", "Protocol suggested, awaiting review")
        description = f"Suggested protocol: {suggestion.protocol}"
    when = suggestion.created_at.isoformat()
    task: dict[str, Any] = {
        "resourceType": "Task",
        "id": task_id,
        "meta": {"security": [dict(AIAST)]},
        "extension": [confidence_extension(suggestion.confidence)],
        "identifier": [{"system": TASK_IDENTIFIER_SYSTEM, "value": task_id}],
        "status": "requested",
        "businessStatus": status,
        "intent": "proposal",
        "priority": order.priority or "routine",
        "code": {"coding": [{"system": TASK_CODE_SYSTEM, "code": "protocol-suggestion",
                             "display": "protocol suggestion"}], "text": "protocol suggestion"},
        "description": description,
        "focus": {"reference": service_request_ref},
        "basedOn": [{"reference": service_request_ref}],
        "authoredOn": when,
        "lastModified": when,
        "output": outputs,
    }
    if patient_ref:
        task["for"] = {"reference": patient_ref}
    return task


def suggestion_to_provenance(
    suggestion: Suggestion,
    *,
    target_ref: str,
    service_request_ref: str = "",
) -> dict[str, Any]:
    """The Provenance of a suggestion's Task: the model, as a Device with its version."""
    device = {
        "resourceType": "Device",
        "id": "model",
        "deviceName": [{"name": DEVICE_NAME, "type": "model-name"}],
        "type": {"text": "AI imaging protocol classifier"},
        "version": [
            {"type": {"text": "model"}, "value": suggestion.model_version or "unknown"},
            {"type": {"text": "catalog"}, "value": suggestion.catalog_version or "unknown"},
            {"type": {"text": "prompt"}, "value": suggestion.prompt_version or "unknown"},
        ],
    }
    provenance: dict[str, Any] = {
        "resourceType": "Provenance",
        "meta": {"security": [dict(AIAST)]},
        "contained": [device],
        "target": [{"reference": target_ref}],
        "recorded": suggestion.created_at.isoformat(),
        "activity": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
            "code": "CREATE", "display": "create"}]},
        "agent": [{
            "type": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                "code": "author", "display": "Author"}]},
            "who": {"reference": "#model", "display": DEVICE_NAME},
        }],
    }
    if service_request_ref:
        provenance["entity"] = [{"role": "source", "what": {"reference": service_request_ref}}]
    return provenance


def suggestion_to_annotation(suggestion: Suggestion) -> dict[str, Any]:
    """An Annotation for ServiceRequest.note with the suggestion and its top 3."""
    ranked = ", ".join(f"{s.protocol} ({s.probability:.0%})" for s in suggestion.top(TOP_K))
    if suggestion.abstained:
        text = f"AI protocol suggestion: none (low confidence). Candidates: {ranked}."
    else:
        text = (f"AI protocol suggestion: {suggestion.protocol} "
                f"(confidence {suggestion.confidence:.0%}). Top {TOP_K}: {ranked}.")
    return {
        "extension": [confidence_extension(suggestion.confidence)],
        "authorString": ANNOTATION_AUTHOR,
        "time": suggestion.created_at.isoformat(),
        "text": text,
    }
