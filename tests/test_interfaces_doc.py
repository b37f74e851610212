"""docs/interfaces.md: every example message is what the mapping code reads and writes."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from radproto.fhir_mappings.hl7v2 import build_ack, message_to_order, parse_header
from radproto.fhir_mappings.hl7v2_outbound import suggestion_to_message
from radproto.model.catalog import default_catalog
from radproto.model.suggestion import ProtocolScore, Suggestion

DOC = Path(__file__).resolve().parents[1] / "docs" / "interfaces.md"
BLOCK = re.compile(r"^```(hl7 [^\n]*|json suggestion)\n(.*?)^```", re.M | re.S)


def _blocks() -> list[tuple[str, str]]:
    return [(tag, body) for tag, body in BLOCK.findall(DOC.read_text(encoding="utf-8"))]


def _one(tag: str) -> str:
    found = [body for t, body in _blocks() if t.startswith(tag)]
    assert len(found) == 1, f"expected one '{tag}' block in {DOC.name}"
    return found[0]


def _message(body: str) -> str:
    return "\r".join(line for line in body.splitlines() if line.strip())


def _fields(message: str) -> list[list[str]]:
    """Segments as field lists, MSH-7 (date/time) and MSH-10 (control id) blanked."""
    segments = [segment.split("|") for segment in message.split("\r")]
    for fields in segments:
        if fields[0] == "MSH":
            fields[6] = fields[9] = "*"
    return segments


def test_every_example_block_is_checked():
    tags = [tag for tag, _ in _blocks()]
    assert sorted(tags) == sorted(["hl7 inbound", "hl7 ack AA", "json suggestion",
                                   "hl7 writeback omi", "hl7 writeback orm",
                                   "hl7 ack CA (MSH-9 ORM^O01^ORM_O01, MSH-12 2.5.1, MSH-15 AL, "
                                   "MSH-16 NE)"])


def test_the_inbound_example_maps_to_the_stated_order():
    order = message_to_order(_message(_one("hl7 inbound")))
    assert order.placer_order_number == "ORD777" and order.patient_id == "MRN12345"
    assert (order.ordered_exam_code, order.ordered_exam_text) == \
        ("CTHEAD", "CT HEAD WITHOUT CONTRAST")
    assert order.reason_for_study == "Sudden severe headache, rule out hemorrhage"
    assert order.action.value == "new"


def test_the_acks_are_what_the_listener_builds():
    inbound = _message(_one("hl7 inbound"))
    header = parse_header(inbound)
    assert _fields(build_ack(header, "AA", control_id="X")) == \
        _fields(_message(_one("hl7 ack AA")))
    msh = inbound.split("\r")[0].split("|")
    msh[8], msh[11] = "ORM^O01^ORM_O01", "2.5.1"
    msh += [""] * (17 - len(msh))
    msh[14], msh[15] = "AL", "NE"
    enhanced = "\r".join(["|".join(msh), *inbound.split("\r")[1:]])
    assert _fields(build_ack(parse_header(enhanced), "CA", control_id="X")) == \
        _fields(_message(_one("hl7 ack CA")))


@pytest.mark.parametrize("style", ["omi", "orm"])
def test_the_writeback_examples_are_what_the_mapping_writes(style):
    catalog = default_catalog()
    stated = json.loads(_one("json suggestion"))
    suggestion = Suggestion(
        scores=tuple(ProtocolScore(protocol=p, probability=q) for p, q in stated["scores"]),
        protocol=stated["protocol"], confidence=stated["confidence"],
        model_version=stated["model_version"], catalog_version=catalog.version,
        prompt_version="doc", created_at=datetime.now(UTC))
    inbound = _message(_one("hl7 inbound"))
    order = message_to_order(inbound)
    header = parse_header(inbound)
    produced = suggestion_to_message(
        order, suggestion, catalog, style=style, control_id="X",
        receiving_application=header.sending_application,
        receiving_facility=header.sending_facility)
    assert _fields(produced) == _fields(_message(_one(f"hl7 writeback {style}")))
