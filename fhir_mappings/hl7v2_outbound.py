"""A suggestion written back as HL7 v2: OMI^O23 with the protocol in IPC-6, or ORM^O01 with the
protocol in OBR-4 components 4 to 6 (IHE scheduled protocol code, for v2.3.1 sites).

ORC-1 is SC (status changed). Confidence and the abstain flag go in OBX (NM / ST), the top 3
protocols with their probabilities in an NTE. An abstained suggestion leaves the protocol field
empty, so a RIS that applies IPC-6 automatically never applies a protocol the model declined to
choose; the NTE and OBX still tell the radiologist what it considered.
"""

from __future__ import annotations

from typing import Literal

from radproto.fhir_mappings.hl7v2_parser import STANDARD, encoded_field, escape
from radproto.model.catalog import Catalog, Protocol
from radproto.model.order import Order
from radproto.model.suggestion import Suggestion

#: The local coding system radproto's protocol codes are sent in (HL7 "99zzz" local table).
PROTOCOL_CODING_SYSTEM = "99RADPROTO"
# Catalog modality -> DICOM modality (IPC-5, coding system DCM).
_DICOM_MODALITY = {"PET": "PT", "XR": "DX", "IR": "XA", "DXA": "BMD"}
# Order.ordered_exam_system URIs back to HL7 table 0396 identifiers.
_HL7_SYSTEMS = {
    "http://loinc.org": "LN", "http://snomed.info/sct": "SCT",
    "http://www.ama-assn.org/go/cpt": "C4", "http://www.radlex.org": "RADLEX",
}


def _e(value: object) -> str:
    return escape(str(value or ""), STANDARD)


def _ce(code: str, text: str, system: str) -> str:
    parts = [_e(code), _e(text), _e(system)]
    while parts and not parts[-1]:
        parts.pop()
    return "^".join(parts)


def protocol_coding(protocol: Protocol | None, name: str) -> tuple[str, str, str]:
    """(code, text, system) a protocol is sent as: its local code in 99RADPROTO, else its
    RadLex or LOINC code, else its name alone (system 99RADPROTO)."""
    if protocol is None:
        return "", name, PROTOCOL_CODING_SYSTEM
    for key, system in (("local", PROTOCOL_CODING_SYSTEM), ("radlex_rpid", "RADLEX"),
                        ("loinc", "LN")):
        if protocol.codes.get(key):
            return protocol.codes[key], protocol.name, system
    # No code at all: the name alone, still marked with radproto's coding system.
    return "", protocol.name, PROTOCOL_CODING_SYSTEM


def suggestion_to_message(
    order: Order,
    suggestion: Suggestion,
    catalog: Catalog,
    *,
    style: Literal["omi", "orm"] = "omi",
    sending_application: str = "RADPROTO",
    sending_facility: str = "",
    receiving_application: str = "",
    receiving_facility: str = "",
    control_id: str,
    version: str | None = None,
) -> str:
    """The suggestion for `order` as an OMI^O23 (default v2.5.1) or ORM^O01 (default v2.3.1)
    message, segments separated by CR.

    The application and facility arguments are HD values in the standard delimiters, as
    MessageHeader holds them ("RIS" or "RIS^1.2.3^ISO"): components are kept as given.
    """
    if style not in ("omi", "orm"):
        raise ValueError(f"style must be 'omi' or 'orm', not {style!r}")
    version = version or ("2.5.1" if style == "omi" else "2.3.1")
    protocol = catalog.get(suggestion.protocol)
    code, name, system = ("", "", "") if suggestion.abstained else protocol_coding(
        protocol, suggestion.protocol)
    msg_type = "OMI^O23^OMI_O23" if style == "omi" else "ORM^O01^ORM_O01"
    if version in ("2.3", "2.2", "2.1"):
        msg_type = "^".join(msg_type.split("^")[:2])
    stamp = suggestion.created_at.strftime("%Y%m%d%H%M%S%z")
    segments = [
        "|".join(["MSH", "^~\\&", *(encoded_field(v) for v in (
                      sending_application, sending_facility, receiving_application,
                      receiving_facility)), stamp, "", msg_type,
                  _e(control_id), "P", version, "", "", "", "", "", "UNICODE UTF-8"]),
    ]
    if order.patient_id:
        segments.append(f"PID|1||{_e(order.patient_id)}")
    segments.append(
        f"ORC|SC|{_e(order.placer_order_number)}|{_e(order.filler_order_number)}"
    )
    exam_system = _HL7_SYSTEMS.get(order.ordered_exam_system, order.ordered_exam_system)
    exam = [_e(order.ordered_exam_code), _e(order.ordered_exam_text), _e(exam_system)]
    if style == "orm":
        exam += [_e(code), _e(name), _e(system)]
    while exam and not exam[-1]:
        exam.pop()
    obr = ["OBR", "1", _e(order.placer_order_number), _e(order.filler_order_number),
           "^".join(exam)]
    if style == "orm" and order.accession_number:
        obr += [""] * 13 + [_e(order.accession_number)]  # OBR-18
    segments.append("|".join(obr))
    segments.append(f"NTE|1|O|{_e(_summary(suggestion))}")
    segments += _observations(suggestion, style)
    if style == "omi":
        modality = ""
        if protocol is not None:
            dicom = _DICOM_MODALITY.get(protocol.modality, protocol.modality)
            modality = f"{dicom}^^DCM"
        extra = order.extra
        segments.append("|".join([
            "IPC", _e(order.accession_number), _e(extra.get("requested_procedure_id", "")),
            _e(extra.get("study_instance_uid", "")),
            _e(extra.get("scheduled_procedure_step_id", "")), modality, _ce(code, name, system),
        ]))
    return "\r".join(segments)


def _summary(suggestion: Suggestion) -> str:
    top = "; ".join(f"{s.protocol} ({s.probability:.2f})" for s in suggestion.top(3))
    text = f"Suggested protocols: {top}"
    if suggestion.abstained:
        reason = f": {suggestion.abstain_reason}" if suggestion.abstain_reason else ""
        text += f". No protocol suggested (abstained{reason})"
    return text


def _observations(suggestion: Suggestion, style: str) -> list[str]:
    def obx(n: int, value_type: str, code: str, text: str, value: str) -> str:
        return (f"OBX|{n}|{value_type}|{code}^{_e(text)}^{PROTOCOL_CODING_SYSTEM}||{_e(value)}"
                "||||||F")

    return [
        obx(1, "NM", "RP-CONFIDENCE", "Protocol suggestion confidence",
            f"{suggestion.confidence:.4f}"),
        obx(2, "ST", "RP-ABSTAINED", "Protocol suggestion abstained",
            "Y" if suggestion.abstained else "N"),
        obx(3, "ST", "RP-MODEL", "Protocol suggestion model version", suggestion.model_version),
    ]


def verdict_to_message(
    order: Order,
    suggestion: Suggestion,
    catalog: Catalog,
    *,
    outcome: Literal["accepted", "changed", "rejected"],
    protocol: str | None,
    reason: str = "",
    style: Literal["omi", "orm"] = "omi",
    control_id: str,
    **header: str | None,
) -> str:
    """The radiologist's verdict as the same OMI^O23 / ORM^O01 write-back as the suggestion
    (suggestion_to_message), carrying the final protocol: in IPC-6 / OBR-4.4-6 the protocol
    accepted or chosen instead (none for a rejection), an OBX RP-VERDICT with the outcome
    and an NTE that says who decided. `header`: the sending / receiving application and
    facility and the version, as suggestion_to_message takes them."""
    if outcome not in ("accepted", "changed", "rejected"):
        raise ValueError(f"outcome must be accepted, changed or rejected, not {outcome!r}")
    final = protocol if outcome != "rejected" else None
    shown = suggestion.model_copy(update={
        "protocol": final or suggestion.protocol, "abstained": final is None,
        "abstain_reason": "rejected by the radiologist" if final is None else ""})
    text = {"accepted": f"Protocol {final} accepted by the radiologist",
            "changed": f"Protocol changed by the radiologist to {final} "
                       f"(suggested: {suggestion.protocol})",
            "rejected": "Suggested protocol rejected by the radiologist"}[outcome]
    if reason:
        text += f": {reason}"
    segments = suggestion_to_message(order, shown, catalog, style=style, control_id=control_id,
                                     **header).split("\r")  # type: ignore[arg-type]
    last_obx = max(i for i, s in enumerate(segments) if s.startswith("OBX|"))
    segments[last_obx + 1:last_obx + 1] = [
        f"OBX|4|ST|RP-VERDICT^{_e('Radiologist verdict')}^{PROTOCOL_CODING_SYSTEM}||"
        f"{outcome}||||||F",
        f"NTE|2|O|{_e(text)}",
    ]
    return "\r".join(segments)
