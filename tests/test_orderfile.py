"""The order file format: JSONL, CSV and Parquet round trips and located errors."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radproto.model.errors import OrderFileError
from radproto.model.order import Order
from radproto.training.orderfile import TEXT_FIELDS, read_orders, write_orders

ROWS = [
    {"id": "a1", "ordered_exam": "CT chest", "history": "67F r/o PE, tachy, sats 88% RA",
     "diagnosis": "R06.02 Shortness of breath", "notes": "eGFR 22; \"no\" pacemaker, ok",
     "label": "NM Lung Ventilation Perfusion", "style": "terse",
     "modifiers": ["renal_failure", "no_pacemaker"]},
    {"id": "a2", "ordered_exam": "", "history": "History: 45 M\nline two, with comma",
     "diagnosis": "", "notes": "ünïcode — 1 cm", "label": "MRI Brain WO Contrast",
     "style": "template", "modifiers": []},
]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_round_trip_keeps_text_fields_and_extra_columns(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"orders{suffix}"
    assert write_orders(path, ROWS) == 2
    rows = read_orders(path, require_label=True)
    assert len(rows) == 2
    for written, read in zip(ROWS, rows, strict=True):
        for name in TEXT_FIELDS:
            assert read[name] == written[name]
        assert read["id"] == written["id"]
        if suffix == ".csv":  # CSV has no lists: they travel as JSON text
            assert json.loads(read["modifiers"]) == written["modifiers"]
        else:
            assert list(read["modifiers"]) == written["modifiers"]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_the_three_formats_read_the_same_rows(tmp_path: Path, suffix: str) -> None:
    write_orders(tmp_path / "ref.jsonl", ROWS)
    write_orders(tmp_path / f"x{suffix}", read_orders(tmp_path / "ref.jsonl"))
    again = read_orders(tmp_path / f"x{suffix}")
    assert [{k: r[k] for k in TEXT_FIELDS} for r in again] == [
        {k: r[k] for k in TEXT_FIELDS} for r in ROWS
    ]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)),
                              max_size=40), min_size=4, max_size=4))
def test_arbitrary_text_survives_every_format(tmp_path: Path, texts: list[str]) -> None:
    row = dict(zip(("ordered_exam", "history", "diagnosis", "notes"), texts, strict=True))
    row["label"] = "CT Head WO Contrast"
    for suffix in (".jsonl", ".csv", ".parquet"):
        path = tmp_path / f"h{suffix}"
        write_orders(path, [row])
        (read,) = read_orders(path)
        assert {k: read[k] for k in row} == row, suffix


def test_missing_fields_read_as_empty_and_other_fields_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    path.write_text('{"history": "headache", "mrn_hash": 12, "diagnosis": null}\n\n', "utf-8")
    (row,) = read_orders(path)
    assert row == {"history": "headache", "mrn_hash": 12, "diagnosis": "", "ordered_exam": "",
                   "notes": "", "label": ""}
    fields = Order.from_record(row).prompt_fields()
    assert fields["history"] == "headache" and fields["ordered_exam"] == ""


def test_csv_with_only_some_columns(tmp_path: Path) -> None:
    path = tmp_path / "o.csv"
    path.write_text("\ufeffhistory,label\nback pain,MRI Lumbar Spine WO Contrast\n", "utf-8")
    (row,) = read_orders(path, require_label=True)
    assert row["history"] == "back pain" and row["notes"] == ""


def test_bad_json_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"history": "a"}\n\n{"history": "b",}\n', "utf-8")
    with pytest.raises(OrderFileError) as info:
        read_orders(path)
    assert info.value.line == 3
    assert info.value.path == str(path)
    assert str(path) in str(info.value) and "line 3" in str(info.value)


def test_a_row_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"history": "a"}\n["history", "b"]\n', "utf-8")
    with pytest.raises(OrderFileError, match="JSON object") as info:
        read_orders(path)
    assert info.value.line == 2


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"history": "a"}\n{"history": "\xff"}\n')
    with pytest.raises(OrderFileError, match="UTF-8") as info:
        read_orders(path)
    assert info.value.line == 2


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_missing_label_is_an_error_only_when_required(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"o{suffix}"
    write_orders(path, [{"history": "a", "label": "CT Head WO Contrast"},
                        {"history": "b", "label": ""}])
    assert [r["label"] for r in read_orders(path)] == ["CT Head WO Contrast", ""]
    with pytest.raises(OrderFileError) as info:
        read_orders(path, require_label=True)
    assert info.value.field == "label"
    # the physical line (CSV has a header line first); for Parquet the 1-based row
    assert info.value.line == {".jsonl": 2, ".csv": 3, ".parquet": 2}[suffix]


def test_absent_label_column_when_required(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    write_orders(path, [{"history": "a"}])
    assert read_orders(path)[0]["label"] == ""
    with pytest.raises(OrderFileError, match="label"):
        read_orders(path, require_label=True)


@pytest.mark.parametrize("value", [123, ["a"], {"x": 1}, True])
def test_wrong_type_names_the_field(tmp_path: Path, value: object) -> None:
    path = tmp_path / "o.jsonl"
    path.write_text(json.dumps({"history": "ok"}) + "\n" + json.dumps({"notes": value}) + "\n",
                    "utf-8")
    with pytest.raises(OrderFileError, match="must be text") as info:
        read_orders(path)
    assert (info.value.line, info.value.field) == (2, "notes")


def test_parquet_column_of_the_wrong_type(tmp_path: Path) -> None:
    path = tmp_path / "o.parquet"
    pq.write_table(pa.table({"history": ["a", "b"], "label": [1, 2]}), path)
    with pytest.raises(OrderFileError, match="text") as info:
        read_orders(path)
    assert info.value.field == "label"


def test_csv_row_with_too_many_cells(tmp_path: Path) -> None:
    path = tmp_path / "o.csv"
    path.write_text("history,label\na,CT Head WO Contrast\nb,CT Head WO Contrast,extra\n",
                    "utf-8")
    with pytest.raises(OrderFileError) as info:
        read_orders(path)
    assert info.value.line == 3


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(OrderFileError, match="no such"):
        read_orders(tmp_path / "missing.jsonl")
    (tmp_path / "o.txt").write_text("x", "utf-8")
    with pytest.raises(OrderFileError, match="unsupported"):
        read_orders(tmp_path / "o.txt")
    (tmp_path / "o.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(OrderFileError, match="Parquet"):
        read_orders(tmp_path / "o.parquet")
    (tmp_path / "empty.csv").write_text("", "utf-8")
    with pytest.raises(OrderFileError, match="header"):
        read_orders(tmp_path / "empty.csv")


def test_writer_defaults_to_jsonl_and_creates_directories(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "orders.out"
    assert write_orders(path, ROWS[:1]) == 1
    assert json.loads(path.read_text("utf-8"))["id"] == "a1"


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_empty_file_round_trip(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"e{suffix}"
    assert write_orders(path, []) == 0
    assert read_orders(path) == []
