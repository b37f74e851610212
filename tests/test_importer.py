"""`radproto import`: CSV, JSONL, HL7 v2 and FHIR histories to an order file."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from radproto.cli import main
from radproto.fhir_mappings.hl7v2 import suggestion_to_message
from radproto.model.catalog import default_catalog
from radproto.model.errors import OrderFileError
from radproto.model.order import Order
from radproto.model.suggestion import ProtocolScore, Suggestion
from radproto.training.importer import import_history, split_hl7_messages, unknown_path_for
from radproto.training.orderfile import read_orders

FIXTURES = Path(__file__).parents[1] / ".." / "shared" / "fixtures" / "third_party" / "hl7"
CATALOG = default_catalog()
HEAD_CT = CATALOG.get("CT Head WO Contrast")
assert HEAD_CT is not None
HEAD_CT_CODE = HEAD_CT.codes["local"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line]


# --- the third-party HL7 fixtures whose protocol field is filled --------------------------------


@pytest.mark.parametrize(("name", "protocol", "code"), [
    ("03_dcm4che_mesa_orm_o01_v231.hl7", "SP Action Item X1_A1", "X1_A1"),  # OBR-4.4-6
    ("04_dcm4che_omi_o23_v251_imaging_order.hl7", "Microscopic Observation", "10637-7"),  # IPC-6
    ("05_hl7_gender_harmony_omi_o23_v25.hl7", "PET Myocardial Perfusion, Rest and Stress",
     "122793"),  # IPC-6
])
def test_fixture_with_protocol_is_imported_and_reported_unknown(tmp_path, name, protocol, code):
    out = tmp_path / "history.jsonl"
    report = import_history(FIXTURES / name, "hl7", out, catalog=CATALOG)
    assert report.records == 1
    assert report.written == 0  # third-party codes are not in radproto's catalog
    assert report.unknown_protocols == {protocol: 1}
    assert f"1  {protocol}" in report.summary()
    assert out.exists() and read_jsonl(out) == []
    sidecar = unknown_path_for(out)
    assert report.unknown_path == str(sidecar)
    (row,) = read_jsonl(sidecar)
    assert row["label"] == protocol and row["protocol_code"] == code
    assert row["ordered_exam"]
    assert "patient_id" not in row  # no patient identifiers in training data


@pytest.mark.parametrize("name", ["01_hapi_orm_o01_v22_NW_ct_biopsy.hl7",
                                  "02_hapi_orm_o01_v22_XR_knee.hl7"])
def test_v22_fixtures_are_read_but_have_no_protocol(tmp_path, name):
    report = import_history(FIXTURES / name, "hl7", tmp_path / "o.jsonl", catalog=CATALOG)
    assert (report.records, report.without_protocol, report.written) == (1, 1, 0)
    assert not report.errors  # v2.2 is read on import, unlike on the wire


def test_fixture_06_markdown_escaped_is_reported_as_an_error(tmp_path):
    name = "06_iris_orm_o01_v24_dg1_fundus_photo.hl7"
    report = import_history(FIXTURES / name, "hl7", tmp_path / "o.jsonl", catalog=CATALOG)
    assert report.errors == {"HL7 error 102 (Data type error)": 1}
    assert "message 1: MSH-2" in report.summary()


def test_all_fixtures_in_one_file(tmp_path):
    paths = sorted(FIXTURES.glob("*.hl7"))
    joined = tmp_path / "all.hl7"
    # Mixed framing: MLLP, blank lines, and plain consecutive messages.
    parts = [p.read_bytes().rstrip(b"\r\n") for p in paths]
    joined.write_bytes(b"\x0b" + parts[0] + b"\x1c\r" + b"\n\n".join(parts[1:3]) + b"\r\n"
                       + b"\r".join(parts[3:]))
    report = import_history(joined, "hl7", tmp_path / "o.jsonl", catalog=CATALOG)
    assert report.records == 6
    assert report.unknown == 3 and len(report.unknown_protocols) == 3
    assert report.without_protocol == 2
    assert sum(report.errors.values()) == 1


# --- HL7: known protocols, files of many messages ------------------------------------------------


def _orm_v22(placer: str, protocol_components: str, control: str = "NW") -> bytes:
    text = (FIXTURES / "01_hapi_orm_o01_v22_NW_ct_biopsy.hl7").read_text("latin-1")
    text = text.replace("38067^CT BIOPSY (91-MIN OR MORE)^L",
                        "38067^CT BIOPSY (91-MIN OR MORE)^L^" + protocol_components)
    text = text.replace("003711.0001.001", placer).replace("ORC|NW|", f"ORC|{control}|")
    return text.encode("latin-1")


def test_v22_message_with_filled_protocol_imports_with_catalog_name(tmp_path):
    src = tmp_path / "old.hl7"
    src.write_bytes(_orm_v22("A1", f"{HEAD_CT_CODE}^^99RADPROTO"))
    out = tmp_path / "o.jsonl"
    report = import_history(src, "hl7", out, catalog=CATALOG)
    assert (report.written, report.unknown) == (1, 0)
    (row,) = read_orders(out)
    assert row["label"] == "CT Head WO Contrast"  # resolved from the local code
    assert row["label_as_given"] == HEAD_CT_CODE
    assert row["placer_order_number"] == "A1"
    assert row["ordered_exam"] == "CT BIOPSY (91-MIN OR MORE)"
    assert row["history"] == "38 y/o female; R/O TUMOR"
    assert "N00829" not in out.read_text()  # PID-3 is not copied
    assert not unknown_path_for(out).exists()


def test_later_messages_replace_and_cancel_earlier_ones(tmp_path):
    src = tmp_path / "h.hl7"
    src.write_bytes(b"\n".join([
        _orm_v22("A1", "X^Old Protocol^99RADPROTO"),
        _orm_v22("A1", "^CT Head Non-Contrast^99RADPROTO", control="XO"),  # alias, by text
        _orm_v22("A2", f"{HEAD_CT_CODE}^^99RADPROTO"),
        _orm_v22("A2", "", control="CA"),
    ]))
    out = tmp_path / "o.jsonl"
    report = import_history(src, "hl7", out, catalog=CATALOG)
    assert report.records == 4
    assert report.superseded == 1 and report.cancelled == 2
    assert report.unknown == 0  # the unknown "Old Protocol" was superseded
    (row,) = read_orders(out)
    assert (row["placer_order_number"], row["label"]) == ("A1", "CT Head WO Contrast")


def test_radproto_own_suggestions_import(tmp_path):
    now = datetime(2024, 1, 1, tzinfo=UTC)
    messages = []
    for i, name in enumerate(CATALOG.names[:3]):
        suggestion = Suggestion(
            scores=(ProtocolScore(protocol=name, probability=0.9),), protocol=name,
            confidence=0.9, model_version="m", catalog_version=CATALOG.version,
            prompt_version="p", created_at=now)
        order = Order(placer_order_number=f"P{i}", ordered_exam_text="CT exam",
                      clinical_history="headache")
        style = "omi" if i % 2 == 0 else "orm"
        messages.append(suggestion_to_message(order, suggestion, CATALOG, style=style,
                                              control_id=f"C{i}"))
    src = tmp_path / "own.hl7"
    src.write_text("\r\n".join(messages), encoding="utf-8")  # consecutive, CRLF
    out = tmp_path / "o.jsonl"
    report = import_history(src, "hl7", out, catalog=CATALOG)
    assert (report.records, report.written, report.unknown) == (3, 3, 0)
    assert [r["label"] for r in read_orders(out)] == list(CATALOG.names[:3])


def test_split_hl7_messages():
    data = (b"junk line\n\x0bMSH|^~\\&|A\rPID|1\x1c\r\r\nMSH|^~\\&|B\nPID|2\n\nOBR|1\r\n"
            b"MSH|^~\\&|C\rMSHX|not a header\r")
    assert split_hl7_messages(data) == [
        b"junk line", b"MSH|^~\\&|A\rPID|1", b"MSH|^~\\&|B\rPID|2\rOBR|1",
        b"MSH|^~\\&|C\rMSHX|not a header",
    ]
    assert split_hl7_messages(b"") == []


def test_junk_and_unsupported_messages_are_counted(tmp_path):
    src = tmp_path / "mixed.hl7"
    src.write_bytes(b"not hl7 at all\nMSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P|2.5\rPID|1\n")
    report = import_history(src, "hl7", tmp_path / "o.jsonl", catalog=CATALOG)
    assert report.records == 2 and report.written == 0
    assert report.errors == {"HL7 error 100 (Segment sequence error)": 1,
                             "HL7 error 200 (Unsupported message type)": 1}


# --- CSV / JSONL --------------------------------------------------------------------------------


def test_csv_import_resolves_names_aliases_and_codes(tmp_path):
    src = tmp_path / "site.csv"
    with src.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ordered_exam", "history", "diagnosis", "notes", "label", "mrn_hash"])
        writer.writerow(["CT head", "fall", "", "", "CT Head WO Contrast", "h1"])
        writer.writerow(["CT head", "fall", "", "", "noncontrast head ct", "h2"])  # alias
        writer.writerow(["CT head", "fall", "", "", HEAD_CT_CODE, "h3"])  # local code
        writer.writerow(["CT head", "fall", "", "", "30799-1", "h4"])  # LOINC
        writer.writerow(["MR knee", "pain", "", "", "Knee MRI Site Special", "h5"])
        writer.writerow(["MR knee", "pain", "", "", "Knee MRI Site Special", "h6"])
        writer.writerow(["XR chest", "cough", "", "", "", "h7"])
    out = tmp_path / "out.jsonl"
    report = import_history(src, "csv", out, catalog=CATALOG)
    assert (report.records, report.written, report.without_protocol) == (7, 4, 1)
    assert report.unknown_protocols == {"Knee MRI Site Special": 2}
    rows = read_orders(out)
    assert {r["label"] for r in rows} == {"CT Head WO Contrast"}
    assert [r["mrn_hash"] for r in rows] == ["h1", "h2", "h3", "h4"]  # extra columns kept
    assert rows[1]["label_as_given"] == "noncontrast head ct"
    unknown = read_orders(unknown_path_for(out))
    assert [r["mrn_hash"] for r in unknown] == ["h5", "h6"]
    summary = report.summary()
    assert "Imported 4 of 7 rows" in summary and "2  Knee MRI Site Special" in summary


def test_jsonl_import_accepts_a_protocol_column(tmp_path):
    src = tmp_path / "site.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in [
        {"ordered_exam": "CT head", "history": "trauma", "protocol": "CT Head WO Contrast",
         "placer_order_number": "P9"},
        {"ordered_exam": "CT head", "history": "trauma", "label": "Nope"},
    ]) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    report = import_history(src, "jsonl", out, catalog=CATALOG)
    assert report.written == 1 and report.unknown_protocols == {"Nope": 1}
    (row,) = read_orders(out)
    assert (row["label"], row["placer_order_number"]) == ("CT Head WO Contrast", "P9")


def test_stale_sidecar_is_removed(tmp_path):
    src = tmp_path / "site.jsonl"
    src.write_text(json.dumps({"ordered_exam": "CT", "label": "Nope"}) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    import_history(src, "jsonl", out, catalog=CATALOG)
    assert unknown_path_for(out).exists()
    src.write_text(json.dumps({"ordered_exam": "CT", "label": "CT Head WO Contrast"}) + "\n",
                   encoding="utf-8")
    import_history(src, "jsonl", out, catalog=CATALOG)
    assert not unknown_path_for(out).exists()


def test_input_errors(tmp_path):
    with pytest.raises(OrderFileError, match="no such input file"):
        import_history(tmp_path / "missing.csv", "csv", tmp_path / "o.jsonl", catalog=CATALOG)
    wrong = tmp_path / "x.jsonl"
    wrong.write_text("{}\n", encoding="utf-8")
    with pytest.raises(OrderFileError, match=r"expects a file ending in \.csv"):
        import_history(wrong, "csv", tmp_path / "o.jsonl", catalog=CATALOG)
    bad = tmp_path / "b.json"
    bad.write_text("{\n  nope", encoding="utf-8")
    with pytest.raises(OrderFileError) as info:
        import_history(bad, "fhir", tmp_path / "o.jsonl", catalog=CATALOG)
    assert info.value.line == 2


# --- FHIR ---------------------------------------------------------------------------------------


def _bundle() -> dict:
    def sr(sr_id: str, text: str, status: str = "active") -> dict:
        return {"fullUrl": f"urn:uuid:{sr_id}", "resource": {
            "resourceType": "ServiceRequest", "id": sr_id, "status": status,
            "intent": "order", "subject": {"reference": "Patient/p1"},
            "code": {"text": text}, "reasonCode": [{"text": "thunderclap headache"}],
            "identifier": [{"type": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PLAC"}]},
                "value": f"PL-{sr_id}"}]}}

    def task(task_id: str, focus: str, protocol: str, status: str = "completed") -> dict:
        return {"resource": {
            "resourceType": "Task", "id": task_id, "status": status, "intent": "order",
            "focus": {"reference": f"ServiceRequest/{focus}"},
            "output": [{"type": {"text": "protocol"},
                        "valueCodeableConcept": {"text": protocol}}]}}

    return {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p1", "gender": "female",
                      "birthDate": "1970-01-01"}},
        sr("s1", "CT head"), task("t1", "s1", "CT Head WO Contrast"),
        sr("s2", "MR knee"), task("t2", "s2", "Knee Site Protocol"),
        sr("s3", "XR chest"),
        sr("s4", "CT head", status="revoked"), task("t4", "s4", "CT Head WO Contrast"),
    ]}


def test_fhir_bundle_import(tmp_path):
    src = tmp_path / "bundle.json"
    src.write_text(json.dumps(_bundle()), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    report = import_history(src, "fhir", out, catalog=CATALOG)
    assert report.records == 4
    assert (report.written, report.without_protocol, report.cancelled) == (1, 1, 1)
    assert report.unknown_protocols == {"Knee Site Protocol": 1}
    (row,) = read_orders(out)
    assert row["label"] == "CT Head WO Contrast"
    assert row["ordered_exam"] == "CT head"
    assert "thunderclap headache" in row["history"]
    assert row["placer_order_number"] == "PL-s1"
    assert row["source"] == "fhir"


# --- the CLI ------------------------------------------------------------------------------------


def test_cli_import(tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    code = main(["import", "--input", str(FIXTURES / "03_dcm4che_mesa_orm_o01_v231.hl7"),
                 "--format", "hl7", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 1  # nothing written: its protocol is not in the catalog
    assert "SP Action Item X1_A1" in printed and str(unknown_path_for(out)) in printed
    src = tmp_path / "old.hl7"
    src.write_bytes(_orm_v22("A1", f"{HEAD_CT_CODE}^^99RADPROTO"))
    assert main(["import", "--input", str(src), "--format", "hl7", "--out", str(out)]) == 0
    assert main(["import", "--input", str(tmp_path / "none.hl7"), "--format", "hl7",
                 "--out", str(out)]) == 2
