"""HL7 v2 mapping: the third-party fixtures, header checks, ACKs, escapes, suggestions back."""

from __future__ import annotations

import contextlib
from datetime import UTC, date, datetime
from pathlib import Path

import hl7  # python-hl7: an independent parser to cross-check field positions
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radproto.fhir_mappings.hl7v2 import (
    SUPPORTED,
    ErrorLocation,
    HL7Error,
    MessageHeader,
    ack_mode,
    ack_wanted,
    build_ack,
    charset_codec,
    declared_charset,
    decode_message,
    message_to_order,
    normalize_segments,
    parse_header,
    protocol_coding_from_message,
    protocol_from_message,
    suggestion_to_message,
)
from radproto.fhir_mappings.hl7v2_parser import Delimiters, escape, parse, unescape
from radproto.model.catalog import default_catalog
from radproto.model.order import Diagnosis, Order, OrderAction, OrderSource
from radproto.model.suggestion import ProtocolScore, Suggestion

FIXTURES = Path(__file__).parents[1] / ".." / "shared" / "fixtures" / "third_party" / "hl7"
ALL_FIXTURES = sorted(p.name for p in FIXTURES.glob("*.hl7"))


def fixture_text(name: str, *, unescape_markdown: bool = False) -> str:
    text = decode_message((FIXTURES / name).read_bytes())
    if unescape_markdown:  # fixture 06 was copied from Markdown: MSH-2 is "^\~\&" there
        text = text.replace("MSH|^\\~\\&|", "MSH|^~\\&|", 1)
    return text


def fields(message: str, segment: str, occurrence: int = 0) -> list[str]:
    """Raw fields of a segment, numbered as in HL7 (fields[1] is MSH-1 for MSH)."""
    found = [s for s in normalize_segments(message).split("\r") if s.startswith(segment + "|")]
    parts = found[occurrence].split("|")
    return ["MSH", "|", *parts[1:]] if segment == "MSH" else parts


def test_all_six_fixtures_are_present():
    assert ALL_FIXTURES == [
        "01_hapi_orm_o01_v22_NW_ct_biopsy.hl7", "02_hapi_orm_o01_v22_XR_knee.hl7",
        "03_dcm4che_mesa_orm_o01_v231.hl7", "04_dcm4che_omi_o23_v251_imaging_order.hl7",
        "05_hl7_gender_harmony_omi_o23_v25.hl7", "06_iris_orm_o01_v24_dg1_fundus_photo.hl7",
    ]


# --- every fixture maps or is rejected with the right error ------------------------------------


@pytest.mark.parametrize("name", ALL_FIXTURES[:2])
def test_v22_fixtures_are_rejected_with_203_but_read_for_import(name):
    text = fixture_text(name)
    with pytest.raises(HL7Error) as info:
        message_to_order(text)
    err = info.value
    assert (err.code, err.reject, err.location) == (203, True, ErrorLocation("MSH", 1, 12))
    assert err.header is not None and err.header.version == "2.2"
    order = message_to_order(text, lenient=True)
    assert order.source is OrderSource.HL7V2
    assert order.extra["hl7_version"] == "2.2"


def test_fixture_01_ct_biopsy_new_order():
    text = fixture_text("01_hapi_orm_o01_v22_NW_ct_biopsy.hl7")
    header = parse_header(text)
    assert header.sending_application == "DMCOE"  # trailing space in the source is stripped
    assert header.receiving_application == "RADIS1"
    assert header.accept_ack_type == "AL" and ack_mode(header) == "enhanced"
    order = message_to_order(text, lenient=True, raw_message_id="m-1")
    assert order.action is OrderAction.NEW
    assert (order.ordered_exam_code, order.ordered_exam_text, order.ordered_exam_system) == (
        "38067", "CT BIOPSY (91-MIN OR MORE)", "L")
    assert order.reason_for_study == "R/O TUMOR"
    assert order.placer_order_number == "003711.0001.001"
    assert order.patient_id == "N00829"
    assert order.patient_birth_date == date(1956, 2, 2)
    assert order.patient_age_years == 38  # at MSH-7 (1994-05-03), not today
    assert order.patient_sex == "female"
    assert order.raw_message_id == "m-1"
    assert order.prompt_fields()["history"] == "38 y/o female; R/O TUMOR"
    assert protocol_from_message(text) is None


def test_fixture_02_xr_is_an_update_with_text_only_exam():
    text = fixture_text("02_hapi_orm_o01_v22_XR_knee.hl7")
    header = parse_header(text)
    assert header.accept_ack_type == "NE"
    assert not ack_wanted(header, "accept", success=True)
    order = message_to_order(text, lenient=True)
    assert order.action is OrderAction.UPDATE
    assert (order.ordered_exam_code, order.ordered_exam_text) == ("", "KNEE-RIGHT AP LAT")
    assert order.placer_order_number == "003626.0004.001"
    assert order.filler_order_number == "0000000517"
    assert (order.patient_sex, order.patient_age_years) == ("male", 38)


def test_fixture_03_mesa_orm_v231():
    text = fixture_text("03_dcm4che_mesa_orm_o01_v231.hl7")
    assert "\n" not in text and text.count("\r") == 6  # CR separators on the wire
    header = parse_header(text)
    assert (header.message_type, header.trigger_event, header.version) == ("ORM", "O01", "2.3.1")
    assert header.dedup_key == ("MESA_OF", "XYZ_RADIOLOGY", "103106")
    assert ack_mode(header) == "original"
    order = message_to_order(text, today=date(2024, 1, 1))
    assert order.action is OrderAction.NEW
    assert (order.placer_order_number, order.filler_order_number) == ("A103Z", "B103Z")
    assert order.accession_number == "MOF5026"  # OBR-18
    assert (order.ordered_exam_code, order.ordered_exam_text) == ("P1", "Procedure 1")
    assert order.priority == "stat"  # ORC-7.6 = S
    assert order.patient_id == "583295"
    assert order.patient_birth_date is None and order.patient_age_years is None
    assert order.extra["requested_procedure_id"] == "RP1026"
    assert order.extra["modality"] == "MR"
    # OBR-4 components 4 to 6 hold the scheduled protocol (IHE RAD-4).
    assert protocol_coding_from_message(text) == ("X1_A1", "SP Action Item X1_A1", "DSS_MESA")
    assert protocol_from_message(text) == "SP Action Item X1_A1"


def test_fixture_04_omi_v251_with_mislabelled_charset():
    raw = (FIXTURES / "04_dcm4che_omi_o23_v251_imaging_order.hl7").read_bytes()
    assert b"|8859/1|" in raw and "–".encode() in raw  # declares latin-1, holds UTF-8
    text = decode_message(raw)
    header = parse_header(text)
    assert (header.message_type, header.trigger_event, header.message_structure) == (
        "OMI", "O23", "OMI_O23")
    assert header.charset == "8859/1"
    order = message_to_order(text)
    assert order.reason_for_study == (
        "Rheumatoid, other arthritis with motor score from 12 –35.,comorbidity in tier 3")
    assert order.clinical_history == "MedicalAlerts"  # OBR-13
    assert order.notes == ("RequestedProcedureComments",)  # NTE after OBR, not the PID one
    assert order.extra["patient_notes"] == "PatientComments"
    assert order.accession_number == "AccessionNumber"  # IPC-1 (OBR-18 empty)
    assert (order.ordered_exam_code, order.ordered_exam_system) == ("10637-7",
                                                                    "http://loinc.org")
    assert order.priority is None  # ORC-7.6 holds a placeholder, not a table 0027 value
    assert (order.patient_birth_date, order.patient_age_years) == (date(2014, 10, 14), 7)
    assert order.extra["study_instance_uid"] == "1.2.392.200036.9125.0.198811291108.7"
    assert protocol_from_message(text) == "Microscopic Observation"  # IPC-6


def test_fixture_05_later_version_segments_are_tolerated():
    text = fixture_text("05_hl7_gender_harmony_omi_o23_v25.hl7")
    assert "GSP|" in text and "GSC|" in text  # v2.9-era segments in a v2.5 message
    header = parse_header(text)
    assert header.sending_application == "" and header.version == "2.5"
    order = message_to_order(text)
    assert (order.ordered_exam_code, order.ordered_exam_text, order.ordered_exam_system) == (
        "241439007", "PET heart study", "http://snomed.info/sct")
    # SOURCE.txt calls the playbook code OBR-44, but the message has one '|' more: it sits in
    # OBR-45 (medically necessary duplicate procedure reason) and is not read as the exam.
    assert parse(text).first("OBR").raw(45).startswith("82800-4^")
    assert "procedure_code" not in order.extra
    assert order.patient_sex == "female"
    assert order.extra["modality"] == "PT"
    assert protocol_coding_from_message(text) == (
        "122793", "PET Myocardial Perfusion, Rest and Stress", "DCM")


def test_fixture_06_markdown_escaped_msh2_is_rejected():
    text = fixture_text("06_iris_orm_o01_v24_dg1_fundus_photo.hl7")
    for call in (parse_header, message_to_order):
        with pytest.raises(HL7Error) as info:
            call(text)
        err = info.value
        assert (err.code, err.reject, err.location) == (102, True, ErrorLocation("MSH", 1, 2))
        # What could be read of the MSH still lets the AR echo MSH-10.
        assert err.header is not None and err.header.control_id == "20200303194509"
    ack = build_ack(err.header, "AR", error=err, control_id="ACK1")
    assert fields(ack, "MSA")[1:3] == ["AR", "20200303194509"]


def test_fixture_06_unescaped_maps_dg1_diagnoses():
    text = fixture_text("06_iris_orm_o01_v24_dg1_fundus_photo.hl7", unescape_markdown=True)
    order = message_to_order(text)
    assert order.placer_order_number == "Order501138"
    assert order.ordered_exam_code == "92250"
    assert order.priority == "routine"
    assert (order.patient_sex, order.patient_age_years) == ("male", 25)
    assert order.diagnoses == (
        Diagnosis(code="E11.3299", system="ICD-10", text="Type 2 diabetes mellitus with mild "
                  "nonproliferative diabetic retinopathy without macular edema, unspecified eye"),
        Diagnosis(code="E11.65", system="ICD-10",
                  text="Type 2 diabetes mellitus with hyperglycemia"),
    )
    assert order.prompt_fields()["diagnosis"].startswith("E11.3299 Type 2 diabetes")
    # OBR-4.5 alone (alternate text, no code or coding system) is not a protocol.
    assert protocol_from_message(text) is None


@pytest.mark.parametrize("name", ALL_FIXTURES[2:])
def test_fields_agree_with_python_hl7(name):
    text = normalize_segments(fixture_text(name, unescape_markdown=True))
    theirs = hl7.parse(text)
    order = message_to_order(text)

    def at(segment: str, field: int, component: int = 1) -> str:
        return theirs.extract_field(segment, 1, field, 1, component).strip()

    assert order.patient_id == at("PID", 3)
    assert order.ordered_exam_code == at("OBR", 4, 1)
    assert order.ordered_exam_text == at("OBR", 4, 2)
    assert order.placer_order_number == (at("ORC", 2) or at("OBR", 2))
    assert order.filler_order_number == (at("ORC", 3) or at("OBR", 3))
    assert parse_header(text).control_id == str(theirs.segment("MSH")[10])


# --- segment separators, escapes, Z-segments --------------------------------------------------


@pytest.mark.parametrize("separator", ["\r", "\n", "\r\n", "\r\n\r\n", "\n\n"])
def test_segment_separators_are_all_accepted(separator):
    text = fixture_text("03_dcm4che_mesa_orm_o01_v231.hl7")
    variant = separator.join(text.split("\r")) + separator
    assert normalize_segments(variant) == normalize_segments(text)
    assert message_to_order(variant) == message_to_order(text)


def test_normalize_segments_strips_blank_lines_and_framing():
    assert normalize_segments("\x0bMSH|^~\\&|A\r\n\r\n  \nPID|1\n\x1c\r") == "MSH|^~\\&|A\rPID|1"


def _message(*, version="2.5.1", msg_type="OMI^O23^OMI_O23", orc="ORC|NW|P1|F1",
             obr="OBR|1|P1|F1|CT123^CT Chest^L", extra=(), msh_tail="") -> str:
    segments = [f"MSH|^~\\&|RIS|HOSP|RADPROTO|HOSP|20240102030405||{msg_type}|C1|P|{version}"
                + msh_tail, "PID|||12345^^^HOSP||DOE^JANE||19800615|F", orc, obr, *extra]
    return "\r".join(s for s in segments if s)


def test_escape_sequences_in_fields():
    text = _message(obr="OBR|1|P1|F1|CT1^CT Chest \\T\\ Abdomen|||||||||"
                        "Pain \\F\\ cough \\S\\ fever \\R\\ x \\E\\ y\\.br\\line 2 \\X41C3A9\\",
                    extra=["NTE|1||Note with \\H\\bold\\N\\ text & more"])
    order = message_to_order(text)
    assert order.ordered_exam_text == "CT Chest & Abdomen"
    assert order.clinical_history == "Pain | cough ^ fever ~ x \\ y\nline 2 Aé"
    assert order.notes == ("Note with bold text & more",)  # unescaped '&' kept in free text


def test_unescape_handles_formatting_and_broken_sequences():
    assert unescape("a\\.br\\b\\.sp\\c") == "a\nb\nc"
    assert unescape("\\Zlocal\\x\\C2842\\y") == "xy"
    assert unescape("dangling \\F") == "dangling \\F"  # unterminated: kept literally
    assert unescape("\\X\\") == ""


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_escape_round_trips(value):
    value = value.replace("\r\n", "\n").replace("\r", "\n")
    escaped = escape(value)
    assert not set("|^~&\r\n") & set(escaped)
    assert unescape(escaped) == value


def test_custom_delimiters_from_msh1_and_msh2():
    delims = Delimiters(field="#", component="!", repetition="@", escape="$", subcomponent="%")
    text = _message(obr="OBR|1|P1|F1|CT9^CT Spine $S$ Pelvis^L|||||||||History $F$ x")
    table = str.maketrans({"|": "#", "^": "!", "~": "@", "\\": "$", "&": "%"})
    custom = "\r".join(seg.translate(table) for seg in text.split("\r"))
    assert custom.startswith("MSH#!@$%#")
    assert parse(custom).delimiters == delims
    order = message_to_order(custom)
    assert order.ordered_exam_text == "CT Spine ! Pelvis"
    assert order.clinical_history == "History # x"


def test_five_encoding_characters_v27():
    text = _message(version="2.7").replace("MSH|^~\\&|", "MSH|^~\\&#|", 1)
    assert parse(text).delimiters.truncation == "#"
    assert message_to_order(text).ordered_exam_code == "CT123"


def test_z_segments_and_unknown_segments_are_ignored():
    plain = message_to_order(_message())
    with_z = message_to_order(_message(extra=["ZDS|1.2.3^100^Application^DICOM", "ZXY|a|b",
                                              "ARV|1|X", "PRT|1|AD"]))
    assert with_z == plain


# --- order content ----------------------------------------------------------------------------


@pytest.mark.parametrize(("control", "action"), [
    ("NW", OrderAction.NEW), ("XO", OrderAction.UPDATE), ("XR", OrderAction.UPDATE),
    ("CA", OrderAction.CANCEL), ("DC", OrderAction.CANCEL), ("OC", OrderAction.CANCEL),
    ("CR", OrderAction.CANCEL), ("OD", OrderAction.CANCEL),
])
def test_orc1_actions(control, action):
    assert message_to_order(_message(orc=f"ORC|{control}|P1|F1")).action is action


@pytest.mark.parametrize(("orc", "code"), [("ORC|SC|P1", 103), ("ORC||P1", 101)])
def test_orc1_unknown_or_missing_is_a_content_error(orc, code):
    with pytest.raises(HL7Error) as info:
        message_to_order(_message(orc=orc))
    assert (info.value.code, info.value.reject) == (code, False)
    assert info.value.location == ErrorLocation("ORC", 1, 1)
    assert info.value.header is not None and info.value.header.control_id == "C1"


def test_status_changed_is_an_update_only_when_lenient():
    text = _message(orc="ORC|SC|P1|F1")
    with pytest.raises(HL7Error):
        message_to_order(text)
    assert message_to_order(text, lenient=True).action is OrderAction.UPDATE


def test_missing_obr_is_a_segment_error():
    with pytest.raises(HL7Error) as info:
        message_to_order(_message(obr=""))
    assert (info.value.code, info.value.reject, info.value.location) == (
        100, False, ErrorLocation("OBR", 1))


def test_missing_orc_is_a_segment_error():
    with pytest.raises(HL7Error) as info:
        message_to_order(_message(orc=""))
    assert (info.value.code, info.value.location) == (100, ErrorLocation("ORC", 1))


def test_exam_missing_is_101_at_obr4():
    with pytest.raises(HL7Error) as info:
        message_to_order(_message(obr="OBR|1|P1|F1|^^L"))
    err = info.value
    assert (err.code, err.reject, err.location) == (101, False, ErrorLocation("OBR", 1, 4, 1))
    ack = build_ack(err.header, "AE", error=err, control_id="A9")
    assert fields(ack, "ERR")[2] == "OBR^1^4^1^1"


def test_exam_falls_back_to_obr44():
    obr = "OBR|1|P1|F1|" + "|" * 40 + "82800-4^PET+CT Heart W contrast IV^LN"
    assert parse(_message(obr=obr)).first("OBR").raw(44).startswith("82800-4^")
    order = message_to_order(_message(obr=obr))
    assert (order.ordered_exam_code, order.ordered_exam_text) == (
        "82800-4", "PET+CT Heart W contrast IV")


def test_priority_from_tq1_wins_and_demographics():
    text = _message(orc="ORC|NW|P1|F1||||^^^^^R", extra=[]).replace(
        "\rOBR", "\rTQ1|||||||||A\rOBR")
    order = message_to_order(text)
    assert order.priority == "asap"
    assert order.patient_birth_date == date(1980, 6, 15)
    assert order.patient_age_years == 43  # at MSH-7 2024-01-02
    assert order.patient_id == "12345"


def test_age_uses_today_without_msh7():
    text = _message().replace("|20240102030405|", "||")
    assert message_to_order(text, today=date(2020, 6, 14)).patient_age_years == 39
    assert message_to_order(text, today=date(2020, 6, 15)).patient_age_years == 40


def test_only_the_first_order_group_is_mapped():
    text = _message(extra=["NTE|1||first note", "ORC|NW|P2|F2", "OBR|1|P2|F2|MR1^MR Brain",
                           "NTE|1||second note"])
    order = message_to_order(text)
    assert order.placer_order_number == "P1" and order.notes == ("first note",)


# --- header checks ----------------------------------------------------------------------------


def test_supported_types():
    assert {("ORM", "O01"), ("OMI", "O23")} == SUPPORTED


@pytest.mark.parametrize("version", ["2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7",
                                     "2.7.1", "2.8"])
def test_supported_versions(version):
    assert message_to_order(_message(version=version, msg_type="ORM^O01")).ordered_exam_code


@pytest.mark.parametrize(("change", "code", "field"), [
    ({"msg_type": "ADT^A01"}, 200, 9), ({"msg_type": "ORM^O02"}, 201, 9),
    ({"msg_type": "OMI"}, 201, 9), ({"version": "2.9"}, 203, 12), ({"version": "2.1"}, 203, 12),
    ({"version": ""}, 203, 12), ({"msg_type": ""}, 101, 9),
])
def test_header_rejects(change, code, field):
    with pytest.raises(HL7Error) as info:
        message_to_order(_message(**change))
    err = info.value
    assert (err.code, err.reject, err.location.segment, err.location.field) == (
        code, True, "MSH", field)


def test_processing_id_and_control_id():
    with pytest.raises(HL7Error) as info:
        message_to_order(_message().replace("|C1|P|", "|C1|X|"))
    assert (info.value.code, info.value.reject) == (202, True)
    with pytest.raises(HL7Error) as info:
        message_to_order(_message().replace("|C1|P|", "||P|"))
    assert (info.value.code, info.value.reject, info.value.location.field) == (101, True, 10)


@pytest.mark.parametrize("text", ["", "   \r\n", "PID|1||x", "MSHX^~\\&|", "MSH|^~|a",
                                  "MSH|^^\\&|a", "MSH"])
def test_unusable_msh(text):
    with pytest.raises(HL7Error) as info:
        parse_header(text)
    assert info.value.reject and info.value.code in (100, 102)


def test_dedup_key_uses_sender_and_control_id():
    header = parse_header(_message())
    assert header.dedup_key == ("RIS", "HOSP", "C1")
    other = parse_header(_message().replace("|RIS|HOSP|", "|RIS|OTHER|"))
    assert other.dedup_key != header.dedup_key


# --- decoding ---------------------------------------------------------------------------------


def _bytes_with_charset(charset: str, body: bytes) -> bytes:
    return (f"MSH|^~\\&|A|B|C|D|20240101||ORM^O01|1|P|2.5.1||||||{charset}\r".encode()
            + b"ORC|NW|1\rOBR|1|1||CT^" + body)


def test_decode_by_msh18():
    assert decode_message(_bytes_with_charset("8859/1", b"caf\xe9")).endswith("café")
    assert decode_message(_bytes_with_charset("UNICODE UTF-8", "café".encode())).endswith("café")
    assert decode_message(_bytes_with_charset("8859/7", b"\xe1")).endswith("α")


def test_decode_never_raises_and_falls_back():
    text = decode_message(_bytes_with_charset("ASCII", b"caf\xe9 \xff"))
    assert text.endswith("caf\ufffd \ufffd")
    assert decode_message(_bytes_with_charset("NO-SUCH-CHARSET", b"x\xe9"),
                          default_charset="latin-1").endswith("xé")
    assert decode_message(b"") == ""
    assert decode_message("\ufeffMSH|^~\\&|é".encode("utf-16")) == "\ufeffMSH|^~\\&|é"


@given(st.binary(max_size=300))
def test_decode_arbitrary_bytes(raw):
    assert isinstance(decode_message(raw), str)
    assert isinstance(decode_message(b"MSH|^~\\&|||||||||||||||||" + raw), str)


# --- ACKs -------------------------------------------------------------------------------------

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def test_original_mode_aa():
    header = parse_header(_message())
    assert ack_mode(header) == "original"
    ack = build_ack(header, "AA", control_id="ACK-1", now=NOW)
    msh = fields(ack, "MSH")
    assert msh[2] == "^~\\&"
    assert msh[3:7] == ["RADPROTO", "HOSP", "RIS", "HOSP"]  # sender and receiver swapped
    assert msh[7] == "20240506070809+0000"
    assert msh[9:13] == ["ACK^O23^ACK", "ACK-1", "P", "2.5.1"]
    assert fields(ack, "MSA")[1:3] == ["AA", "C1"]
    assert "ERR" not in ack
    assert "\n" not in ack and not ack.endswith("\r")
    theirs = hl7.parse(ack)
    assert str(theirs.segment("MSA")[2]) == "C1"


def test_enhanced_mode_accept_ack_and_wanted():
    header = parse_header(_message(msh_tail="|||AL|ER"))
    assert ack_mode(header) == "enhanced"
    assert ack_wanted(header, "accept", success=True)
    assert not ack_wanted(header, "application", success=True)
    assert ack_wanted(header, "application", success=False)
    ack = build_ack(header, "CA", control_id="ACK-2", now=NOW)
    assert fields(ack, "MSA")[1:3] == ["CA", "C1"]
    su = parse_header(_message(msh_tail="|||NE|SU"))
    assert not ack_wanted(su, "accept", success=True)
    assert ack_wanted(su, "application", success=True)
    original = parse_header(_message())
    assert not ack_wanted(original, "accept", success=True)
    assert ack_wanted(original, "application", success=False)


def test_ae_with_err_v25_fields():
    text = _message(obr="OBR|1|P1|F1|")
    with pytest.raises(HL7Error) as info:
        message_to_order(text)
    ack = build_ack(parse_header(text), "AE", error=info.value, control_id="ACK-3", now=NOW)
    msa = fields(ack, "MSA")
    assert msa[1:3] == ["AE", "C1"]
    err = fields(ack, "ERR")
    assert err[1] == ""  # ERR-1 is only for receivers before v2.5
    assert err[2] == "OBR^1^4^1^1"
    assert err[3] == "101^Required field missing^HL70357"
    assert err[4] == "E"
    assert "OBR-4" in err[8]
    theirs = hl7.parse(ack)
    assert str(theirs.segment("ERR")[3][0][0]) == "101"


def test_ar_for_v231_also_fills_err1_and_echoes_version():
    text = _message(version="2.3.1", msg_type="ADT^A01")
    with pytest.raises(HL7Error) as info:
        message_to_order(text)
    ack = build_ack(info.value.header, "AR", error=info.value, control_id="X", now=NOW)
    assert fields(ack, "MSH")[9:13] == ["ACK^A01^ACK", "X", "P", "2.3.1"]
    err = fields(ack, "ERR")
    assert err[1] == "MSH^1^9^200&Unsupported message type&HL70357"
    assert err[3] == "200^Unsupported message type^HL70357"


def test_composite_sender_is_copied_into_ack_and_suggestion():
    text = _message().replace("|RIS|HOSP|", "|RIS^1.2.3^ISO|HOSP&x|", 1)
    header = parse_header(text)
    assert header.sending_application == "RIS^1.2.3^ISO"
    assert header.sending_facility == "HOSP"  # first subcomponent only
    ack = build_ack(header, "AA", control_id="X", now=NOW)
    assert fields(ack, "MSH")[5] == "RIS^1.2.3^ISO"
    out = suggestion_to_message(ORDER, _suggestion(), CATALOG, control_id="Y",
                                receiving_application=header.sending_application,
                                sending_facility="A|B")
    assert fields(out, "MSH")[4:6] == ["A\\F\\B", "RIS^1.2.3^ISO"]


def test_charset_helpers():
    raw = _bytes_with_charset("8859/1", b"x")
    assert declared_charset(raw) == "8859/1"
    assert charset_codec("8859/1") == "iso8859-1"
    assert charset_codec("UNICODE UTF-8") == "utf-8"
    assert charset_codec("nonsense") is None


def test_ack_without_header():
    with pytest.raises(HL7Error) as info:
        parse_header("garbage")
    ack = build_ack(None, "AR", error=info.value, control_id="X", now=NOW)
    assert fields(ack, "MSH")[9:13] == ["ACK", "X", "P", "2.5.1"]
    assert fields(ack, "MSA")[1:3] == ["AR", ""]
    assert fields(ack, "ERR")[3].startswith("100^")


def test_ack_escapes_text_and_rejects_unknown_codes():
    header = MessageHeader(control_id="a|b", version="2.5", trigger_event="O01")
    ack = build_ack(header, "AE", control_id="X", text="bad | text\nhere", now=NOW)
    assert fields(ack, "MSA")[1:4] == ["AE", "a\\F\\b", "bad \\F\\ text here"]
    with pytest.raises(ValueError):
        build_ack(header, "ZZ", control_id="X")  # type: ignore[arg-type]


# --- suggestions back -------------------------------------------------------------------------

CATALOG = default_catalog()


def _suggestion(*, abstained: bool = False) -> Suggestion:
    names = CATALOG.names
    probs = [0.82, 0.1, 0.05] + [0.03 / (len(names) - 3)] * (len(names) - 3)
    scores = tuple(ProtocolScore(protocol=n, probability=p) for n, p in zip(names, probs,
                                                                             strict=True))
    return Suggestion(scores=scores, protocol=names[0], confidence=0.82, abstained=abstained,
                      abstain_reason="low confidence" if abstained else "",
                      model_version="m1", catalog_version=CATALOG.version, prompt_version="p1",
                      created_at=NOW)


ORDER = Order(placer_order_number="P|1", filler_order_number="F^1", accession_number="ACC1",
              patient_id="12345", ordered_exam_code="CT123", ordered_exam_text="CT Head",
              ordered_exam_system="http://loinc.org",
              extra={"study_instance_uid": "1.2.3", "requested_procedure_id": "RP1"})


def test_suggestion_as_omi_round_trips():
    suggestion = _suggestion()
    text = suggestion_to_message(ORDER, suggestion, CATALOG, control_id="OUT1",
                                 receiving_application="RIS")
    assert protocol_from_message(text) == suggestion.protocol
    header = parse_header(text)
    assert (header.message_type, header.trigger_event, header.version) == ("OMI", "O23", "2.5.1")
    assert header.sending_application == "RADPROTO" and header.control_id == "OUT1"
    message = parse(text)
    v = message.value
    orc, obr, ipc = message.first("ORC"), message.first("OBR"), message.first("IPC")
    assert v(orc, 1) == "SC"
    assert (v(orc, 2), v(orc, 3)) == ("P|1", "F^1")  # escaped on the wire, same value back
    assert (v(obr, 4, 1), v(obr, 4, 3)) == ("CT123", "LN")
    assert (v(ipc, 1), v(ipc, 2), v(ipc, 3)) == ("ACC1", "RP1", "1.2.3")
    assert v(ipc, 5) == "CT"
    local = CATALOG.get(suggestion.protocol).codes["local"]
    assert protocol_coding_from_message(text) == (local, suggestion.protocol, "99RADPROTO")
    obx = [s for _, s in message.all("OBX")]
    assert (v(obx[0], 2), v(obx[0], 5)) == ("NM", "0.8200")
    assert v(obx[1], 5) == "N"
    nte = v(message.first("NTE"), 3)
    names = CATALOG.names
    assert nte == (f"Suggested protocols: {names[0]} (0.82); {names[1]} (0.10); "
                   f"{names[2]} (0.05)")
    assert hl7.parse(text).extract_field("IPC", 1, 6, 1, 2) == suggestion.protocol


def test_suggestion_as_orm_v231_round_trips():
    suggestion = _suggestion()
    text = suggestion_to_message(ORDER, suggestion, CATALOG, style="orm", control_id="OUT2")
    header = parse_header(text)
    assert (header.message_type, header.version) == ("ORM", "2.3.1")
    assert protocol_from_message(text) == suggestion.protocol
    message = parse(text)
    obr = message.first("OBR")
    assert message.value(obr, 4, 4) == CATALOG.get(suggestion.protocol).codes["local"]
    assert message.value(obr, 18) == "ACC1"
    assert message.first("IPC") is None


def test_abstained_suggestion_leaves_protocol_field_empty():
    suggestion = _suggestion(abstained=True)
    for style in ("omi", "orm"):
        text = suggestion_to_message(ORDER, suggestion, CATALOG, style=style, control_id="X")
        assert protocol_from_message(text) is None
        message = parse(text)
        assert message.value(message.all("OBX")[1][1], 5) == "Y"
        assert "abstained: low confidence" in message.value(message.first("NTE"), 3)


def test_suggestion_for_a_catalog_without_codes():
    from radproto.model.catalog import load_catalog

    reference = Path(__file__).parents[1] / ".." / "shared" / "reference" / "protocol_catalog.csv"
    catalog = load_catalog(reference, mode="replace")
    names = catalog.names
    suggestion = _suggestion().model_copy(update={
        "protocol": names[2],
        "scores": tuple(ProtocolScore(protocol=n, probability=1 / len(names)) for n in names)})
    text = suggestion_to_message(ORDER, suggestion, catalog, control_id="X", version="2.8")
    assert protocol_from_message(text) == names[2]


# --- robustness -------------------------------------------------------------------------------

_SEEDS = [fixture_text(n, unescape_markdown=True) for n in ALL_FIXTURES] + [_message()]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.one_of(
    st.text(max_size=200),
    st.text(max_size=200).map(lambda t: "MSH|^~\\&|" + t),
    st.tuples(st.sampled_from(_SEEDS), st.integers(0, 2000), st.text(max_size=8)).map(
        lambda x: x[0][: x[1] % (len(x[0]) + 1)] + x[2] + x[0][x[1] % (len(x[0]) + 1):]),
))
def test_arbitrary_text_raises_only_hl7error(text):
    def lenient(value: str) -> Order:
        return message_to_order(value, lenient=True)

    for call in (parse_header, message_to_order, lenient, protocol_from_message):
        with contextlib.suppress(HL7Error):
            call(text)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(["|", "^", "~", "\\", "&", "\r", "\n", "MSH", "ORC", "OBR",
                                 "NW", "PID", "IPC", "DG1", "NTE", "2.5", "ORM^O01", "x", "1",
                                 "\\X4\\", "\\.br\\", "99999999"]), max_size=40).map("".join))
def test_delimiter_soup_raises_only_hl7error(body):
    text = "MSH|^~\\&|A|B|C|D|20240101||ORM^O01|1|P|2.5\r" + body
    try:
        order = message_to_order(text)
    except HL7Error:
        return
    assert isinstance(order, Order)
